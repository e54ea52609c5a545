"""The executor's limit policy, sans-IO: which mechanism limits a job, and the CPU duty cycle.

- `Allowance` is what the harvest policy grants all work on this node right now: a CPU fraction
  (the share of wall-clock time a job may run, BOINC's "use at most X % of CPU time") and a
  memory budget in bytes. `Executor.set_allowance` applies a new one to running jobs live.
- `Mechanism`: CGROUP_V2 when the node may create a child cgroup with the memory and cpu
  controllers (the kernel enforces `memory.max` with its OOM killer and `cpu.max` with its
  scheduler); otherwise RLIMIT: RLIMIT_DATA set in the child before it runs the work (an
  allocation past it fails), the meter's polling of the process tree's RSS (kills a job over its
  limit with the reason), and the duty-cycle throttle below for the CPU fraction.
- `DutyCycle` is BOINC's CPU-time limit: within every `period` seconds, work runs for
  `fraction * period` and is stopped (SIGSTOP) for the rest. The phase is taken from the clock
  (not from each job's start) so every job on the node stops and runs together and the owner
  gets whole quiet stretches; a fraction of 1 never stops anything.
- `rlimit_data_bytes` is the RLIMIT_DATA for a memory limit: above it by a margin, so the meter
  (which can say exactly why) normally kills first and the rlimit is the backstop against an
  allocation burst between two polls.

Nothing here imports trio or touches the OS; time is passed in.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from fognode.protocols.harvest.exec_errors import BadJobError

MIN_MEMORY = 16 * 1024 * 1024          # a smaller memory limit cannot even start Python
RLIMIT_MARGIN = 0.25                   # RLIMIT_DATA = limit * (1 + margin) + slack
RLIMIT_SLACK = 32 * 1024 * 1024
CGROUP_CPU_PERIOD_US = 100_000         # cpu.max period (the kernel's default)
MIN_DUTY_PERIOD = 0.05                 # shorter stop/run phases cost more in signals than they save


class Mechanism(enum.Enum):
    """How a job's memory and CPU are limited."""

    CGROUP_V2 = "cgroup_v2"
    RLIMIT = "rlimit"


@dataclass(frozen=True)
class Allowance:
    """What the policy grants running work: `cpu_fraction` in (0, 1] of wall time and
    `memory_bytes` of resident memory (for all jobs together). BadJobError names a bad field."""

    cpu_fraction: float = 1.0
    memory_bytes: int = 1024 * 1024 * 1024

    def __post_init__(self) -> None:
        if isinstance(self.cpu_fraction, bool) or not isinstance(self.cpu_fraction, (int, float)):
            raise BadJobError(f"must be a number, got {type(self.cpu_fraction).__name__}",
                              field="cpu_fraction")
        if not math.isfinite(self.cpu_fraction) or not 0.0 < self.cpu_fraction <= 1.0:
            raise BadJobError(f"must be in (0, 1], got {self.cpu_fraction}", field="cpu_fraction")
        if isinstance(self.memory_bytes, bool) or not isinstance(self.memory_bytes, int):
            raise BadJobError(f"must be an integer, got {type(self.memory_bytes).__name__}",
                              field="memory_bytes")
        if self.memory_bytes < MIN_MEMORY:
            raise BadJobError(f"must be at least {MIN_MEMORY} bytes, got {self.memory_bytes}",
                              field="memory_bytes")


def choose_mechanism(cgroup_available: bool) -> Mechanism:
    """CGROUP_V2 when a delegated cgroup with memory+cpu is usable, else RLIMIT."""
    return Mechanism.CGROUP_V2 if cgroup_available else Mechanism.RLIMIT


def job_memory_limit(requested: int | None, allowance: Allowance) -> int:
    """A job's memory limit: what it asked for, never more than the whole allowance."""
    if requested is None:
        return allowance.memory_bytes
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < MIN_MEMORY:
        raise BadJobError(f"must be an integer of at least {MIN_MEMORY} bytes, got {requested!r}",
                          field="memory_bytes")
    return min(requested, allowance.memory_bytes)


def rlimit_data_bytes(memory_limit: int) -> int:
    """RLIMIT_DATA for a job whose meter limit is `memory_limit` (a backstop above it)."""
    return int(memory_limit * (1 + RLIMIT_MARGIN)) + RLIMIT_SLACK


def cgroup_cpu_max(cpu_fraction: float, ncpus: int) -> str:
    """The `cpu.max` line for a fraction: quota over the default period, scaled to the CPUs,
    so a job with k threads gets at most fraction * k CPUs (the duty cycle's bound too)."""
    if cpu_fraction >= 1.0:
        return f"max {CGROUP_CPU_PERIOD_US}"
    quota = max(1000, int(cpu_fraction * CGROUP_CPU_PERIOD_US * max(1, ncpus)))
    return f"{quota} {CGROUP_CPU_PERIOD_US}"


@dataclass(frozen=True)
class Phase:
    """The throttle's verdict at one instant: run or stop, and until when."""

    run: bool
    until: float


@dataclass(frozen=True)
class DutyCycle:
    """BOINC's CPU-time limit: run `fraction * period`, stop for the rest, phase from the clock."""

    fraction: float
    period: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise BadJobError(f"must be in (0, 1], got {self.fraction}", field="cpu_fraction")
        if not self.period >= MIN_DUTY_PERIOD:
            raise BadJobError(f"must be at least {MIN_DUTY_PERIOD} s, got {self.period}",
                              field="duty_period")

    @property
    def throttles(self) -> bool:
        """False at a fraction of 1: the job is never stopped."""
        return self.fraction < 1.0

    def phase(self, now: float) -> Phase:
        """Whether work runs at `now`, and the clock time the verdict changes."""
        if not self.throttles:
            return Phase(True, math.inf)
        k = math.floor(now / self.period)
        if (k + 1) * self.period <= now:     # rounding put `now` on the previous period's end
            k += 1
        elif k * self.period > now:
            k -= 1
        start = k * self.period
        on_until = start + self.fraction * self.period
        if now < on_until:
            return Phase(True, on_until)
        return Phase(False, (k + 1) * self.period)


class StopCause(enum.Enum):
    """Why a job is stopped; the meter charges the time to one of them."""

    NONE = "none"              # running
    SUSPENDED = "suspended"    # the policy (or the operator) suspended all work
    THROTTLED = "throttled"    # the duty cycle's stop phase


def stop_cause(suspended: bool, phase: Phase) -> StopCause:
    """Suspension wins over the throttle: a suspended job stays stopped through its run phase."""
    if suspended:
        return StopCause.SUSPENDED
    if not phase.run:
        return StopCause.THROTTLED
    return StopCause.NONE


def over_memory(rss_bytes: int, limit: int) -> bool:
    """The meter's verdict: a process tree's resident memory over its limit."""
    return rss_bytes > limit


def allocation_failure(stderr_tail: bytes) -> bool:
    """True when a dead job's last words are an allocation refused by the OS (RLIMIT_DATA):
    Python's MemoryError, C's ENOMEM message, a C++ bad_alloc, Rust's allocation failure."""
    markers = (b"MemoryError", b"Cannot allocate memory", b"std::bad_alloc",
               b"memory allocation of", b"out of memory")
    return any(m in stderr_tail for m in markers)
