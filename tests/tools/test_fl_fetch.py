"""tools/bench/fl_fetch.py's CPU reading (`tree_cpu`): the serving daemon's CPU per fetch of
the FL benchmark's bound comes from it, so it must count a process and its children, to well
under psutil's 10 ms clock ticks."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from fognode.tools.bench.fl_fetch import tree_cpu


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_tree_cpu_counts_this_process_to_the_millisecond() -> None:
    me = [os.getpid()]
    c0, p0 = tree_cpu(me), time.process_time()
    _spin(0.003)
    got, want = tree_cpu(me) - c0, time.process_time() - p0
    assert want >= 0.003
    assert abs(got - want) < 0.002, (got, want)


def test_tree_cpu_counts_children_and_a_gone_pid_as_zero() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.3: pass\ninput()"],
                             stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while tree_cpu([child.pid]) < 0.3:
            assert time.monotonic() < deadline, "the child did not spin 0.3 s of CPU within 30 s"
            time.sleep(0.05)
        assert tree_cpu([os.getpid()]) >= tree_cpu([child.pid]) >= 0.3
    finally:
        child.communicate(b"\n", timeout=30)
    assert tree_cpu([child.pid]) == 0.0     # reaped: nothing left to read
