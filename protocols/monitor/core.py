"""The monitor's sans-IO core: one `tick` per sample interval.

`MonitorCore.tick(families, role_health, now, dt)` is handed the node's registry snapshot
(`registry.collect()`), the supervisor's role rows and the time; it samples the series
(sampled.py), records them (series.py rings, handed in as `series_of`), runs the detectors and
the alert rules, rolls up health, and returns the actions for protocol.py to carry out:
`Emit(event)` (publish on the bus) and `RunHook(alert)` (the operator's hook). No trio, no
clock, no files of its own.

`SaveAlerts(state)` (write the alert engine's state to the data dir: it changed). At start,
`warm_up(now, names)` feeds the recorded history of those series to the detectors.

`figures(families, now, cpu_s)` answers `monitor.figures` (the live view of `fognode-cli top`
and the dashboard's node page, read every second or two) from the same table and the same
reading of the registry (sampled.totals): cumulative values, as Prometheus keeps them, so any
number of clients can turn two readings into rates without disturbing the sampler.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from fognode.node.events import Event
from fognode.node.health import Status
from fognode.protocols.monitor.alerts import Alert, AlertEngine, AlertRule
from fognode.protocols.monitor.detectors import Anomaly, Detectors
from fognode.protocols.monitor.events import AlertFired, AlertResolved, AnomalyDetected, HealthStatusChanged
from fognode.protocols.monitor.rollup import NODE, HealthBook, node_report, role_reports
from fognode.protocols.monitor.sampled import SAMPLED, Sampled, Sampler, totals
from fognode.protocols.monitor.series import SeriesSet


@dataclass(frozen=True)
class Emit:
    event: Event


@dataclass(frozen=True)
class RunHook:
    alert: Alert


@dataclass(frozen=True)
class SaveAlerts:
    state: dict[str, Any]


Action = Emit | RunHook | SaveAlerts

WARM_WINDOWS = 1.5                # history read at start for the z-score: 1.5 of its windows of samples
WARM_SEASONAL = 8 * 86400.0       # and for the seasonal detector (days smoothed at alpha 0.3), coarsest tier

# monitor.figures: figure -> (series whose metric it reads, which cumulative total)
FIGURES: dict[str, tuple[str, str]] = {
    "gossip_in": ("node.gossip_in_rate", "value"),
    "gossip_out": ("node.gossip_out_rate", "value"),
    "gossip_drops": ("node.gossip_drops_rate", "value"),
    "rpc_requests": ("node.rpc_requests_rate", "count"),
    "rpc_seconds": ("node.rpc_latency_mean", "value"),
    "peers": ("node.peers", "value"),
    "dials": ("node.dials_rate", "value"),
}
LAG_SERIES = "node.loop_lag_p99"


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
        if self.alerts.dirty:
            out.append(SaveAlerts(self.alerts.state(now)))
        out += self.update_health(role_health)
        return out

    def warm_up(self, now: float, names: Iterable[str], sample_interval: float) -> int:
        """Feed the recorded history of the series `names` (those with ring files) to the
        detectors: for the z-score the last WARM_WINDOWS windows of samples (at `sample_interval`,
        from the finest tier holding them), for a seasonal series also the last WARM_SEASONAL
        seconds of its coarsest tier. Returns the points read."""
        if self.detectors is None or self.series_of is None:
            return 0
        wanted = set(names)
        d = self.detectors
        n = 0
        for s in self.table:
            if s.name not in wanted:
                continue
            ss = self.series_of(s.name)
            span = WARM_WINDOWS * d.window * max(sample_interval, ss.rings[0].tier.step)
            pts = [(p.t, p.mean) for p in ss.query(now - span, now, None, now)]
            season = [(p.t, p.mean) for p in ss.rings[-1].points(now - WARM_SEASONAL, now)] if s.seasonal else []
            d.warm(s.name, pts, season)
            n += len(pts) + len(season)
        return n

    def armed(self, name: str, now: float) -> list[str]:
        """The detectors scoring series `name` now ([] with detectors off)."""
        return self.detectors.armed(name, now) if self.detectors is not None else []

    def figures(self, families: Iterable[Any], now: float, cpu_s: float) -> dict[str, Any]:
        """{t, cpu_s, gossip_in, gossip_out, gossip_drops, rpc_requests, rpc_seconds, peers,
        dials, loop_lag: {count, sum, buckets: [[le or None for +Inf, cumulative count], ...]}}
        at wall-clock `now`, with the process's CPU seconds `cpu_s`; a figure whose metric is not
        registered is 0."""
        by_family = {f.name: f for f in families}
        by_name = {s.name: s for s in self.table}
        out: dict[str, Any] = {"t": now, "cpu_s": round(cpu_s, 3)}
        for key, (series, part) in FIGURES.items():
            t = totals(by_family, by_name[series])
            v = t.count if part == "count" else t.value
            out[key] = round(v, 6) if key == "rpc_seconds" else int(v)
        lag = totals(by_family, by_name[LAG_SERIES])
        out["loop_lag"] = {"count": int(lag.count), "sum": lag.value,
                           "buckets": [[le if math.isfinite(le) else None, int(c)] for le, c in sorted(lag.buckets.items())]}
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
