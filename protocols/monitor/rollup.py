"""Health roll-up (sans-IO): the node's own health, each role's, the worst of them, the changes.

The node's own report comes from figures the monitor samples: no connected peer is DEGRADED
("no peers: this node cannot reach the network"), a p99 event-loop lag over the configured
bound is DEGRADED, over 5 times that bound UNHEALTHY. Roles report through
`Role.health_report()` (node/health.py), read via the supervisor's `role_health()` (a
crashed role is UNHEALTHY with the supervisor's reason).

`HealthBook.update(reports)` returns the changes since the previous update, which the role
publishes as `HealthStatusChanged`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from fognode.node.health import HealthReport, Status

NODE = "node"


def node_report(peers: int | None, loop_lag_p99: float | None, lag_bound: float) -> HealthReport:
    if loop_lag_p99 is not None and loop_lag_p99 > 5 * lag_bound:
        return HealthReport(Status.UNHEALTHY, f"the event loop lags {loop_lag_p99:.2f} s (p99): peers see "
                                              "this node stall")
    if loop_lag_p99 is not None and loop_lag_p99 > lag_bound:
        return HealthReport(Status.DEGRADED, f"the event loop lags {loop_lag_p99:.2f} s (p99, bound "
                                             f"{lag_bound:g} s)")
    if peers is not None and peers < 1:
        return HealthReport(Status.DEGRADED, "no peers: this node cannot reach the network")
    return HealthReport.healthy()


def role_reports(role_health: Mapping[str, Mapping[str, Any]]) -> dict[str, HealthReport]:
    """Reports from the supervisor's `role_health()` rows ("status"/"reason", node/roles.py)."""
    out = {}
    for name, row in role_health.items():
        try:
            st = Status(row.get("status", "healthy"))
        except ValueError:
            st = Status.DEGRADED
        if row.get("health") in ("unhealthy", "stopped"):
            st = Status.UNHEALTHY
        out[name] = HealthReport(st, str(row.get("reason") or row.get("detail") or ""))
    return out


@dataclass(frozen=True)
class Change:
    role: str
    status: Status
    previous: Status
    reason: str
    overall: Status


class HealthBook:
    def __init__(self) -> None:
        self.current: dict[str, HealthReport] = {}

    def overall(self) -> Status:
        return Status.worst([r.status for r in self.current.values()])

    def reasons(self) -> list[str]:
        return [f"{name}: {r.reason}" for name, r in sorted(self.current.items())
                if r.status is not Status.HEALTHY and r.reason]

    def update(self, reports: Mapping[str, HealthReport]) -> list[Change]:
        before = dict(self.current)
        self.current = dict(reports)
        overall = self.overall()
        changes = []
        for name, r in sorted(reports.items()):
            prev = before.get(name)
            if prev is None:
                if r.status is Status.HEALTHY:
                    continue
                prev = HealthReport.healthy()
            if prev.status is not r.status:
                changes.append(Change(name, r.status, prev.status, r.reason, overall))
        return changes
