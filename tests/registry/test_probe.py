from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from fognode.protocols.registry.probe import cpu_model, gpu, probe


def test_probe_measures_this_machine(tmp_path: Path) -> None:
    c = probe(tmp_path)
    assert c.cores == psutil.cpu_count(logical=True)
    assert c.memory_bytes == psutil.virtual_memory().total
    assert c.disk_free_bytes is not None and c.disk_free_bytes > 0
    assert c.arch and c.os
    if c.battery_present is not True:
        assert c.battery_percent is None and c.charging is None
    if Path("/proc/cpuinfo").exists():
        assert c.cpu_model


def test_probe_does_not_import_torch() -> None:
    code = ("import sys; from fognode.protocols.registry.probe import probe; probe('.'); "
            "import fognode.protocols.registry.protocol; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_cpu_model_parsing(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\n"
                   "model name\t: Intel(R) Xeon(R)   Gold 6130\n")
    assert cpu_model(x86) == "Intel(R) Xeon(R) Gold 6130"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 108.00\n\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n")
    assert cpu_model(arm) == "Raspberry Pi 4 Model B Rev 1.4"


def test_gpu_from_driver_files(tmp_path: Path) -> None:
    none_n, none_d = tmp_path / "n0", tmp_path / "d0"
    none_n.mkdir(); none_d.mkdir()
    intel = none_d / "card0" / "device"
    intel.mkdir(parents=True)
    (intel / "vendor").write_text("0x8086\n")
    if "torch" not in sys.modules:
        assert gpu(none_n, none_d) == (None, None)        # integrated graphics: no GPU
    nv = tmp_path / "nv" / "0000:01:00.0"
    nv.mkdir(parents=True)
    (nv / "information").write_text("Model: \t\t NVIDIA GeForce RTX 3090\nIRQ:   130\n")
    if "torch" not in sys.modules:
        assert gpu(tmp_path / "nv", none_d) == ("NVIDIA GeForce RTX 3090", None)
    amd = tmp_path / "drm" / "card1" / "device"
    amd.mkdir(parents=True)
    (amd / "vendor").write_text("0x1002\n")
    (amd / "device").write_text("0x744c\n")
    (amd / "mem_info_vram_total").write_text("25753026560\n")
    if "torch" not in sys.modules:
        assert gpu(none_n, tmp_path / "drm") == ("AMD GPU 0x744c", 25753026560)
