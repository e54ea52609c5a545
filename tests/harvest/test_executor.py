"""The harvest executor against real child processes: suspend/resume, memory kills, the duty-cycle
throttle, live allowance changes, cancellation, metering, and the event loop's lag meanwhile."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from functools import partial

import psutil
import pytest
import trio
from prometheus_client import CollectorRegistry

from fognode.node.looplag import watch_loop_lag
from fognode.protocols.harvest.cgroup import CgroupSupport, probe_cgroup
from fognode.protocols.harvest.exec_errors import BadJobError, ExecutorError
from fognode.protocols.harvest.executor import Executor
from fognode.protocols.harvest.jobs import UNKNOWN_EXIT, JobEnd, JobResult, JobSpec
from fognode.protocols.harvest.limits import Allowance, Mechanism, StopCause, rlimit_data_bytes
from fognode.protocols.harvest.meter import SessionMeter
from fognode.protocols.harvest.procstat import process_cpu_s, process_state, tree_pids
from tests.polling import wait_until

PY = sys.executable
MB = 1024 * 1024
# A deterministic CPU-bound job: a SHA-256 chain (about 0.3-0.5 s of CPU on an idle core).
CPU_JOB = ("import hashlib, sys\nh = b'fognode'\nfor _ in range(int(sys.argv[1])):\n"
           "    h = hashlib.sha256(h).digest()\nprint(h.hex())\n")
CHAIN = "400000"
SPIN = "while True:\n    pass\n"
# Allocates and touches 4 MiB at a time, a little at a time, forever.
GROW = ("import time\nx = []\nwhile True:\n    x.append(b'\\1' * (4 << 20))\n    time.sleep(0.005)\n")
HOLD = ("import sys, time\nx = b'\\1' * (int(sys.argv[1]) << 20)\nprint('held', flush=True)\n"
        "while True:\n    time.sleep(0.05)\n")


def cpu_job() -> JobSpec:
    return JobSpec(argv=(PY, "-c", CPU_JOB, CHAIN), name="sha-chain")


async def running(ex: Executor, what: str, cpu: float = 0.0) -> int:
    """Wait for the single running job to have used `cpu` s of CPU; its pid."""
    await wait_until(lambda: bool(ex.status()) and ex.status()[0].usage.cpu_s >= cpu
                     and ex.status()[0].pid > 0, 30, what)
    return ex.status()[0].pid


async def test_suspended_child_stops_and_resumes_with_the_same_result() -> None:
    ex = Executor(nice=3, poll_interval=0.05, session=SessionMeter(trio.current_time()))
    assert ex.mechanism in (Mechanism.RLIMIT, Mechanism.CGROUP_V2)
    plain = await ex.run(cpu_job())
    assert plain.ok and len(plain.stdout.strip()) == 64, plain

    results: list[JobResult] = []
    async with trio.open_nursery() as nursery:
        async def go() -> None:
            results.append(await ex.run(cpu_job()))
        nursery.start_soon(go)
        pid = await running(ex, "the job to burn some CPU", cpu=0.05)
        assert psutil.Process(pid).nice() == 3                     # niced by the launcher
        if os.path.exists(f"/proc/{pid}/autogroup"):   # and so is its session, where there are
            with open(f"/proc/{pid}/autogroup") as f:  # scheduler autogroups
                assert f.read().split()[-1] == "3"
        limit = rlimit_data_bytes(Allowance().memory_bytes) // 1024 * 1024    # ulimit -d: KiB
        assert resource.prlimit(pid, resource.RLIMIT_DATA) == (limit, limit)
        ex.suspend()
        await wait_until(lambda: process_state(pid) == "T", 10, "the child to be stopped")
        assert ex.status()[0].stopped is StopCause.SUSPENDED
        frozen = process_cpu_s(pid)
        with trio.move_on_after(0.6):   # watch it: its CPU time must not grow while stopped
            while True:
                assert process_cpu_s(pid) == frozen
                await trio.sleep(0.05)
        ex.resume()
        await wait_until(lambda: process_state(pid) != "T", 10, "the child to run again")
    [resumed] = results
    assert resumed.ok and resumed.stdout == plain.stdout        # nothing lost
    assert resumed.usage.suspended_s >= 0.5
    assert resumed.usage.cpu_s >= 0.05 and resumed.usage.peak_rss_bytes > 0
    assert resumed.usage.wall_s > resumed.usage.suspended_s
    totals = ex.session.totals(trio.current_time()) if ex.session else None
    assert totals is not None and totals.jobs == 2
    assert totals.cpu_s == pytest.approx(plain.usage.cpu_s + resumed.usage.cpu_s)


async def test_a_job_started_while_suspended_waits() -> None:
    ex = Executor(nice=0, poll_interval=0.05)
    ex.suspend()
    async with trio.open_nursery() as nursery:
        results: list[JobResult] = []

        async def go() -> None:
            results.append(await ex.run(cpu_job()))
        nursery.start_soon(go)
        pid = await running(ex, "the job to start")
        await wait_until(lambda: process_state(pid) == "T", 10, "the new job to be stopped")
        ex.resume()
    assert results[0].ok and results[0].usage.suspended_s > 0


async def test_killed_by_the_meter_at_its_memory_limit() -> None:
    ex = Executor(nice=0, poll_interval=0.02)
    res = await ex.run(JobSpec(argv=(PY, "-c", GROW), memory_bytes=96 * MB, name="grow"))
    assert res.end is JobEnd.MEMORY, res
    # the meter's poll normally catches it; on a starved machine RLIMIT_DATA may refuse first
    assert str(96 * MB) in res.reason and "memory limit" in res.reason
    assert res.usage.peak_rss_bytes > 0


async def test_an_allocation_past_rlimit_data_is_a_memory_end() -> None:
    ex = Executor(nice=0, poll_interval=0.05)
    res = await ex.run(JobSpec(argv=(PY, "-c", "x = bytearray(1 << 30)"), memory_bytes=64 * MB))
    assert res.end is JobEnd.MEMORY, res
    assert "RLIMIT_DATA" in res.reason and b"MemoryError" in res.stderr_tail


async def test_lowering_the_memory_allowance_live_kills_a_job_over_it() -> None:
    ex = Executor(nice=0, poll_interval=0.05, allowance=Allowance(memory_bytes=512 * MB))
    results: list[JobResult] = []
    async with trio.open_nursery() as nursery:
        async def go() -> None:
            results.append(await ex.run(JobSpec(argv=(PY, "-c", HOLD, "80"), name="hold")))
        nursery.start_soon(go)
        await wait_until(lambda: bool(ex.status()) and ex.status()[0].usage.peak_rss_bytes
                         > 80 * MB, 30, "the job to hold 80 MiB")
        with pytest.raises(BadJobError):
            ex.set_allowance(0.0, 48 * MB)                       # refused: the old one stays
        ex.set_allowance(1.0, 48 * MB)
    assert results[0].end is JobEnd.MEMORY and str(48 * MB) in results[0].reason
    assert results[0].stdout == b"held\n"


async def test_duty_cycle_keeps_the_cpu_share_near_the_allowance() -> None:
    ex = Executor(nice=0, poll_interval=0.05, duty_period=0.5,
                  allowance=Allowance(cpu_fraction=0.25))
    if ex.mechanism is not Mechanism.RLIMIT:
        pytest.skip("the duty cycle throttles only without cgroup cpu.max")
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ex.run, JobSpec(argv=(PY, "-c", SPIN), name="spin"))
            pid = await running(ex, "the spinner to start", cpu=0.02)
            cpu0, t0 = process_cpu_s(pid), trio.current_time()
            await wait_until(lambda: trio.current_time() - t0 >= 3.0, 10, "a 3 s window")
            share = (process_cpu_s(pid) - cpu0) / (trio.current_time() - t0)
            # generous: the machine is loaded (the share can only be lower than granted then)
            assert 0.0 < share <= 0.25 + 0.15, share
            assert ex.status()[0].usage.throttled_s > 0.5
            ex.set_allowance(1.0, ex.allowance.memory_bytes)     # live: the throttle lets go
            await wait_until(lambda: process_state(pid) != "T"
                             and ex.status()[0].stopped is StopCause.NONE, 10, "unthrottled")
            throttled = ex.status()[0].usage.throttled_s
            cpu1, t1 = process_cpu_s(pid), trio.current_time()
            await wait_until(lambda: trio.current_time() - t1 >= 1.0, 10, "a 1 s window")
            assert ex.status()[0].usage.throttled_s == pytest.approx(throttled)
            assert process_cpu_s(pid) > cpu1
            scope.cancel()
    await wait_until(lambda: not psutil.pid_exists(pid) or process_state(pid) == "Z", 10,
                     "the cancelled job's process to be gone")
    assert ex.status() == []


async def test_cancel_kills_the_whole_process_group_and_grandchildren_are_metered() -> None:
    # the grandchild's hashing must take well over the 0.1 s asserted below: 200,000 rounds took
    # 0.08-0.10 s of CPU on a quiet machine, so the wait below timed out in about 1 run of 5
    script = ("import subprocess, sys\n"
              "subprocess.run([sys.executable, '-c', " + repr(CPU_JOB) + ", '600000'], check=True)\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
              "print(p.pid, flush=True)\np.wait()\n")
    session = SessionMeter(trio.current_time())
    ex = Executor(nice=0, poll_interval=0.05, session=session)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ex.run, JobSpec(argv=(PY, "-c", script), name="tree"))
            await wait_until(lambda: bool(ex.status()) and len(tree_pids(ex.status()[0].pid)) == 2
                             and ex.status()[0].usage.cpu_s > 0.1, 30,
                             "the grandchild's CPU to be metered and the sleeper to start")
            pids = tree_pids(ex.status()[0].pid)
            scope.cancel()
    # SIGKILL was sent to the group before `run` returned; the kernel finishes them off
    await wait_until(lambda: all(not psutil.pid_exists(p) or process_state(p) in ("Z", "")
                                 for p in pids), 10, "every process of the job to be gone")
    totals = session.totals(trio.current_time())     # the cancelled job's work still counts
    assert totals.jobs == 1 and totals.cpu_s > 0.1
    assert session.totals(trio.current_time() + 100) == totals


async def test_a_watched_process_is_suspended_metered_and_released() -> None:
    """The FL task process is started and reaped by the fl role; harvest only watches it."""
    session = SessionMeter(trio.current_time())
    ex = Executor(nice=0, poll_interval=0.05, session=session)
    worker = await trio.lowlevel.open_process([PY, "-c", CPU_JOB, CHAIN],
                                              stdout=subprocess.DEVNULL)
    spinner = await trio.lowlevel.open_process([PY, "-c", SPIN])
    try:
        results: list[JobResult] = []
        async with trio.open_nursery() as nursery:
            async def watch_worker() -> None:
                results.append(await ex.watch(worker.pid, name="fl-training"))
            nursery.start_soon(watch_worker)
            async with trio.open_nursery() as spin:
                await spin.start(partial(ex.watch, spinner.pid, name="spinner"))
                await wait_until(lambda: len(ex.status()) == 2 and all(
                    j.usage.cpu_s > 0.02 for j in ex.status()), 30, "both to burn CPU")
                ex.suspend()
                await wait_until(lambda: process_state(worker.pid) == "T"
                                 and process_state(spinner.pid) == "T", 10, "both stopped")
                spin.cancel_scope.cancel()   # no longer watched: released, running again
            await wait_until(lambda: process_state(spinner.pid) not in ("T", ""), 10,
                             "the released spinner to run")
            assert process_state(worker.pid) == "T" and len(ex.status()) == 1
            ex.resume()
        assert await worker.wait() == 0                      # finished, nothing lost
        [watched] = results
        assert watched.end is JobEnd.EXITED and watched.returncode == UNKNOWN_EXIT
        assert watched.usage.cpu_s > 0.02 and watched.usage.suspended_s > 0
        assert session.totals(trio.current_time()).jobs == 2
    finally:
        spinner.kill()
        await spinner.wait()


async def test_a_watched_process_over_its_memory_limit_is_killed() -> None:
    ex = Executor(nice=0, poll_interval=0.05)
    hog = await trio.lowlevel.open_process([PY, "-c", HOLD, "80"], stdout=subprocess.DEVNULL)
    res = await ex.watch(hog.pid, name="hog", memory_bytes=48 * MB)
    assert res.end is JobEnd.MEMORY and str(48 * MB) in res.reason
    assert await hog.wait() == -9
    with pytest.raises(ExecutorError):
        await ex.watch(hog.pid)     # reaped: nothing to watch


async def test_output_limit_and_launch_failure_end_cleanly() -> None:
    ex = Executor(nice=0)
    big = await ex.run(JobSpec(argv=(PY, "-c", "import sys\nwhile True: sys.stdout.write('x' * 65536)"),
                               max_output=100_000))
    assert big.end is JobEnd.OUTPUT_LIMIT and len(big.stdout) == 100_000
    missing = await ex.run(JobSpec(argv=("/nonexistent/fognode-job",)))
    assert missing.end is JobEnd.LAUNCH_FAILED and "No such file" in missing.reason
    failed = await ex.run(JobSpec(argv=(PY, "-c", "import sys; sys.exit(3)")))
    assert failed.end is JobEnd.EXITED and failed.returncode == 3 and not failed.ok
    echoed = await ex.run(JobSpec(argv=(PY, "-c", "import sys; sys.stdout.buffer.write("
                                        "sys.stdin.buffer.read()[::-1])"), input=b"abc" * 50_000))
    assert echoed.ok and echoed.stdout == (b"abc" * 50_000)[::-1]
    with pytest.raises(BadJobError):
        Executor(nice=40)


async def test_event_loop_lag_stays_bounded_while_children_run() -> None:
    registry = CollectorRegistry()
    ex = Executor(nice=0, poll_interval=0.02, duty_period=0.2, allowance=Allowance(cpu_fraction=0.5))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: watch_loop_lag(registry, interval=0.02))
        async with trio.open_nursery() as jobs:
            for _ in range(2):
                jobs.start_soon(ex.run, cpu_job())
            await wait_until(lambda: len(ex.status()) == 2, 30, "two jobs")
            for _ in range(5):
                ex.suspend()
                await trio.sleep(0.05)
                ex.resume()
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    count = registry.get_sample_value("fognode_node_event_loop_lag_seconds_count") or 0
    late = count - (registry.get_sample_value("fognode_node_event_loop_lag_seconds_bucket",
                                              {"le": "1.0"}) or 0)
    assert count > 10 and late == 0, (count, late)


@pytest.fixture
def cgroup_support() -> CgroupSupport:
    """The delegated cgroup v2 of this machine; the test is skipped, saying why, without one."""
    support = probe_cgroup()
    if not support.available or not support.limits:
        pytest.skip(f"cgroup v2 limits not usable here: {support.reason}")
    return support


async def test_cgroup_v2_memory_limit_kills_with_the_oom_reason(cgroup_support: CgroupSupport) -> None:
    support = cgroup_support
    ex = Executor(nice=0, cgroup=support, poll_interval=10.0)   # the kernel, not the meter
    assert ex.mechanism is Mechanism.CGROUP_V2
    res = await ex.run(JobSpec(argv=(PY, "-c", GROW), memory_bytes=64 * MB))
    assert res.end is JobEnd.MEMORY and "OOM" in res.reason, res
    assert not os.path.exists(f"{support.parent}/fognode-{os.getpid()}-job1")
