"""The monitor's events on the node's event bus."""
from __future__ import annotations

from dataclasses import dataclass

from fognode.node.events import Event


@dataclass(frozen=True)
class HealthStatusChanged(Event):
    """A role's (or the node's own, role "node") health changed; `overall` is the roll-up."""

    role: str
    status: str          # healthy | degraded | unhealthy
    previous: str
    reason: str
    overall: str


@dataclass(frozen=True)
class AnomalyDetected(Event):
    metric: str
    detector: str        # robust_z | seasonal_ewma
    score: float
    value: float
    expected: float
    sentence: str


@dataclass(frozen=True)
class AlertFired(Event):
    rule: str
    metric: str
    severity: str
    condition: str
    value: float


@dataclass(frozen=True)
class AlertResolved(Event):
    rule: str
    metric: str
    value: float


@dataclass(frozen=True)
class AlertHookRan(Event):
    rule: str
    state: str           # the alert's state the hook was run for: firing | resolved
    outcome: str         # "exit 0", "exit 3", "killed after 10 s", "not started: ..."
