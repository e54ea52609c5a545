"""Adopted workers: processes another role owns that do harvest work (today FL's task process,
protocols/fl/training/process.py), which the harvest role stops, continues and meters.

The FL role keeps its one task process (it holds loaded tasks between rounds); while it trains,
it lends the process to a harvest session (`HarvestService.adopt`). Then:
- while the policy suspends work, the process gets SIGSTOP (its training pauses where it is;
  the FL role's request simply waits for the answer) and SIGCONT when work may run again, or
  when it is handed back (so a worker is never left stopped by a role that no longer watches
  it). A process that (re)starts while work is suspended is stopped at the next tick
  (`enforce`). SIGSTOP only reaches that process, not threads of another; torch's threads are
  its own, so the whole training stops.
- its CPU seconds (the process and the children it reaped, relative to when it was adopted;
  a restarted process is counted from zero and added) and resident memory are sampled every
  harvest tick and when it is handed back, integrated by the executor's `JobMeter`
  (meter.py) into the session's usage.

Synchronous and clock-free (time comes in as `now`); the trio adapter reads /proc in a worker
thread (procstat.sample_tree) and hands the samples in.
"""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Callable

from fognode.protocols.harvest.limits import StopCause
from fognode.protocols.harvest.meter import JobMeter, Sample, Usage

log = logging.getLogger("fognode.harvest")

PidOf = Callable[[], "int | None"]


@dataclass
class Adopted:
    handle: int
    session_id: bytes
    name: str
    pid_of: PidOf
    meter: JobMeter
    pid: int | None = None          # the process the last sample was of
    base_cpu: float = 0.0           # its CPU seconds when first sampled
    carried_cpu: float = 0.0        # CPU seconds of earlier processes (a restarted worker)
    last_rel: float = 0.0
    stopped: set[int] = field(default_factory=set)   # pids this module stopped


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class AdoptedWorkers:
    """The adopted workers of one harvest role (see the module docstring)."""

    def __init__(self) -> None:
        self._workers: dict[int, Adopted] = {}
        self._next = 1
        self.suspended = False

    def __len__(self) -> int:
        return len(self._workers)

    def adopt(self, session_id: bytes, name: str, pid_of: PidOf, now: float) -> Adopted:
        """Count `pid_of()`'s process in harvest session `session_id` from `now`; stop it at
        once if work is suspended."""
        a = Adopted(self._next, session_id, name, pid_of, JobMeter(now))
        self._next += 1
        self._workers[a.handle] = a
        self.enforce(now)
        return a

    def get(self, handle: int) -> Adopted | None:
        return self._workers.get(handle)

    def all(self) -> list[Adopted]:
        return list(self._workers.values())

    def live_pids(self) -> list[tuple[int, int]]:
        """(handle, pid) of every adopted worker whose process runs now."""
        out = []
        for a in self._workers.values():
            pid = a.pid_of()
            if pid is not None:
                out.append((a.handle, pid))
        return out

    def record(self, handle: int, pid: int, s: Sample, now: float) -> None:
        """A reading of the worker's process `pid` at `now` (procstat.sample_tree)."""
        a = self._workers.get(handle)
        if a is None:
            return
        if pid != a.pid:
            a.carried_cpu = a.last_rel
            a.pid, a.base_cpu = pid, s.cpu_s
        a.last_rel = a.carried_cpu + max(0.0, s.cpu_s - a.base_cpu)
        a.meter.sample(now, Sample(a.last_rel, s.rss_bytes, 0))

    def release(self, handle: int, now: float) -> tuple[bytes, Usage] | None:
        """Hand the worker back: continue it if this module stopped it; its session id and
        final usage (None if unknown)."""
        a = self._workers.pop(handle, None)
        if a is None:
            return None
        for pid in a.stopped:
            _signal(pid, signal.SIGCONT)
        return a.session_id, a.meter.finish(now)

    def suspend(self, now: float) -> None:
        """Stop every adopted worker now (SIGSTOP)."""
        self.suspended = True
        self.enforce(now)

    def resume(self, now: float) -> None:
        """Continue every worker this module stopped (SIGCONT)."""
        self.suspended = False
        for a in self._workers.values():
            for pid in a.stopped:
                _signal(pid, signal.SIGCONT)
            a.stopped.clear()
            a.meter.set_cause(now, StopCause.NONE)

    def enforce(self, now: float) -> None:
        """While suspended, stop any adopted process not stopped yet (a new or restarted one)."""
        if not self.suspended:
            return
        for a in self._workers.values():
            pid = a.pid_of()
            if pid is not None and pid not in a.stopped:
                if _signal(pid, signal.SIGSTOP):
                    a.stopped.add(pid)
                    log.info("harvest: %s (pid %d) stopped while work is suspended", a.name, pid)
            a.meter.set_cause(now, StopCause.SUSPENDED)

    def release_all(self, now: float) -> list[tuple[bytes, Usage]]:
        """Hand every worker back (the role stops)."""
        return [r for h in list(self._workers) if (r := self.release(h, now)) is not None]
