"""Every benchmark the README lists runs with one command: `python -m fognode.tools.bench.<name>
--help` prints its usage and exits 0 (real processes), and the README's list names each one."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "tools" / "bench"
# a module started only by another benchmark, never on its own
CHILDREN = {"gossip_node"}
BENCHMARKS = sorted(p.stem for p in BENCH.glob("*.py")
                    if '__name__ == "__main__"' in p.read_text() and p.stem not in CHILDREN)


def test_the_readme_lists_every_benchmark() -> None:
    dev = (ROOT / "README.md").read_text().split("## Development", 1)[1].split("### Fuzzing", 1)[0]
    listed = set(re.findall(r"`([a-z_]+)`", dev))
    assert set(BENCHMARKS) <= listed, f"not in the README's Development list: {set(BENCHMARKS) - listed}"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_a_benchmark_answers_help(name: str) -> None:
    out = subprocess.run([sys.executable, "-m", f"fognode.tools.bench.{name}", "--help"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage:"), out.stdout[:500]
