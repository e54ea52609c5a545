"""A daemon's children die with it (node/reaper.py): a real parent process runs real harvest jobs
(a job whose shell has a child of its own; the same, SIGSTOPped by `Executor.suspend`; with a
cgroup where this host gives one, a grandchild that left the job's session) or lends its FL
task process to the executor, suspended; the parent is then SIGKILLed and no process it
started, directly or not, survives. Also: a reused pid is never killed, and a reaper that
dies while the daemon lives is replaced holding every live entry."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import psutil
import pytest

from fognode.node.reaper import SCRIPT, Reaper, start_time

# The parent: an Executor runs MODE's jobs; once the tree is up (and stopped, if asked), the
# parent prints "ready" and waits for its SIGKILL.
PARENT = r"""
import sys, psutil, trio
from fognode.protocols.harvest.cgroup import probe_cgroup
from fognode.protocols.harvest.executor import Executor
from fognode.protocols.harvest.jobs import JobSpec
from fognode.protocols.fl.training.process import TaskProcess

WANT = {"running": 4, "stopped": 4, "escaped": 3, "fl": 2}
ESCAPE = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\ntime.sleep(600)"

async def main(mode):
    ex = Executor(nice=0, cgroup=probe_cgroup() if mode == "escaped" else None)
    async with trio.open_nursery() as nursery:
        if mode == "fl":
            tp = TaskProcess()
            await tp.warm()
            await nursery.start(ex.watch, tp.pid)
        elif mode == "escaped":
            nursery.start_soon(ex.run, JobSpec(argv=(sys.executable, "-c", ESCAPE), name="escape"))
        else:
            nursery.start_soon(ex.run, JobSpec(argv=("sh", "-c", "sleep 600 & sleep 600"), name="tree"))
        with trio.fail_after(60):   # the reaper and the work's processes
            while len(psutil.Process().children(recursive=True)) < WANT[mode]:
                await trio.sleep(0.05)
        if mode in ("stopped", "fl"):
            ex.suspend()
        print("ready", flush=True)
        await trio.sleep_forever()

trio.run(main, sys.argv[1])
"""


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def survivors(procs: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.NoSuchProcess:
            pass
    return left


def wait_gone(procs: list[psutil.Process], timeout: float = 20.0) -> list[psutil.Process]:
    end = time.monotonic() + timeout
    while (left := survivors(procs)) and time.monotonic() < end:
        time.sleep(0.02)
    return left


def wait_stopped(procs: list[psutil.Process], timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(p.status() == psutil.STATUS_STOPPED for p in procs):
            return True
        time.sleep(0.02)
    return False


def kill_all(procs: list[psutil.Process]) -> None:
    for p in survivors(procs):
        p.kill()


def escaped_ok() -> None:
    from fognode.protocols.harvest.cgroup import probe_cgroup
    support = probe_cgroup()
    if not support.available:
        pytest.skip(f"no cgroup v2 for jobs here ({support.reason})")


@contextmanager
def parent_ready(script: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], list[psutil.Process]]]:
    """A real parent process running `script` once it has printed "ready": it and its
    descendants at that moment. At the end it and every one of them are killed, whatever
    happened."""
    parent = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    tree: list[psutil.Process] = []
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "ready", parent.poll()
        tree.extend(descendants(parent.pid))
        yield parent, tree
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        kill_all(tree)


def survivors_of_sigkill(parent: subprocess.Popen[str], tree: list[psutil.Process]) -> list[psutil.Process]:
    """SIGKILL the parent; the processes of `tree` still alive after a bounded wait."""
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=10)
    return wait_gone(tree)


@pytest.mark.parametrize("mode", ["running", "stopped", "escaped", "fl"])
def test_nothing_the_daemon_started_outlives_its_sigkill(mode: str) -> None:
    if mode == "escaped":
        escaped_ok()      # without a cgroup a descendant that left the session escapes
    with parent_ready(PARENT, mode) as (parent, tree):
        reaper = [p for p in tree if p.cmdline()[-1:] == ["fognode-reaper"]]
        assert len(reaper) == 1 and len(tree) >= 2, [p.cmdline()[-1:] for p in tree]
        if mode in ("stopped", "fl"):
            work = [p for p in tree if p not in reaper]
            assert wait_stopped(work), [(p.pid, p.status()) for p in work]
        left = survivors_of_sigkill(parent, tree)
        assert not left, [(p.pid, p.status(), p.cmdline()) for p in left]


def test_a_reused_pid_is_not_killed() -> None:
    """The reaper's own script, fed by hand: an entry whose start time is not the process's
    (what a pid reused since its registration looks like) is spared; the right one is killed."""
    other = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        for start, killed in ((str(int(start_time(other.pid)) + 1), False),
                              (start_time(other.pid), True)):
            for kind in ("p", "g"):
                sh = subprocess.Popen(["sh", "-c", SCRIPT, "fognode-reaper"], stdin=subprocess.PIPE)
                assert sh.stdin is not None
                sh.stdin.write(f"+ 1 {kind} {other.pid} {start} -\n".encode())
                sh.stdin.close()
                assert sh.wait(timeout=10) == 0
                if killed:
                    assert other.wait(timeout=10) == -signal.SIGKILL
                    break
                assert other.poll() is None
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()


def test_a_dead_reaper_is_replaced_with_every_live_entry() -> None:
    r = Reaper()
    jobs = [subprocess.Popen(["sleep", "600"], start_new_session=True) for _ in range(3)]
    try:
        r.guard_group(jobs[0].pid)
        r.release(r.guard_group(jobs[1].pid))           # released: not killed
        first = r.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)                  # the reaper dies; we live on
        dead = psutil.Process(first)
        end = time.monotonic() + 10
        while dead.status() != psutil.STATUS_ZOMBIE and time.monotonic() < end:
            time.sleep(0.01)
        r.guard_process(jobs[2].pid)
        assert r.pid not in (None, first)
        r.close()                                       # as if we died
        assert jobs[0].wait(timeout=10) == -signal.SIGKILL
        assert jobs[2].wait(timeout=10) == -signal.SIGKILL
        assert jobs[1].poll() is None
    finally:
        for p in jobs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_fork_without_exec_does_not_keep_the_reaper_waiting() -> None:
    r = Reaper()
    job = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        r.guard_group(job.pid)
        child = os.fork()
        if child == 0:          # holds no write end: closing ours must end the reaper
            time.sleep(30)
            os._exit(0)
        try:
            r.close()
            assert job.wait(timeout=10) == -signal.SIGKILL
        finally:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
