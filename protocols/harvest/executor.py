"""The harvest executor (trio): runs work in child processes it owns, limited, stoppable, metered.

`Executor.run(spec)` starts one job through the shell launcher (`launch.py`) in its own session
and process group: niced (the executor's `nice` added to the daemon's own; 19 by default, as
BOINC runs its tasks), memory-limited (cgroup v2 `memory.max` when `probe_cgroup` found a
delegated cgroup, else RLIMIT_DATA plus the meter's polling) and CPU-limited (cgroup `cpu.max`,
else the duty-cycle throttle of `limits.DutyCycle` with SIGSTOP/SIGCONT). It feeds `spec.input`
on stdin, collects stdout (bounded) and the tail of stderr, and awaits the exit; it returns a
`JobResult` with how the job ended, why, and its `Usage` (meter.py). Cancelling `run` kills the
job's whole process group and reaps it (shielded, bounded) before the cancellation propagates.

`suspend()` / `resume()` stop and continue every running job at once (SIGSTOP / SIGCONT to each
job's process group and any descendant that left it); they are synchronous, act before they
return, and lose no work: a stopped process keeps its memory and continues where it was.
`set_allowance(cpu_fraction, memory_bytes)` applies a new CPU fraction and memory budget to
running jobs live (cgroup files, or the RLIMIT_DATA of every process of the tree via prlimit:
lowering always works, raising needs CAP_SYS_RESOURCE; the meter enforces the new limit either
way).

A job over its memory limit is killed with the reason: the kernel's OOM kill in its cgroup
(`memory.events`), the meter's reading of the tree's RSS over the limit, an allocation refused
at RLIMIT_DATA (the job's last words on stderr), or all work together over the allowance (the
newest job goes). The event loop never waits on the OS: /proc readings run in a worker thread,
signals and cgroup writes are single system calls. Linux is the target (pidfd, /proc); other
POSIX systems fall back to psutil and waitid polling.
"""
from __future__ import annotations

import enum
import itertools
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Mapping

import psutil
import trio

from fognode.protocols.harvest.cgroup import CgroupSupport, JobCgroup
from fognode.protocols.harvest.exec_errors import BadJobError, ExecutorError
from fognode.protocols.harvest.launch import LAUNCH_FAILED, MARK, launch_command
from fognode.protocols.harvest.limits import (Allowance, DutyCycle, Mechanism, Phase, StopCause,
                                              allocation_failure, choose_mechanism,
                                              job_memory_limit, over_memory, rlimit_data_bytes,
                                              stop_cause)
from fognode.protocols.harvest.meter import JobMeter, Sample, SessionMeter, Usage
from fognode.protocols.harvest.procstat import sample_tree

log = logging.getLogger("fognode.harvest")

STDERR_TAIL = 4096
DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024
REAP_TIMEOUT = 10.0


class JobEnd(enum.Enum):
    """How a job ended."""

    EXITED = "exited"                # it exited on its own (see returncode)
    MEMORY = "memory"                # killed (or its allocation refused) at its memory limit
    OUTPUT_LIMIT = "output_limit"    # it wrote more than max_output bytes to stdout
    SIGNALED = "signaled"            # killed by a signal the executor did not send
    LAUNCH_FAILED = "launch_failed"  # the limits could not be applied or the command not run
    CANCELLED = "cancelled"          # the caller cancelled it (seen only in `status`)


@dataclass(frozen=True)
class JobSpec:
    """What to run: `argv`, or a fognode Python `module` (run as `python -m module argv...` with
    this interpreter); stdin bytes; a memory limit (None: the whole allowance); a bound
    on stdout; a name for logs and status. BadJobError names a bad field."""

    argv: tuple[str, ...] = ()
    module: str | None = None
    input: bytes = b""
    memory_bytes: int | None = None
    max_output: int = DEFAULT_MAX_OUTPUT
    name: str = "job"
    env: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.argv and not self.module:
            raise BadJobError("a job needs a command or a module", field="argv")
        if not all(isinstance(a, str) for a in self.argv):
            raise BadJobError("every argument must be a string", field="argv")
        if self.module is not None and not self.module.startswith("fognode."):
            raise BadJobError(f"only fognode modules run in-process, not {self.module!r}",
                              field="module")
        if not isinstance(self.input, bytes):
            raise BadJobError("must be bytes", field="input")
        if isinstance(self.max_output, bool) or not isinstance(self.max_output, int) \
                or self.max_output < 0:
            raise BadJobError(f"must be a non-negative integer, got {self.max_output!r}",
                              field="max_output")


@dataclass(frozen=True)
class JobResult:
    """A finished job: how it ended and why, its exit status, output and usage."""

    job_id: int
    end: JobEnd
    returncode: int
    reason: str
    stdout: bytes
    stderr_tail: bytes
    usage: Usage

    @property
    def ok(self) -> bool:
        """It exited on its own with status 0."""
        return self.end is JobEnd.EXITED and self.returncode == 0


@dataclass(frozen=True)
class JobStatus:
    """A running job as `harvest.status` shows it."""

    job_id: int
    name: str
    pid: int
    memory_limit: int
    stopped: StopCause
    usage: Usage


@dataclass
class _Job:
    job_id: int
    spec: JobSpec
    memory_limit: int
    meter: JobMeter
    proc: trio.Process | None = None
    cgroup: JobCgroup | None = None
    stopped: bool = False
    pids: list[int] = field(default_factory=list)
    kill_end: JobEnd | None = None
    kill_reason: str = ""


class Executor:
    """Runs harvest work (see the module docstring). One per node; safe to share among tasks."""

    def __init__(self, *, allowance: Allowance | None = None, nice: int = 19,
                 cgroup: CgroupSupport | None = None, poll_interval: float = 0.25,
                 duty_period: float = 1.0, session: SessionMeter | None = None) -> None:
        if not -20 <= nice <= 19:
            raise BadJobError(f"must be in -20..19, got {nice}", field="nice")
        if not poll_interval > 0:
            raise BadJobError(f"must be positive, got {poll_interval}", field="poll_interval")
        self._allowance = allowance or Allowance()
        self._duty = DutyCycle(self._allowance.cpu_fraction, duty_period)
        self._nice = nice
        shell = shutil.which("sh")
        if shell is None:
            raise ExecutorError("no POSIX shell `sh` on PATH: the job launcher needs one")
        self._shell = shell
        self._cgroup = cgroup if cgroup is not None and cgroup.available else None
        self._poll = poll_interval
        self._session = session
        self._suspended = False
        self._jobs: dict[int, _Job] = {}
        self._ids = itertools.count(1)

    # ---- state -------------------------------------------------------------------------

    @property
    def mechanism(self) -> Mechanism:
        """CGROUP_V2 or RLIMIT (decided once, from the probe handed in)."""
        return choose_mechanism(self._cgroup is not None)

    @property
    def allowance(self) -> Allowance:
        return self._allowance

    @property
    def suspended(self) -> bool:
        return self._suspended

    @property
    def session(self) -> SessionMeter | None:
        return self._session

    def set_session(self, session: SessionMeter | None) -> None:
        """Meter jobs started from now on into `session` (None: no session totals)."""
        self._session = session

    def status(self) -> list[JobStatus]:
        """The running jobs, oldest first."""
        now = trio.current_time()
        return [JobStatus(j.job_id, j.spec.name, j.proc.pid if j.proc else 0, j.memory_limit,
                          j.meter.cause, j.meter.usage(now)) for j in self._jobs.values()]

    # ---- control -----------------------------------------------------------------------

    def suspend(self) -> None:
        """Stop all running work now (SIGSTOP to each job's process group); idempotent."""
        self._suspended = True
        now = trio.current_time()
        for job in self._jobs.values():
            if not job.stopped:
                self._signal(job, signal.SIGSTOP)
                job.stopped = True
            job.meter.set_cause(now, StopCause.SUSPENDED)

    def resume(self) -> None:
        """Continue all work (SIGCONT), unless the duty cycle is in its stop phase; idempotent."""
        self._suspended = False
        now = trio.current_time()
        for job in self._jobs.values():
            self._apply_phase(job, now)

    def set_allowance(self, cpu_fraction: float, memory_bytes: int) -> None:
        """Apply a new CPU fraction and memory budget to running jobs and the ones to come.
        BadJobError naming the field if a value is out of range (the old allowance stays)."""
        allowance = Allowance(cpu_fraction, memory_bytes)
        self._allowance = allowance
        self._duty = DutyCycle(allowance.cpu_fraction, self._duty.period)
        now = trio.current_time()
        for job in self._jobs.values():
            job.memory_limit = job_memory_limit(job.spec.memory_bytes, allowance)
            if job.cgroup is not None:
                try:
                    job.cgroup.set_limits(job.memory_limit, allowance.cpu_fraction)
                except OSError as e:
                    log.warning("job %d: cannot change its cgroup limits: %s", job.job_id, e)
            else:
                self._set_rlimit(job)
                self._apply_phase(job, now)

    def _set_rlimit(self, job: _Job) -> None:
        limit = rlimit_data_bytes(job.memory_limit)
        for pid in job.pids:
            try:
                psutil.Process(pid).rlimit(psutil.RLIMIT_DATA, (limit, limit))
            except (psutil.Error, OSError, ValueError):
                pass  # raising a hard limit needs CAP_SYS_RESOURCE; the meter still enforces

    def _signal(self, job: _Job, sig: int) -> None:
        """`sig` to the job's process group and any descendant that left it."""
        if job.proc is None or job.proc.returncode is not None:
            return
        pid = job.proc.pid
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            try:  # the child has not made its group yet
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        for other in job.pids[1:]:
            try:
                if os.getpgid(other) != pid:
                    os.kill(other, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _apply_phase(self, job: _Job, now: float) -> None:
        cause = stop_cause(self._suspended, self._phase(now))
        if cause is StopCause.NONE and job.stopped:
            self._signal(job, signal.SIGCONT)
            job.stopped = False
        elif cause is not StopCause.NONE and not job.stopped:
            self._signal(job, signal.SIGSTOP)
            job.stopped = True
        job.meter.set_cause(now, cause)

    def _phase(self, now: float) -> Phase:
        if self._cgroup is not None:  # the kernel throttles with cpu.max
            return DutyCycle(1.0, self._duty.period).phase(now)
        return self._duty.phase(now)

    # ---- running a job -------------------------------------------------------------------

    def _command(self, job: _Job) -> list[str]:
        argv = list(job.spec.argv)
        if job.spec.module:
            argv = [sys.executable, "-m", job.spec.module, *argv]
        cgroup = str(job.cgroup.path) if job.cgroup is not None else None
        rlimit = None if cgroup else rlimit_data_bytes(job.memory_limit)
        return launch_command(self._shell, argv, nice=self._nice, rlimit_data=rlimit, cgroup=cgroup)

    async def run(self, spec: JobSpec) -> JobResult:
        """Run `spec` to its end and return its JobResult. Cancellable (the job is killed and
        reaped first). Raises BadJobError for a bad spec, ExecutorError when the OS refuses to
        start it; everything the job itself does wrong is in the result, not raised."""
        job_id = next(self._ids)
        now = trio.current_time()
        job = _Job(job_id, spec, job_memory_limit(spec.memory_bytes, self._allowance),
                   JobMeter(now))
        if self._cgroup is not None and self._cgroup.parent is not None:
            job.cgroup = JobCgroup(self._cgroup.parent, job_id)
            try:
                job.cgroup.create(job.memory_limit, self._allowance.cpu_fraction)
            except OSError as e:
                raise ExecutorError(f"cannot create the job's cgroup {job.cgroup.path}: {e}") from e
        try:
            job.proc = await trio.lowlevel.open_process(
                self._command(job), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True,
                env=dict(spec.env) if spec.env is not None else None)
        except OSError as e:
            await self._drop_cgroup(job)
            raise ExecutorError(f"cannot start job {spec.name!r}: {e}") from e
        job.pids = [job.proc.pid]
        self._jobs[job_id] = job
        if self._session is not None:
            self._session.attach(job_id, job.meter)
        session = self._session
        try:
            result = await self._supervise(job)
        finally:
            self._jobs.pop(job_id, None)
            with trio.CancelScope(shield=True):
                await self._reap(job)
                await self._drop_cgroup(job)
            if not job.meter.finished:   # cancelled: its work counts too, up to the kill
                job.meter.finish(trio.current_time())
            if session is not None:
                session.close(job_id, job.meter.usage(trio.current_time()))
        return result

    async def _supervise(self, job: _Job) -> JobResult:
        assert job.proc is not None
        proc = job.proc
        out = bytearray()
        err = bytearray()
        self._apply_phase(job, trio.current_time())  # a job started while suspended stops now
        async with trio.open_nursery() as outer:
            outer.start_soon(self._control, job)
            async with trio.open_nursery() as io:
                io.start_soon(self._feed, proc, job.spec.input)
                io.start_soon(self._collect, job, proc.stdout, out, job.spec.max_output)
                io.start_soon(self._collect, job, proc.stderr, err, None)
                await self._exited(proc.pid)        # the root exited, not reaped yet
                last, _ = await trio.to_thread.run_sync(sample_tree, proc.pid)
                ended = trio.current_time()
                self._kill_tree(job)   # leftovers: once they are gone the pipes reach EOF
                io.cancel_scope.deadline = trio.current_time() + REAP_TIMEOUT
            outer.cancel_scope.cancel()
        code = await proc.wait()
        usage = job.meter.finish(ended, last)
        return self._result(job, code, bytes(out), bytes(err[-STDERR_TAIL:]), usage)

    async def _exited(self, pid: int) -> None:
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
            await trio.sleep(min(self._poll, 0.05))

    def _result(self, job: _Job, code: int, out: bytes, err: bytes, usage: Usage) -> JobResult:
        end, reason = JobEnd.EXITED, f"exited with status {code}"
        if job.kill_end is not None:
            end, reason = job.kill_end, job.kill_reason
        elif job.cgroup is not None and job.cgroup.oom_kills() > 0:
            end = JobEnd.MEMORY
            reason = (f"killed by the kernel's OOM killer at the job's cgroup memory.max = "
                      f"{job.memory_limit} bytes")
        elif code == LAUNCH_FAILED and MARK.encode() in err:
            end = JobEnd.LAUNCH_FAILED
            reason = err[err.index(MARK.encode()):].decode(errors="replace").strip()
        elif code != 0 and job.cgroup is None and allocation_failure(err):
            end = JobEnd.MEMORY
            reason = (f"an allocation was refused at RLIMIT_DATA = "
                      f"{rlimit_data_bytes(job.memory_limit)} bytes (memory limit "
                      f"{job.memory_limit} bytes, peak RSS {usage.peak_rss_bytes})")
        elif code < 0:
            end = JobEnd.SIGNALED
            reason = f"killed by signal {signal.Signals(-code).name}"
        return JobResult(job.job_id, end, code, reason, out, err, usage)

    async def _feed(self, proc: trio.Process, data: bytes) -> None:
        assert proc.stdin is not None
        try:
            if data:
                await proc.stdin.send_all(data)
            await proc.stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the job closed its stdin or died; its exit says why

    async def _collect(self, job: _Job, stream: trio.abc.ReceiveStream | None, buf: bytearray,
                       limit: int | None) -> None:
        if stream is None:
            return
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            buf += data
            if limit is None:
                del buf[:-STDERR_TAIL]
            elif len(buf) > limit:
                del buf[limit:]
                self._kill(job, JobEnd.OUTPUT_LIMIT,
                           f"wrote more than its output limit of {limit} bytes")
                return

    async def _control(self, job: _Job) -> None:
        """Poll the tree (meter, memory), run the duty cycle; until cancelled."""
        assert job.proc is not None
        next_poll = trio.current_time()
        while True:
            now = trio.current_time()
            if now >= next_poll:
                sample, pids = await trio.to_thread.run_sync(sample_tree, job.proc.pid)
                now = trio.current_time()
                next_poll = now + self._poll
                if pids:
                    job.pids = pids
                    job.meter.sample(now, sample)
                    self._check_memory(job, sample)
            self._apply_phase(job, now)
            until = self._phase(now).until
            await trio.sleep_until(min(next_poll, until if math.isfinite(until) else next_poll))

    def _check_memory(self, job: _Job, sample: Sample) -> None:
        if over_memory(sample.rss_bytes, job.memory_limit):
            self._kill(job, JobEnd.MEMORY,
                       f"its processes' resident memory {sample.rss_bytes} bytes went over its "
                       f"memory limit of {job.memory_limit} bytes (meter)")
            return
        total = sum(j.meter.rss_bytes for j in self._jobs.values())
        newest = max(self._jobs)
        if over_memory(total, self._allowance.memory_bytes) and job.job_id == newest:
            self._kill(job, JobEnd.MEMORY,
                       f"all harvest work together held {total} bytes, over the allowance of "
                       f"{self._allowance.memory_bytes} bytes; the newest job was stopped")

    def _kill(self, job: _Job, end: JobEnd, reason: str) -> None:
        if job.kill_end is None:
            job.kill_end, job.kill_reason = end, reason
            log.info("harvest job %d (%s) killed: %s", job.job_id, job.spec.name, reason)
        self._kill_tree(job)

    def _kill_tree(self, job: _Job) -> None:
        if job.cgroup is not None:
            job.cgroup.kill()
        self._signal(job, signal.SIGKILL)
        if job.proc is not None:  # the root may be a zombie already: its group still counts
            try:
                os.killpg(job.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    async def _reap(self, job: _Job) -> None:
        if job.proc is None:
            return
        if job.proc.returncode is None:
            self._kill_tree(job)
            with trio.move_on_after(REAP_TIMEOUT):
                await job.proc.wait()

    async def _drop_cgroup(self, job: _Job) -> None:
        """Remove the job's cgroup once the kernel has emptied it (bounded retries)."""
        if job.cgroup is None:
            return
        for _ in range(100):
            if job.cgroup.remove():
                return
            await trio.sleep(0.01)
        log.warning("harvest job %d: could not remove its cgroup %s", job.job_id,
                        job.cgroup.path)
