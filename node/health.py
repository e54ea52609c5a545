"""What a role says about its own health, beyond "running or crashed".

A role that can tell more than the supervisor sees (a ledger that cannot reach a quorum, an FL
role whose task process keeps dying) overrides `Role.health_report()` and returns a
`HealthReport`: HEALTHY, DEGRADED (working, but an operator should look) or UNHEALTHY (not doing
its job), with a one-line reason. It must be cheap and synchronous (the monitor calls it every
sample interval). Nothing here imports a role; the monitor reads reports through the supervisor.
`RecentCount` counts occurrences in a sliding window (e.g. "restarted 3 times in 5 minutes").
"""
from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass


class Status(enum.Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @staticmethod
    def worst(items: "list[Status]") -> "Status":
        return max(items, key=lambda s: s.rank, default=Status.HEALTHY)


_RANK = {Status.HEALTHY: 0, Status.DEGRADED: 1, Status.UNHEALTHY: 2}


@dataclass(frozen=True)
class HealthReport:
    status: Status
    reason: str = ""            # one sentence for the operator; empty when healthy

    @staticmethod
    def healthy() -> "HealthReport":
        """The healthy report (one shared instance: it is immutable, and node.info asks every
        role for its report on each call)."""
        return _HEALTHY


_HEALTHY = HealthReport(Status.HEALTHY)


class RecentCount:
    """How many times something happened in the last `window` seconds (time passed in; keeps
    at most `cap` times, so counts saturate at `cap`)."""

    def __init__(self, window: float, cap: int = 64) -> None:
        self.window = window
        self._times: deque[float] = deque(maxlen=cap)

    def add(self, now: float) -> None:
        self._times.append(now)

    def count(self, now: float) -> int:
        return sum(1 for t in self._times if now - t < self.window)
