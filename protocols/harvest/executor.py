"""The harvest executor (trio): runs work in child processes it owns, limited, stoppable, metered.

`Executor.run(spec)` starts one job through the shell launcher (`launch.py`) in its own session
and process group: niced (the executor's `nice` added to the daemon's own; 19 by default, as
BOINC runs its tasks), memory-limited (cgroup v2 `memory.max` when `probe_cgroup` found a
delegated cgroup, else RLIMIT_DATA plus the meter's polling) and CPU-limited (cgroup `cpu.max`,
else the duty-cycle throttle of `limits.DutyCycle` with SIGSTOP/SIGCONT). It feeds `spec.input`
on stdin, collects stdout (bounded) and the tail of stderr, and awaits the exit; it returns a
`JobResult` with how the job ended, why, and its `Usage` (meter.py). Cancelling `run` kills the
job's whole process group and reaps it (shielded, bounded) before the cancellation propagates.
Every job is registered with this process's reaper (node/reaper.py) while it may run, so it dies
with the daemon (kill -9 included, stopped or not); a job no reaper guards is not started.

`Executor.watch(pid)` takes a process someone else started and reaps (FL's task process) under
the same suspend/resume, duty cycle, meter and memory limit, and releases it (running) when the
watch is cancelled; its borrower takes `usage_now` first, so work shorter than a poll is metered.
It is two halves: `begin_watch` (synchronous: the first reading, the memory check, stopped at
once if work is suspended) and `follow` (the task that polls it and ends the watch), so that a
borrower can start using the process in the step that lent it.

`suspend()` / `resume()` stop and continue every running job at once (SIGSTOP / SIGCONT to each
job's process group and any descendant that left it); they are synchronous, act before they
return, and lose no work: a stopped process keeps its memory and continues where it was.
`set_allowance(cpu_fraction, memory_bytes)` applies a new CPU fraction and memory budget to
running jobs live (cgroup files, or every process's RLIMIT_DATA via prlimit: raising needs
CAP_SYS_RESOURCE; the meter enforces the new limit either way).

A job over its memory limit is killed with the reason: the kernel's OOM kill in its cgroup
(`memory.events`), the meter's reading of the tree's RSS over the limit, an allocation refused
at RLIMIT_DATA (the job's last words on stderr), or all work together over the allowance (the
newest job goes). The event loop never waits on the OS: /proc readings run in a worker thread,
signals and cgroup writes are single system calls. Linux is the target (pidfd, /proc); other
POSIX systems fall back to psutil and waitid polling.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
import signal
import subprocess
import sys

import psutil
import trio

from fognode.protocols.harvest.cgroup import CgroupSupport, JobCgroup
from fognode.protocols.harvest.exec_errors import BadJobError, ExecutorError
from fognode.protocols.harvest.job_end import drop_cgroup, job_result, last_sample, wait_exited
from fognode.protocols.harvest.job_io import STDERR_TAIL, collect, feed
from fognode.protocols.harvest.launch import launch_command
from fognode.protocols.harvest.limits import (Allowance, DutyCycle, Mechanism, Phase, StopCause,
                                              choose_mechanism, job_memory_limit, over_memory,
                                              rlimit_data_bytes, stop_cause)
from fognode.protocols.harvest.jobs import (UNKNOWN_EXIT, JobEnd, JobPipe, JobResult, JobSpec,
                                            JobState, JobStatus, Watch)
from fognode.protocols.harvest.meter import JobMeter, Sample, SessionMeter, Usage
from fognode.protocols.harvest.procstat import sample_tree
from fognode.node.reaper import Reaper, reaper as process_reaper

log = logging.getLogger("fognode.harvest")

REAP_TIMEOUT = 10.0


class Executor:
    """Runs harvest work (see the module docstring). One per node; safe to share among tasks."""

    def __init__(self, *, allowance: Allowance | None = None, nice: int = 19,
                 cgroup: CgroupSupport | None = None, poll_interval: float = 0.25,
                 duty_period: float = 1.0, session: SessionMeter | None = None,
                 reaper: Reaper | None = None) -> None:
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
        self._reaper = reaper or process_reaper()
        self._suspended = False
        self._jobs: dict[int, JobState] = {}
        self._ids = itertools.count(1)

    # ---- state -------------------------------------------------------------------------

    @property
    def mechanism(self) -> Mechanism:
        """CGROUP_V2 or RLIMIT (decided once, from the probe handed in)."""
        return choose_mechanism(self._cgroup is not None and self._cgroup.limits)

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
        return [JobStatus(j.job_id, j.name, j.pid, j.memory_limit, j.meter.cause,
                          j.meter.usage(now)) for j in self._jobs.values()]

    def usage_now(self, name: str) -> Usage | None:
        """The watched job `name`'s usage, read now on the loop as `watch` does (None: gone)."""
        job = next((j for j in self._jobs.values() if j.name == name), None)
        if job is not None and job.pid and (got := sample_tree(job.pid))[1]:
            job.meter.sample(trio.current_time(), got[0].since(job.cpu_base))
        return None if job is None else job.meter.usage(trio.current_time())

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
            job.memory_limit = job_memory_limit(job.requested_memory, allowance)
            if job.cgroup is not None and job.cgroup.limits:
                try:
                    job.cgroup.set_limits(job.memory_limit, allowance.cpu_fraction)
                except OSError as e:
                    log.warning("job %d: cannot change its cgroup limits: %s", job.job_id, e)
            else:
                self._set_rlimit(job)
                self._apply_phase(job, now)

    def _set_rlimit(self, job: JobState) -> None:
        limit = rlimit_data_bytes(job.memory_limit)
        for pid in job.pids:
            try:
                psutil.Process(pid).rlimit(psutil.RLIMIT_DATA, (limit, limit))
            except (psutil.Error, OSError, ValueError):
                pass  # raising a hard limit needs CAP_SYS_RESOURCE; the meter still enforces

    def _signal(self, job: JobState, sig: int) -> None:
        """`sig` to the job's process group (a job we started) or process (a watched one), and
        to any descendant outside that group."""
        if not job.alive:
            return
        pid = job.pid
        try:
            if job.proc is None:
                raise ProcessLookupError   # a watched process's group is its parent's
            os.killpg(pid, sig)
        except ProcessLookupError:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        for other in job.pids[1:]:
            try:
                if job.proc is None or os.getpgid(other) != pid:
                    os.kill(other, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _apply_phase(self, job: JobState, now: float) -> None:
        cause = stop_cause(self._suspended, self._phase(job, now))
        if cause is StopCause.NONE and job.stopped:
            self._signal(job, signal.SIGCONT)
            job.stopped = False
        elif cause is not StopCause.NONE and not job.stopped:
            self._signal(job, signal.SIGSTOP)
            job.stopped = True
        job.meter.set_cause(now, cause)

    def _phase(self, job: JobState, now: float) -> Phase:
        if job.cgroup is not None and job.cgroup.limits:  # the kernel throttles with cpu.max
            return DutyCycle(1.0, self._duty.period).phase(now)
        return self._duty.phase(now)

    # ---- running a job -------------------------------------------------------------------

    def _command(self, job: JobState, spec: JobSpec) -> list[str]:
        argv = list(spec.argv)
        if spec.module:
            argv = [sys.executable, "-m", spec.module, *argv]
        cgroup = str(job.cgroup.path) if job.cgroup is not None else None
        limited = job.cgroup is not None and job.cgroup.limits
        rlimit = None if limited else rlimit_data_bytes(job.memory_limit)
        nice = self._nice if spec.nice is None else spec.nice
        return launch_command(self._shell, argv, nice=nice, rlimit_data=rlimit, cgroup=cgroup)

    async def _spawn(self, spec: JobSpec) -> JobState:
        """Start `spec` (its cgroup first, where jobs get one); ExecutorError if the OS refuses."""
        job = self._new_job(spec.name, spec.memory_bytes)
        if self._cgroup is not None and self._cgroup.parent is not None:
            job.cgroup = JobCgroup(self._cgroup.parent, job.job_id, limits=self._cgroup.limits)
            try:
                job.cgroup.create(job.memory_limit, self._allowance.cpu_fraction)
            except OSError as e:
                raise ExecutorError(f"cannot create the job's cgroup {job.cgroup.path}: {e}") from e
        try:
            job.proc = await trio.lowlevel.open_process(
                self._command(job, spec), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True,
                env=dict(spec.env) if spec.env is not None else None)
        except OSError as e:
            await drop_cgroup(job)
            raise ExecutorError(f"cannot start job {spec.name!r}: {e}") from e
        job.pid = job.proc.pid
        try:
            job.guard = self._reaper.guard_group(job.pid, job.cgroup.path if job.cgroup else None)
        except OSError as e:    # nothing would kill it if the daemon died: it does not run
            await self._end(job, None)
            raise ExecutorError(f"cannot start job {spec.name!r}: no reaper ({e})") from e
        return job

    async def _end(self, job: JobState, session: SessionMeter | None) -> None:
        self._jobs.pop(job.job_id, None)
        with trio.CancelScope(shield=True):
            await self._reap(job)
            await drop_cgroup(job)
        self._reaper.release(job.guard)
        self._close(job, session)

    async def run(self, spec: JobSpec) -> JobResult:
        """Run `spec` to its end and return its JobResult. Cancellable (the job is killed and
        reaped first). Raises BadJobError for a bad spec, ExecutorError when the OS refuses to
        start it; everything the job itself does wrong is in the result, not raised."""
        job = await self._spawn(spec)
        session = self._register(job)
        try:
            return await self._supervise(job, spec)
        finally:
            await self._end(job, session)

    async def serve(self, spec: JobSpec, *, grace: float = 5.0,
                    task_status: trio.TaskStatus[JobPipe] = trio.TASK_STATUS_IGNORED) -> JobResult:
        """Run `spec` as a long-lived job that talks over its pipes (the persistent WASM
        runner): `task_status.started(pipe)` hands the caller a `JobPipe` to write its stdin,
        read its stdout (not bounded by `max_output`: the caller reads it as it comes) and
        charge it fuel. Same limits, suspend/resume, duty cycle and meter as `run`. The job
        ends when it exits (or is killed over its memory limit: see `JobPipe.result`), or
        after `pipe.release()`: its stdin is closed and it has `grace` seconds to exit before
        it is killed. Returns its JobResult (stdout empty). Cancellable (killed and reaped)."""
        job = await self._spawn(spec)
        session = self._register(job)
        pipe = JobPipe(job)
        proc = job.proc
        assert proc is not None
        err = bytearray()
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._control, job)
                outer.start_soon(self._release, pipe, proc, grace)
                self._apply_phase(job, trio.current_time())
                task_status.started(pipe)
                async with trio.open_nursery() as io:
                    io.start_soon(self._collect, job, proc.stderr, err, None)
                    await wait_exited(proc.pid, self._poll)
                    last = await last_sample(job)
                    ended = trio.current_time()
                    self._kill_tree(job)    # leftovers: once they are gone stderr reaches EOF
                    io.cancel_scope.deadline = trio.current_time() + REAP_TIMEOUT
                outer.cancel_scope.cancel()
            code = await proc.wait()
            pipe.result = job_result(job, code, b"", bytes(err[-STDERR_TAIL:]),
                                       job.meter.finish(ended, last))
            return pipe.result
        finally:
            pipe.exited.set()
            await self._end(job, session)

    async def _release(self, pipe: JobPipe, proc: trio.Process, grace: float) -> None:
        """When the owner releases the job: close its stdin, kill it after `grace` s."""
        await pipe.released.wait()
        if not pipe.kill_now and proc.stdin is not None:
            with trio.move_on_after(1):
                await proc.stdin.aclose()
            await trio.sleep(grace)
        self._kill_tree(pipe.job)

    async def watch(self, pid: int, *, name: str = "watched", memory_bytes: int | None = None,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> JobResult:
        """Treat a process that someone else started and reaps (the FL task process) as work:
        `suspend`/`resume` and the duty cycle stop and continue it and its descendants, the
        meter counts what it uses from now on, and it is killed over its memory limit (its
        owner restarts it). Returns when it exits (returncode UNKNOWN_EXIT: the status goes to
        its parent). Cancelling the watch releases it: a process stopped by us is continued,
        never left stopped and never killed. ExecutorError if `pid` does not exist. The same
        as `begin_watch` (started once it returns) then `follow`."""
        watch = self.begin_watch(pid, name=name, memory_bytes=memory_bytes)
        task_status.started()
        return await self.follow(watch)

    def begin_watch(self, pid: int, *, name: str = "watched",
                    memory_bytes: int | None = None) -> Watch:
        """The synchronous first half of `watch`: take the first reading (the meter's base),
        check the memory limit and stop the process if work is suspended, all before it
        returns; ExecutorError if `pid` does not exist. The caller must hand the Watch to
        `follow` (in a task it starts at once, `start_soon`), which keeps and ends it."""
        job = self._new_job(name, memory_bytes)
        try:
            # On the loop, not in a worker thread: FL takes it before each training. The
            # reading is ~0.3 ms, but a thread hop (psutil retakes the GIL between syscalls, 5 ms
            # each) cost a training a median of 26 ms at load 12 (traced by fl2, stop 24).
            first, pids = sample_tree(pid)
            pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else -1
        except OSError as e:
            raise ExecutorError(f"cannot watch process {pid}: {e}") from e
        if not pids:
            if pidfd >= 0:
                os.close(pidfd)
            raise ExecutorError(f"cannot watch process {pid}: it does not exist")
        job.pid, job.pids, job.cpu_base = pid, pids, first.cpu_s
        watch = Watch(job, pidfd, self._register(job))
        try:
            now = trio.current_time()
            job.meter.sample(now, first.since(first.cpu_s))
            self._check_memory(job, first)
            self._apply_phase(job, now)
        except BaseException:
            self._end_watch(watch)
            raise
        return watch

    async def follow(self, watch: Watch) -> JobResult:
        """The second half of `watch`: poll and limit the process (its next reading one poll
        interval after `begin_watch`'s) until it exits, then return its JobResult; cancelling
        releases it (continued if stopped). Ends the Watch however it returns."""
        job = watch.job
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._control, job, trio.current_time() + self._poll)
                if watch.pidfd >= 0:
                    await trio.lowlevel.wait_readable(watch.pidfd)
                else:
                    while psutil.pid_exists(job.pid) and psutil.Process(job.pid).status() != \
                            psutil.STATUS_ZOMBIE:
                        await trio.sleep(self._poll)
                last, _ = await trio.to_thread.run_sync(sample_tree, job.pid)
                ended = trio.current_time()
                nursery.cancel_scope.cancel()
            job.pid = 0   # gone: never signal that pid again (it may be reused)
            usage = job.meter.finish(ended, last.since(job.cpu_base))
            end = job.kill_end or JobEnd.EXITED
            return JobResult(job.job_id, end, UNKNOWN_EXIT, job.kill_reason or "exited", b"",
                             b"", usage)
        finally:
            self._end_watch(watch)

    def _end_watch(self, watch: Watch) -> None:
        job = watch.job
        self._jobs.pop(job.job_id, None)
        if watch.pidfd >= 0:
            os.close(watch.pidfd)
        if job.stopped and job.pid:
            self._signal(job, signal.SIGCONT)   # released as we found it: running
        self._close(job, watch.session)

    def _new_job(self, name: str, memory_bytes: int | None) -> JobState:
        job_id = next(self._ids)
        return JobState(job_id, name, memory_bytes, job_memory_limit(memory_bytes, self._allowance),
                        JobMeter(trio.current_time()))

    def _register(self, job: JobState) -> SessionMeter | None:
        job.pids = job.pids or [job.pid]
        self._jobs[job.job_id] = job
        if self._session is not None:
            self._session.attach(job.job_id, job.meter)
        return self._session

    def _close(self, job: JobState, session: SessionMeter | None) -> None:
        if not job.meter.finished:   # cancelled: its work counts too, up to the end
            job.meter.finish(trio.current_time())
        if session is not None:
            session.close(job.job_id, job.meter.usage(trio.current_time()))

    async def _supervise(self, job: JobState, spec: JobSpec) -> JobResult:
        assert job.proc is not None
        proc = job.proc
        out = bytearray()
        err = bytearray()
        self._apply_phase(job, trio.current_time())  # a job started while suspended stops now
        async with trio.open_nursery() as outer:
            outer.start_soon(self._control, job)
            async with trio.open_nursery() as io:
                io.start_soon(feed, proc, spec.input)
                io.start_soon(self._collect, job, proc.stdout, out, spec.max_output)
                io.start_soon(self._collect, job, proc.stderr, err, None)
                await wait_exited(proc.pid, self._poll)        # the root exited, not reaped yet
                last = await last_sample(job)
                ended = trio.current_time()
                self._kill_tree(job)   # leftovers: once they are gone the pipes reach EOF
                io.cancel_scope.deadline = trio.current_time() + REAP_TIMEOUT
            outer.cancel_scope.cancel()
        code = await proc.wait()
        usage = job.meter.finish(ended, last)
        return job_result(job, code, bytes(out), bytes(err[-STDERR_TAIL:]), usage)

    async def _collect(self, job: JobState, stream: trio.abc.ReceiveStream | None, buf: bytearray,
                       limit: int | None) -> None:
        if await collect(stream, buf, limit):
            self._kill(job, JobEnd.OUTPUT_LIMIT, f"wrote more than its output limit of {limit} bytes")

    async def _control(self, job: JobState, next_poll: float = -math.inf) -> None:
        """Poll the tree (meter, memory) from `next_poll` on (at once by default), run the duty
        cycle; until cancelled."""
        while True:
            now = trio.current_time()
            if now >= next_poll:
                sample, pids = await trio.to_thread.run_sync(sample_tree, job.pid)
                now = trio.current_time()
                next_poll = now + self._poll
                if pids:
                    job.pids = pids
                    job.meter.sample(now, sample.since(job.cpu_base))
                    self._check_memory(job, sample)
            self._apply_phase(job, now)
            until = self._phase(job, now).until
            await trio.sleep_until(min(next_poll, until if math.isfinite(until) else next_poll))

    def _check_memory(self, job: JobState, sample: Sample) -> None:
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

    def _kill(self, job: JobState, end: JobEnd, reason: str) -> None:
        if job.kill_end is None:
            job.kill_end, job.kill_reason = end, reason
            log.info("harvest job %d (%s) killed: %s", job.job_id, job.name, reason)
        self._kill_tree(job)

    def _kill_tree(self, job: JobState) -> None:
        if job.cgroup is not None:
            job.cgroup.kill()
        self._signal(job, signal.SIGKILL)
        if job.proc is not None:  # the root may be a zombie already: its group still counts
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    async def _reap(self, job: JobState) -> None:
        if job.proc is not None and job.proc.returncode is None:
            self._kill_tree(job)
            with trio.move_on_after(REAP_TIMEOUT):
                await job.proc.wait()
