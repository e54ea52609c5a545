"""The executor's job records: what to run (`JobSpec`), how it ended (`JobEnd`, `JobResult`),
what `harvest.status` shows of a running job (`JobStatus`), and the executor's own mutable
record of one (`JobState`), and a watched process's handle (`Watch`). Plain data; the executor (executor.py) fills them in.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping

import trio

from fognode.protocols.harvest.cgroup import JobCgroup
from fognode.protocols.harvest.exec_errors import BadJobError
from fognode.protocols.harvest.limits import StopCause
from fognode.protocols.harvest.meter import JobMeter, SessionMeter, Usage

DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024
UNKNOWN_EXIT = -1   # the exit status of a watched process goes to its parent, not to us


class JobEnd(enum.Enum):
    """How a job ended."""

    EXITED = "exited"                # it exited on its own (see returncode; UNKNOWN_EXIT if watched)
    MEMORY = "memory"                # killed (or its allocation refused) at its memory limit
    OUTPUT_LIMIT = "output_limit"    # it wrote more than max_output bytes to stdout
    SIGNALED = "signaled"            # killed by a signal the executor did not send
    LAUNCH_FAILED = "launch_failed"  # the limits could not be applied or the command not run


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
    nice: int | None = None          # added to the daemon's nice; None: the executor's default

    def __post_init__(self) -> None:
        if not self.argv and not self.module:
            raise BadJobError("a job needs a command or a module", field="argv")
        if not all(isinstance(a, str) for a in self.argv):
            raise BadJobError("every argument must be a string", field="argv")
        if self.module is not None and not self.module.startswith("fognode."):
            raise BadJobError(f"only fognode modules run in-process, not {self.module!r}",
                              field="module")
        if self.nice is not None and (isinstance(self.nice, bool) or not isinstance(self.nice, int)
                                      or not -20 <= self.nice <= 19):
            raise BadJobError(f"must be an integer in -20..19, got {self.nice!r}", field="nice")
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
class JobState:
    """The executor's record of one running job: started by it (`proc` set, its own process
    group) or watched (a process someone else started and reaps: `proc` None)."""

    job_id: int
    name: str
    requested_memory: int | None
    memory_limit: int
    meter: JobMeter
    pid: int = 0
    proc: trio.Process | None = None
    cgroup: JobCgroup | None = None
    cpu_base: float = 0.0           # CPU seconds the process had used before we watched it
    stopped: bool = False
    pids: list[int] = field(default_factory=list)
    kill_end: JobEnd | None = None
    kill_reason: str = ""
    guard: int | None = None        # its entry in the reaper (node/reaper.py), while it may run

    @property
    def alive(self) -> bool:
        """Not known to have exited and been reaped."""
        return self.pid > 0 and (self.proc is None or self.proc.returncode is None)


@dataclass(frozen=True)
class Watch:
    """A watched process between `Executor.begin_watch` and the end of `Executor.follow`: its
    record, its pidfd (-1 without pidfd support) and the session meter it counts into."""

    job: JobState
    pidfd: int
    session: SessionMeter | None


class JobPipe:
    """The owner's side of a long-lived job (`Executor.serve`): write its stdin, read its
    stdout, charge it the fuel it reports, release it; `exited` is set when it is gone and
    `result` says how it ended."""

    def __init__(self, job: JobState) -> None:
        self.job = job
        self.released = trio.Event()
        self.exited = trio.Event()
        self.result: JobResult | None = None
        self.kill_now = False

    @property
    def job_id(self) -> int:
        return self.job.job_id

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def memory_limit(self) -> int:
        return self.job.memory_limit

    async def send_all(self, data: bytes) -> None:
        """Write to the job's stdin; trio.BrokenResourceError / ClosedResourceError once it
        is gone."""
        assert self.job.proc is not None and self.job.proc.stdin is not None
        await self.job.proc.stdin.send_all(data)

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        """Read from the job's stdout (b"" at its end)."""
        assert self.job.proc is not None and self.job.proc.stdout is not None
        try:
            return await self.job.proc.stdout.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    def add_fuel(self, fuel: int) -> None:
        """Charge WASM fuel the job reported to its meter (and so to its harvest session)."""
        self.job.meter.add_fuel(fuel)

    def release(self, *, kill: bool = False) -> None:
        """The owner is done: close stdin, let it exit (killed after the grace period, or at
        once with `kill`)."""
        self.kill_now = self.kill_now or kill
        self.released.set()
