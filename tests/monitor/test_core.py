"""The sans-IO core against a real prometheus CollectorRegistry: sampling kinds, a tick's
actions (recorded history, anomaly, alert + hook, health changes), and the health roll-up."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fognode.node.events import PeerConnected
from fognode.node.health import HealthReport, RecentCount, Status
from fognode.protocols.monitor.api import MonitorService
from fognode.protocols.monitor.eventlog import EventLog
from fognode.protocols.monitor.alerts import parse_rules
from fognode.protocols.monitor.core import Emit, MonitorCore, RunHook, SaveAlerts
from fognode.protocols.monitor.events import AlertFired, AnomalyDetected, HealthStatusChanged
from fognode.protocols.monitor.rollup import HealthBook, node_report, role_reports
from fognode.protocols.monitor.sampled import BY_NAME, Kind, Sampled, Sampler
from fognode.protocols.monitor.series import Ring, SeriesSet, Tier, memory_buffers


def test_sampler_gauge_rate_mean_quantile_and_label_filter() -> None:
    reg = CollectorRegistry()
    peers = Gauge("fognode_node_peers", "p", registry=reg)
    msgs = Counter("fognode_node_gossip_messages_in", "m", ["topic"], registry=reg)
    lag = Histogram("fognode_node_event_loop_lag_seconds", "l", buckets=(0.01, 0.1, 1), registry=reg)
    table = [BY_NAME["node.peers"], BY_NAME["node.gossip_in_rate"], BY_NAME["node.loop_lag_p99"],
             BY_NAME["node.loop_lag_mean"], BY_NAME["ledger.supply"],
             Sampled("only_a", "fognode_node_gossip_messages_in", Kind.RATE, "", labels=(("topic", "a"),))]
    s = Sampler(table)
    peers.set(3)
    msgs.labels("a").inc(10)
    msgs.labels("b").inc(5)
    first = s.sample(reg.collect(), 0)
    assert first == {"node.peers": 3.0}                  # rates need a previous sample; no ledger here
    msgs.labels("a").inc(20)
    msgs.labels("b").inc(10)
    for _ in range(98):
        lag.observe(0.005)
    lag.observe(0.5)
    lag.observe(0.5)
    got = s.sample(reg.collect(), 10)
    assert got["node.gossip_in_rate"] == 3.0 and got["only_a"] == 2.0
    assert got["node.loop_lag_p99"] == 1.0                # the bucket holding the 99th of 100
    assert abs(got["node.loop_lag_mean"] - (98 * 0.005 + 1.0) / 100) < 1e-9
    assert "node.loop_lag_p99" not in s.sample(reg.collect(), 10)   # no observations in the interval


def test_tick_records_detects_alerts_and_rolls_up_health() -> None:
    reg = CollectorRegistry()
    peers = Gauge("fognode_node_peers", "p", registry=reg)
    tiers = [Tier.parse("10s:1h")]
    sets: dict[str, SeriesSet] = {}

    def series_of(name: str) -> SeriesSet:
        return sets.setdefault(name, SeriesSet([Ring(t, memory_buffers(name, t)) for t in tiers]))

    rules = parse_rules([{"metric": "node.peers", "op": "<", "threshold": 1}], BY_NAME)
    core = MonitorCore(series_of=series_of, rules=rules, detectors=True, anomaly_cooldown=600,
                       lag_bound=0.5, hook=True)
    roles = {"ledger": {"health": "healthy", "status": "healthy", "reason": ""}}
    t = 1_700_000_000.0
    peers.set(8)
    assert core.tick(reg.collect(), roles, t, 10) == []            # all healthy: nothing to say
    for i in range(40):
        peers.set(8 + (i % 2))
        t += 10
        assert core.tick(reg.collect(), roles, t, 10) == []
    assert len(sets["node.peers"].query(t - 400, t, None, t)) == 41
    peers.set(0)
    t += 10
    acts = core.tick(reg.collect(), {"ledger": {"health": "healthy", "status": "unhealthy",
                                                 "reason": "storage failed: disk full"}}, t, 10)
    events = [a.event for a in acts if isinstance(a, Emit)]
    kinds = {type(e) for e in events}
    assert {AnomalyDetected, AlertFired, HealthStatusChanged} <= kinds, events
    (hook,) = [a for a in acts if isinstance(a, RunHook)]
    assert hook.alert.rule == "node.peers < 1" and hook.alert.state == "firing"
    (save,) = [a for a in acts if isinstance(a, SaveAlerts)]                  # written to the data dir
    assert [a["rule"] for a in save.state["firing"]] == ["node.peers < 1"] and save.state["saved_at"] == t
    changes = {e.role: e for e in events if isinstance(e, HealthStatusChanged)}
    assert changes["ledger"].status == "unhealthy" and changes["ledger"].reason.startswith("storage failed")
    assert changes["node"].status == "degraded" and changes["node"].overall == "unhealthy"
    assert core.overall() is Status.UNHEALTHY
    assert not [a for a in core.tick(reg.collect(), roles, t + 10, 10) if isinstance(a, SaveAlerts)]  # unchanged


def test_node_report_and_roll_up() -> None:
    assert node_report(3, 0.01, 0.5) == HealthReport.healthy()
    assert node_report(0, 0.01, 0.5).status is Status.DEGRADED
    assert node_report(3, 0.8, 0.5).status is Status.DEGRADED
    assert node_report(3, 3.0, 0.5).status is Status.UNHEALTHY
    rows = {"fl": {"health": "unhealthy", "detail": "crashed; restarting in 2 s"},
            "ledger": {"health": "healthy", "status": "degraded", "reason": "behind"}}
    reps = role_reports(rows)
    assert reps["fl"] == HealthReport(Status.UNHEALTHY, "crashed; restarting in 2 s")
    book = HealthBook()
    first = book.update(reps)
    assert [(c.role, c.status, c.previous) for c in first] == [
        ("fl", Status.UNHEALTHY, Status.HEALTHY), ("ledger", Status.DEGRADED, Status.HEALTHY)]
    assert book.reasons() == ["fl: crashed; restarting in 2 s", "ledger: behind"]
    assert book.update(reps) == []                                  # no change, no event
    (back,) = book.update({**reps, "fl": HealthReport.healthy()})
    assert (back.role, back.status, back.overall) == ("fl", Status.HEALTHY, Status.DEGRADED)


def test_monitor_service_reads_series_alerts_events() -> None:
    reg = CollectorRegistry()
    Gauge("fognode_node_peers", "p", registry=reg).set(2)
    tier = Tier.parse("10s:1h")
    sets: dict[str, SeriesSet] = {}

    def series_of(name: str) -> SeriesSet:
        return sets.setdefault(name, SeriesSet([Ring(tier, memory_buffers(name, tier))]))

    core = MonitorCore(series_of=series_of, rules=[], detectors=False, anomaly_cooldown=0, lag_bound=0.5,
                       hook=False)
    log = EventLog(2)
    now = [1_700_000_000.0]
    svc = MonitorService(core, series_of, log, lambda: {"overall": core.overall().value}, lambda: now[0])
    core.tick(reg.collect(), {}, now[0], 10)
    assert svc.latest("node.peers") == (now[0], 2.0) and "node.peers" in svc.names()
    assert [p.mean for p in svc.series("node.peers", now[0] - 60, now[0])] == [2.0]
    for i in range(3):
        log.add(PeerConnected(f"p{i}", "/ip4/127.0.0.1/tcp/1"), now[0] + i)
    assert [e["data"]["peer_id"] for e in svc.events()] == ["p1", "p2"]          # bounded ring
    assert svc.alerts() == {"firing": [], "recent": []}
    assert svc.health() == {"overall": "healthy"}       # two peers, no lag figure yet, no roles


def test_recent_count_window() -> None:
    c = RecentCount(300, cap=4)
    for t in (0, 100, 200):
        c.add(t)
    assert c.count(250) == 3 and c.count(350) == 2 and c.count(600) == 0
    for t in range(10):
        c.add(1000 + t)
    assert c.count(1010) == 4        # saturates at cap
