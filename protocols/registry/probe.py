"""Measure this device's capabilities (cores, CPU, memory, disk, GPU, battery, OS, arch).

Every value is measured or None ("unknown"); nothing is guessed. Synchronous and quick (a few
file reads and psutil calls): the role runs it in a worker thread.

GPU detection never imports torch (the daemon must not pay for it at start): when torch is
*already* imported by something else and CUDA is available, its device name and memory are
used; otherwise the NVIDIA driver's /proc/driver/nvidia/gpus/*/information and the DRM class
in /sys/class/drm (AMD cards, with the name the amdgpu driver exposes) are read. Integrated
graphics are not reported as a GPU.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import psutil

from fognode.protocols.registry.record import MAX_TEXT, Capabilities

_AMD = "0x1002"


def _clip(s: str | None) -> str | None:
    if s is None:
        return None
    s = " ".join(s.split())
    return s[:MAX_TEXT] or None


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU model name from /proc/cpuinfo (x86 'model name', ARM 'Model'/'Hardware')."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    found: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        k = k.strip().lower()
        if sep and v.strip() and k in ("model name", "model", "hardware", "cpu model", "processor"):
            found.setdefault(k, v.strip())
    for k in ("model name", "cpu model", "model", "hardware"):
        if k in found and not found[k].isdigit():
            return _clip(found[k])
    return _clip(platform.processor() or None)


def _torch_gpu() -> tuple[str, int | None] | None:
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        return str(props.name), int(props.total_memory)
    except Exception:      # a broken CUDA install must not break the probe
        return None


def _nvidia_proc(root: Path) -> tuple[str, int | None] | None:
    for info in sorted(root.glob("*/information")):
        try:
            for line in info.read_text(errors="replace").splitlines():
                k, _, v = line.partition(":")
                if k.strip() == "Model" and v.strip():
                    return v.strip(), None
        except OSError:
            continue
    return None


def _amd_drm(root: Path) -> tuple[str, int | None] | None:
    for card in sorted(root.glob("card[0-9]*")):
        dev = card / "device"
        try:
            if (dev / "vendor").read_text().strip() != _AMD:
                continue
            name_file = dev / "product_name"
            name = name_file.read_text().strip() if name_file.exists() else ""
            if not name:
                name = "AMD GPU " + (dev / "device").read_text().strip()
            vram: int | None = None
            vram_file = dev / "mem_info_vram_total"
            if vram_file.exists():
                vram = int(vram_file.read_text().strip())
            return name, vram
        except (OSError, ValueError):
            continue
    return None


def gpu(proc_nvidia: Path = Path("/proc/driver/nvidia/gpus"),
        drm: Path = Path("/sys/class/drm")) -> tuple[str | None, int | None]:
    """(GPU name, memory bytes) or (None, None) when no discrete GPU is known."""
    for found in (_torch_gpu(), _nvidia_proc(proc_nvidia), _amd_drm(drm)):
        if found is not None:
            return _clip(found[0]), found[1]
    return None, None


def battery() -> tuple[bool | None, float | None, bool | None]:
    """(present, percent, charging). On Linux psutil reads /sys/class/power_supply, so "no
    battery found" is a real answer; where psutil has no battery support it is unknown."""
    fn = getattr(psutil, "sensors_battery", None)
    if fn is None:
        return None, None, None
    try:
        b = fn()
    except (OSError, RuntimeError, NotImplementedError):
        return None, None, None
    if b is None:
        return (False if sys.platform.startswith("linux") else None), None, None
    percent = float(b.percent) if b.percent is not None else None
    if percent is not None:
        percent = min(100.0, max(0.0, percent))
    return True, percent, (bool(b.power_plugged) if b.power_plugged is not None else None)


def cpu_freq_mhz() -> float | None:
    """The maximum CPU frequency if the kernel reports it, else the current one."""
    try:
        f = psutil.cpu_freq()
    except (OSError, RuntimeError, NotImplementedError):
        return None
    if f is None:
        return None
    v = f.max if f.max and f.max > 0 else f.current
    return float(v) if v and v > 0 else None


def probe(disk_path: Path | str = ".") -> Capabilities:
    """Measure this device; `disk_path` is where free space counts (the data dir)."""
    cores = psutil.cpu_count(logical=True)
    try:
        memory: int | None = int(psutil.virtual_memory().total)
    except (OSError, RuntimeError):
        memory = None
    try:
        disk: int | None = int(psutil.disk_usage(os.fspath(disk_path)).free)
    except OSError:
        disk = None
    gpu_name, gpu_mem = gpu()
    present, percent, charging = battery()
    system = platform.system()
    release = platform.release()
    return Capabilities(
        cores=int(cores) if cores else None,
        cpu_model=cpu_model(),
        cpu_freq_mhz=cpu_freq_mhz(),
        memory_bytes=memory,
        disk_free_bytes=disk,
        gpu=gpu_name,
        gpu_memory_bytes=gpu_mem,
        battery_present=present,
        battery_percent=percent,
        charging=charging,
        os=_clip(f"{system} {release}".strip()) if system else None,
        arch=_clip(platform.machine() or None),
    )
