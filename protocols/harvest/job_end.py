"""How a job of the executor ended, and waiting for its end (executor.py's helpers).

`wait_exited(pid, poll)` returns once a child has exited, without reaping it, so its zombie
still holds its final CPU times for the meter. `job_result(job, code, ...)` says how a job
ended and why: killed by the executor (memory, output limit: the reason it gave), OOM-killed
by the kernel in its cgroup, a launch failure (the launcher's one line), an allocation refused
at RLIMIT_DATA (the job's last words), a signal, or its own exit. `last_sample(job)` takes the
exited root's last reading (in a worker thread), `drop_cgroup(job)` removes the job's cgroup
once the kernel has emptied it.
"""
from __future__ import annotations

import logging
import os
import signal

import trio

from fognode.protocols.harvest.jobs import JobEnd, JobResult, JobState
from fognode.protocols.harvest.launch import LAUNCH_FAILED, MARK
from fognode.protocols.harvest.limits import allocation_failure, rlimit_data_bytes
from fognode.protocols.harvest.meter import Sample, Usage
from fognode.protocols.harvest.procstat import sample_tree

log = logging.getLogger("fognode.harvest")


async def wait_exited(pid: int, poll: float) -> None:
    """Wait until `pid` has exited, without reaping it: its zombie keeps the final CPU times
    (a pidfd where the kernel has them, else polling waitid with WNOWAIT)."""
    if hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                await trio.lowlevel.wait_readable(fd)
            finally:
                os.close(fd)
            return
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        await trio.sleep(min(poll, 0.05))


async def last_sample(job: JobState) -> Sample:
    """The exited root's last reading; with a cgroup, the CPU of everything that ran in it
    (descendants that escaped the process group, or were never reaped, included)."""
    last, _ = await trio.to_thread.run_sync(sample_tree, job.pid)
    if job.cgroup is None:
        return last
    cpu = await trio.to_thread.run_sync(job.cgroup.cpu_seconds)
    return Sample(max(last.cpu_s, cpu), last.rss_bytes, last.hwm_bytes)


async def drop_cgroup(job: JobState) -> None:
    """Remove the job's cgroup once the kernel has emptied it (bounded retries)."""
    if job.cgroup is None:
        return
    for _ in range(100):
        if job.cgroup.remove():
            return
        await trio.sleep(0.01)
    log.warning("harvest job %d: could not remove its cgroup %s", job.job_id, job.cgroup.path)


def job_result(job: JobState, code: int, out: bytes, err: bytes, usage: Usage) -> JobResult:
    """The JobResult of `job`, which exited with status `code` (see the module docstring)."""
    end, reason = JobEnd.EXITED, f"exited with status {code}"
    if job.kill_end is not None:
        end, reason = job.kill_end, job.kill_reason
    elif job.cgroup is not None and job.cgroup.limits and job.cgroup.oom_kills() > 0:
        end = JobEnd.MEMORY
        reason = (f"killed by the kernel's OOM killer at the job's cgroup memory.max = "
                  f"{job.memory_limit} bytes")
    elif code == LAUNCH_FAILED and MARK.encode() in err:
        end = JobEnd.LAUNCH_FAILED
        reason = err[err.index(MARK.encode()):].decode(errors="replace").strip()
    elif code != 0 and not (job.cgroup and job.cgroup.limits) and allocation_failure(err):
        end = JobEnd.MEMORY
        reason = (f"an allocation was refused at RLIMIT_DATA = "
                  f"{rlimit_data_bytes(job.memory_limit)} bytes (memory limit "
                  f"{job.memory_limit} bytes, peak RSS {usage.peak_rss_bytes})")
    elif code < 0:
        end = JobEnd.SIGNALED
        reason = f"killed by signal {signal.Signals(-code).name}"
    return JobResult(job.job_id, end, code, reason, out, err, usage)
