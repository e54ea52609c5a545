"""Metering of harvested work, sans-IO: per-job meters, per-session totals, the `Usage` record.

A `JobMeter` is fed samples of the job's process tree (CPU seconds as the OS counts them,
resident memory, peak resident memory) and its stop/run transitions, each with the time it was
taken; it integrates:
- `cpu_s`: CPU seconds (user + system) of the job's processes, including every descendant the
  job reaped (the kernel's cumulative children times); the last sample is taken from the
  exited-but-unreaped root, so nothing between the last poll and the exit is lost;
- `peak_rss_bytes`: the highest resident memory seen (the sum over the tree at a poll, or the
  kernel's high-water mark of the root, whichever is higher);
- `mem_byte_s`: resident memory integrated over wall time (rectangles between samples, the
  memory held while stopped included: it is not free for the owner); `mem_mb_hours` is the
  same in MB-hours (MB = 10^6 bytes);
- `wall_s`, `suspended_s` (stopped because the policy suspended work), `throttled_s` (stopped
  by the duty cycle); `fuel`: WASM fuel consumed (0 for other work, set by the WASM runner).

`Usage` is frozen and has a canonical msgpack encoding (`to_wire` / `Usage.from_wire`, a
validating decoder naming the bad field) so the role can persist it in its data dir.
`SessionMeter` adds up the usage of a harvest session's finished jobs plus its live ones.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fognode.node.wire import Fields, pack, unpack
from fognode.protocols.harvest.limits import StopCause

MB = 1_000_000
USAGE_VERSION = 1
MAX_U64 = 2**64 - 1


@dataclass(frozen=True)
class Usage:
    """Resources one job (or a session's jobs together) used. Times in seconds."""

    cpu_s: float = 0.0
    wall_s: float = 0.0
    suspended_s: float = 0.0
    throttled_s: float = 0.0
    peak_rss_bytes: int = 0
    mem_byte_s: float = 0.0
    fuel: int = 0
    jobs: int = 1

    @property
    def mem_mb_hours(self) -> float:
        """Integrated resident memory in MB-hours (MB = 10^6 bytes)."""
        return self.mem_byte_s / MB / 3600.0

    def __add__(self, other: Usage) -> Usage:
        """Totals of two usages; the peak is the higher peak (jobs may not overlap)."""
        return Usage(cpu_s=self.cpu_s + other.cpu_s, wall_s=self.wall_s + other.wall_s,
                     suspended_s=self.suspended_s + other.suspended_s,
                     throttled_s=self.throttled_s + other.throttled_s,
                     peak_rss_bytes=max(self.peak_rss_bytes, other.peak_rss_bytes),
                     mem_byte_s=self.mem_byte_s + other.mem_byte_s, fuel=self.fuel + other.fuel,
                     jobs=self.jobs + other.jobs)

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain map (also what RPC shows), with the version."""
        return {"v": USAGE_VERSION, "cpu_s": self.cpu_s, "wall_s": self.wall_s,
                "suspended_s": self.suspended_s, "throttled_s": self.throttled_s,
                "peak_rss_bytes": self.peak_rss_bytes, "mem_byte_s": self.mem_byte_s,
                "fuel": self.fuel, "jobs": self.jobs}

    def to_wire(self) -> bytes:
        """Canonical msgpack bytes of the record."""
        return pack(self.to_dict())

    @classmethod
    def from_dict(cls, raw: Any, what: str = "harvest.Usage") -> Usage:
        """Validating decoder; RemoteProtocolError naming the field on anything wrong."""
        f = Fields(raw, what, versions={USAGE_VERSION})
        usage = cls(cpu_s=f.float("cpu_s", lo=0.0), wall_s=f.float("wall_s", lo=0.0),
                    suspended_s=f.float("suspended_s", lo=0.0),
                    throttled_s=f.float("throttled_s", lo=0.0),
                    peak_rss_bytes=f.int("peak_rss_bytes", lo=0, hi=MAX_U64),
                    mem_byte_s=f.float("mem_byte_s", lo=0.0), fuel=f.int("fuel", lo=0, hi=MAX_U64),
                    jobs=f.int("jobs", lo=0, hi=MAX_U64))
        f.done()
        return usage

    @classmethod
    def from_wire(cls, data: bytes) -> Usage:
        """Decode bytes written by `to_wire` (persisted or received); RemoteProtocolError."""
        return cls.from_dict(unpack(data, max_size=4096, what="harvest.Usage"))


@dataclass(frozen=True)
class Sample:
    """One reading of a job's process tree: cumulative CPU seconds, RSS now, the root's peak."""

    cpu_s: float
    rss_bytes: int
    hwm_bytes: int = 0

    def since(self, cpu_base: float) -> Sample:
        """This reading counting only the CPU seconds after `cpu_base` (a watched process
        counts only what it used since we began watching it)."""
        return Sample(max(0.0, self.cpu_s - cpu_base), self.rss_bytes, self.hwm_bytes)


class JobMeter:
    """Integrates one job's samples and stop/run transitions into a `Usage` (time passed in)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self._last_t = started
        self._rss = 0
        self._cpu = 0.0
        self._peak = 0
        self._mem = 0.0
        self._cause = StopCause.NONE
        self._cause_since = started
        self._stopped = {StopCause.SUSPENDED: 0.0, StopCause.THROTTLED: 0.0}
        self._fuel = 0
        self._ended: float | None = None

    @property
    def rss_bytes(self) -> int:
        """Resident memory at the last sample."""
        return self._rss

    @property
    def finished(self) -> bool:
        """`finish` was called: the usage no longer changes."""
        return self._ended is not None

    @property
    def cause(self) -> StopCause:
        """Why the job is stopped now (NONE while it runs)."""
        return self._cause

    def _advance(self, now: float) -> None:
        if now > self._last_t:
            self._mem += self._rss * (now - self._last_t)
            self._last_t = now

    def sample(self, now: float, s: Sample) -> None:
        """Take a reading at `now`: CPU is cumulative (never goes back), RSS holds till the next."""
        self._advance(now)
        self._cpu = max(self._cpu, s.cpu_s)
        self._rss = s.rss_bytes
        self._peak = max(self._peak, s.rss_bytes, s.hwm_bytes)

    def set_cause(self, now: float, cause: StopCause) -> None:
        """The job is stopped for `cause` (or runs, NONE) from `now` on."""
        if cause is self._cause:
            return
        if self._cause is not StopCause.NONE:
            self._stopped[self._cause] += max(0.0, now - self._cause_since)
        self._cause = cause
        self._cause_since = now

    def add_fuel(self, fuel: int) -> None:
        """Charge WASM fuel the job consumed (reported by the runner)."""
        self._fuel += fuel

    def finish(self, now: float, last: Sample | None = None) -> Usage:
        """The job ended at `now` (with a last reading if one was taken); its final Usage."""
        if last is not None:
            self.sample(now, last)
        self._advance(now)
        self.set_cause(now, StopCause.NONE)
        self._rss = 0
        self._ended = now
        return self.usage(now)

    def usage(self, now: float) -> Usage:
        """The usage so far (live) or in total (after `finish`)."""
        end = self._ended if self._ended is not None else now
        stopped = dict(self._stopped)
        mem = self._mem
        if self._ended is None:
            if self._cause is not StopCause.NONE:
                stopped[self._cause] += max(0.0, end - self._cause_since)
            mem += self._rss * max(0.0, end - self._last_t)
        return Usage(cpu_s=self._cpu, wall_s=max(0.0, end - self.started),
                     suspended_s=stopped[StopCause.SUSPENDED],
                     throttled_s=stopped[StopCause.THROTTLED], peak_rss_bytes=self._peak,
                     mem_byte_s=mem, fuel=self._fuel, jobs=1)


class SessionMeter:
    """A harvest session's totals: finished jobs' usage plus the live usage of running ones."""

    def __init__(self, started: float, carried: Usage | None = None) -> None:
        self.started = started
        self._done = carried if carried is not None else Usage(jobs=0)
        self._live: dict[int, JobMeter] = {}

    def attach(self, job_id: int, meter: JobMeter) -> None:
        """Count a running job's meter in this session's totals."""
        self._live[job_id] = meter

    def close(self, job_id: int, usage: Usage) -> None:
        """A job ended with `usage`: move it from live to done."""
        self._live.pop(job_id, None)
        self._done = self._done + usage

    def totals(self, now: float) -> Usage:
        """Everything so far; `wall_s` is the sum of the jobs' wall times, not the session's."""
        total = self._done
        for meter in self._live.values():
            total = total + meter.usage(now)
        return total

    def snapshot(self, now: float) -> Usage:
        """The totals with a peak over the live jobs together (they run side by side)."""
        total = self.totals(now)
        live_rss = sum(m.rss_bytes for m in self._live.values())
        return replace(total, peak_rss_bytes=max(total.peak_rss_bytes, live_rss))
