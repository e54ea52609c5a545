"""How a job of the executor ended, and waiting for its end (executor.py's helpers).

`wait_exited(pid, poll)` returns once a child has exited, without reaping it, so its zombie
still holds its final CPU times for the meter. `job_result(job, code, ...)` says how a job
ended and why: killed by the executor (memory, output limit: the reason it gave), OOM-killed
by the kernel in its cgroup, a launch failure (the launcher's one line), an allocation refused
at RLIMIT_DATA (the job's last words), a signal, or its own exit.
"""
from __future__ import annotations

import os
import signal

import trio

from fognode.protocols.harvest.jobs import JobEnd, JobResult, JobState
from fognode.protocols.harvest.launch import LAUNCH_FAILED, MARK
from fognode.protocols.harvest.limits import allocation_failure, rlimit_data_bytes
from fognode.protocols.harvest.meter import Usage


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
