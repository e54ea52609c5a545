"""The monitor's sans-IO core: one `tick` per sample interval.

`MonitorCore.tick(families, role_health, now, dt)` is handed the node's registry snapshot
(`registry.collect()`), the supervisor's role rows and the time; it samples the series
(sampled.py), records them (series.py rings, handed in as `series_of`), runs the detectors and
the alert rules, rolls up health, and returns the actions for protocol.py to carry out:
`Emit(event)` (publish on the bus) and `RunHook(alert)` (the operator's hook). No trio, no
clock, no files of its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from fognode.node.events import Event
from fognode.node.health import Status
from fognode.protocols.monitor.alerts import Alert, AlertEngine, AlertRule
from fognode.protocols.monitor.detectors import Anomaly, Detectors
from fognode.protocols.monitor.events import AlertFired, AlertResolved, AnomalyDetected, HealthStatusChanged
from fognode.protocols.monitor.rollup import NODE, HealthBook, node_report, role_reports
from fognode.protocols.monitor.sampled import SAMPLED, Sampled, Sampler
from fognode.protocols.monitor.series import SeriesSet


@dataclass(frozen=True)
class Emit:
    event: Event


@dataclass(frozen=True)
class RunHook:
    alert: Alert


Action = Emit | RunHook


class MonitorCore:
    def __init__(self, *, series_of: Callable[[str], SeriesSet] | None, rules: list[AlertRule],
                 detectors: bool, anomaly_cooldown: float, lag_bound: float, hook: bool,
                 table: Iterable[Sampled] = SAMPLED) -> None:
        self.table = tuple(table)
        self.sampler = Sampler(self.table)
        self.series_of = series_of
        self.detectors = Detectors({s.name for s in self.table if s.seasonal}, {s.name: s.floor for s in self.table},
                                   cooldown=anomaly_cooldown) if detectors else None
        self.alerts = AlertEngine(rules)
        self.health = HealthBook()
        self.lag_bound = lag_bound
        self.hook = hook
        self.latest: dict[str, tuple[float, float]] = {}    # series -> (time, value)
        self.anomalies: list[Anomaly] = []                  # the last 100

    def tick(self, families: Iterable[Any], role_health: Mapping[str, Mapping[str, Any]], now: float,
             dt: float) -> list[Action]:
        values = self.sampler.sample(families, dt)
        out: list[Action] = []
        for name, v in values.items():
            self.latest[name] = (now, v)
            if self.series_of is not None:
                self.series_of(name).record(now, v)
            if self.detectors is not None:
                for a in self.detectors.observe(name, now, v):
                    self.anomalies = (self.anomalies + [a])[-100:]
                    out.append(Emit(AnomalyDetected(a.metric, a.detector, round(a.score, 3), a.value,
                                                    a.expected, a.sentence)))
        for al in self.alerts.observe(values, now):
            ev: Event = AlertFired(al.rule, al.metric, al.severity, al.condition, al.value) \
                if al.state == "firing" else AlertResolved(al.rule, al.metric, al.value)
            out.append(Emit(ev))
            if self.hook:
                out.append(RunHook(al))
        out += self.update_health(role_health)
        return out

    def update_health(self, role_health: Mapping[str, Mapping[str, Any]]) -> list[Action]:
        peers = self.latest.get("node.peers")
        lag = self.latest.get("node.loop_lag_p99")
        reports = role_reports(role_health)
        reports[NODE] = node_report(int(peers[1]) if peers else None, lag[1] if lag else None,
                                    self.lag_bound)
        return [Emit(HealthStatusChanged(c.role, c.status.value, c.previous.value, c.reason, c.overall.value))
                for c in self.health.update(reports)]

    def overall(self) -> Status:
        return self.health.overall()
