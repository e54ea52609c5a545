"""Reading a process's CPU time (protocols/harvest/procstat.py) against what the process itself
measured, to better than the kernel's 10 ms clock tick, running and as an unreaped zombie."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fognode.protocols.harvest.procstat import process_cpu_s, process_state, sample_tree

# Burns CPU until its own CPU time is past 15 ms and half-way between two 10 ms ticks (a
# tick-rounded reading is then 4-6 ms off), prints that time, then holds or exits at once.
BURN = ("import os, sys, time\n"
        "while not (time.process_time() > 0.015 and 0.004 < time.process_time() % 0.01 < 0.006):\n"
        "    sum(range(200))\n"
        "print(repr(time.process_time()), flush=True)\n"
        "os._exit(0) if sys.argv[1] == 'exit' else time.sleep(30)\n")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the per-process CPU clock is Linux's")


def _burn(then: str) -> tuple[subprocess.Popen[str], float]:
    proc = subprocess.Popen([sys.executable, "-c", BURN, then], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, float(proc.stdout.readline())


def _end(proc: subprocess.Popen[str], *, kill: bool) -> None:
    if kill:
        proc.kill()
    proc.wait(timeout=10)
    assert proc.stdout is not None
    proc.stdout.close()


def test_a_running_process_is_read_to_the_millisecond() -> None:
    proc, own = _burn("hold")
    try:
        assert abs(process_cpu_s(proc.pid) - own) < 0.002, (process_cpu_s(proc.pid), own)
        sample, pids = sample_tree(proc.pid)
        assert pids == [proc.pid]
        assert abs(sample.cpu_s - own) < 0.002, (sample.cpu_s, own)
    finally:
        _end(proc, kill=True)


def test_an_exited_unreaped_process_keeps_its_precise_time_and_a_reaped_one_reads_zero() -> None:
    proc, own = _burn("exit")
    try:
        end = time.monotonic() + 10
        while process_state(proc.pid) != "Z":
            assert time.monotonic() < end, "the burner did not exit"
            time.sleep(0.01)
        assert abs(process_cpu_s(proc.pid) - own) < 0.002, (process_cpu_s(proc.pid), own)
        assert abs(sample_tree(proc.pid)[0].cpu_s - own) < 0.002
    finally:
        _end(proc, kill=False)
    assert process_cpu_s(proc.pid) == 0.0
