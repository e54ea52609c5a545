"""cgroup v2 as this host offers it: what `probe_cgroup` finds, and the containment mode (a job
cgroup without the memory/cpu controllers, on a hybrid host) with a real job whose grandchild
escapes its process group: killed with the job, its CPU counted, the cgroup removed.

What cannot run here is said by the skips: the memory.max / cpu.max path needs the memory and
cpu controllers in the unified hierarchy (test_executor.py's OOM test)."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from fognode.protocols.harvest.cgroup import CgroupSupport, JobCgroup, probe_cgroup
from fognode.protocols.harvest.executor import Executor
from fognode.protocols.harvest.jobs import JobEnd, JobSpec
from fognode.protocols.harvest.limits import Mechanism

# The job: a child that calls setsid (leaves the job's process group and session) and forks a
# grandchild that burns 0.3 s of CPU, says so, and then sleeps for ever; the job's root waits for
# that word, prints the grandchild's pid and exits. Nothing reaps the grandchild.
ESCAPE = r"""
import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while time.process_time() < 0.3:
            pass
        os.write(w, str(os.getpid()).encode().ljust(16))
        while True:
            time.sleep(1)
    os._exit(0)
os.wait()
print(os.read(r, 16).decode().strip(), flush=True)
"""


@pytest.fixture
def containment() -> CgroupSupport:
    support = probe_cgroup()
    if not support.available or support.limits:
        pytest.skip(f"no containment-only cgroup v2 here ({support.reason})")
    return support


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_probe_says_what_this_host_offers() -> None:
    support = probe_cgroup()
    if support.available and support.limits:
        assert (support.parent / "cgroup.subtree_control").read_text()   # type: ignore[operator]
        return
    if not support.available:
        assert support.reason and support.parent is None
        return
    # a hybrid host: writable unified hierarchy, memory/cpu bound to cgroup v1
    assert support.parent is not None and "controller" in support.reason
    assert "containment" in support.reason and "RLIMIT_DATA" in support.reason
    assert Executor(cgroup=support).mechanism is Mechanism.RLIMIT


async def test_containment_kills_an_escaped_grandchild_and_counts_its_cpu(
        containment: CgroupSupport) -> None:
    ex = Executor(nice=0, cgroup=containment, poll_interval=30.0)  # no poll sees the grandchild
    res = await ex.run(JobSpec(argv=(sys.executable, "-c", ESCAPE), name="escape"))
    assert res.end is JobEnd.EXITED and res.returncode == 0, res
    gc = int(res.stdout.decode().strip())
    assert wait_until_dead(gc), "the escaped grandchild died with its job (cgroup.kill)"
    assert res.usage.cpu_s >= 0.3, res.usage        # cpu.stat counts the grandchild
    assert not (containment.parent / f"fognode-{os.getpid()}-job1").exists()   # type: ignore[operator]


async def test_without_a_cgroup_the_escaped_grandchild_outlives_its_job() -> None:
    """The reason for the containment mode: signals to the job's group and the pids a poll saw
    miss a descendant that left both; its CPU is not counted either."""
    ex = Executor(nice=0, poll_interval=30.0)
    res = await ex.run(JobSpec(argv=(sys.executable, "-c", ESCAPE), name="escape"))
    gc = int(res.stdout.decode().strip())
    try:
        assert alive(gc) and res.usage.cpu_s < 0.3, res.usage
    finally:
        os.kill(gc, signal.SIGKILL)


def wait_until_dead(pid: int, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


def test_stale_job_cgroups_of_dead_daemons_are_removed(containment: CgroupSupport) -> None:
    parent = containment.parent
    assert parent is not None
    dead = 2**22 + 12345          # above pid_max's default: no such process
    while Path(f"/proc/{dead}").exists():
        dead += 1
    stale = JobCgroup(parent, 7)
    stale.path = parent / f"fognode-{dead}-job7"
    stale.path.mkdir()
    mine = JobCgroup(parent, 99, limits=False)
    mine.create(1 << 30, 1.0)
    try:
        assert probe_cgroup().available
        assert not stale.path.exists() and mine.path.exists()
        assert mine.cpu_seconds() == 0.0
    finally:
        mine.remove()
        stale.remove()
