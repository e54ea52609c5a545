"""The monitor role: Prometheus endpoint, health roll-up, history, anomalies, alerts, events.

Serves `GET /metrics` (the node's own CollectorRegistry) and `GET /health` (JSON: `status` ok
or degraded as before — degraded, with HTTP 503, when a role is down or reports itself
unhealthy —, `overall` healthy/degraded/unhealthy with `reasons`, per-role health, peer count,
uptime) on `[protocols.monitor] host:port` (0 disables the endpoint; `monitor.health` works
either way). A port that cannot be bound fails the role in one line naming the port and the
setting to change; it is not restarted (PermanentRoleError).

Every `sample_interval` seconds the role hands a snapshot of the node's metrics to its sans-IO
core (core.py), which records the chosen series (sampled.py) into ring files in
`<datadir>/monitor/series` (store.py), runs the anomaly detectors and alert rules, and rolls up
health; this module carries out its actions (publish `AnomalyDetected`, `AlertFired`,
`AlertResolved`, `HealthStatusChanged`; run the alert hook; save the alert state to
`<datadir>/monitor/alerts.json`, alertfile.py). At start the detectors learn from the recorded
history and the firing and pending alerts are read back, so a restart neither re-fires an
alert nor makes the detectors start from nothing. Every event on the bus is kept in a
bounded ring for `monitor.events`, which can also follow the bus live.

Every `status_interval` seconds the node gossips a small status (status.py) on
`fognode/monitor/status/1`; `monitor.network` shows the last status heard from every node, a
node not heard from for 3 intervals as offline (counted in `fognode_monitor_nodes_offline`,
the series `network.nodes_offline` an alert rule can watch) and forgets it after FORGET_AFTER.

The same port serves the read-only web dashboard (dashboard/app.py) behind a token written to
`<datadir>/monitor.cookie` at start; `monitor.dashboard` gives its URL, `monitor.figures` the
live figures its node page and `fognode-cli top` chart.
"""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import time
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from fognode.node import __version__
from fognode.node.errors import FognodeError, PermanentRoleError, RemoteProtocolError, RpcError
from fognode.node.events import RoleHealthChanged, Subscription
from fognode.node.health import Status
from fognode.node.metrics import metric
from fognode.node.overlay import GossipMessage
from fognode.node.role import Role
from fognode.node.rpc.methods import Progress, rpc_method
from fognode.protocols.monitor.api import MonitorService
from fognode.protocols.monitor.config import MonitorConfig
from fognode.protocols.monitor.alertfile import FILE as ALERT_FILE, load_alert_state, save_alert_state
from fognode.protocols.monitor.core import Action, Emit, MonitorCore, RunHook, SaveAlerts
from fognode.protocols.monitor.errors import (MONITOR_BAD_RANGE, MONITOR_HISTORY_OFF, MONITOR_UNKNOWN_EVENT,
                                              MONITOR_UNKNOWN_METRIC)
from fognode.protocols.monitor.eventlog import EventLog, known_kinds
from fognode.protocols.monitor.events import AlertHookRan, AnomalyDetected, HealthStatusChanged
from fognode.protocols.monitor.hook import run_hook
from fognode.protocols.monitor.dashboard.app import Dashboard
from fognode.protocols.monitor.dashboard.cookie import AccessToken
from fognode.protocols.monitor.http import serve_http
from fognode.protocols.monitor.metrics import MonitorMetrics
from fognode.protocols.monitor.sampled import BY_NAME
from fognode.protocols.monitor.series import SeriesQueryError, parse_duration
from fognode.protocols.monitor.status import STATUS_TOPIC, NodeStatus
from fognode.protocols.monitor.store import SeriesStore

log = logging.getLogger("fognode.monitor")

SERVICE_NAME = "monitor"
FLUSH_EVERY = 60.0            # seconds between msyncs of the history files
OFFLINE_INTERVALS = 3         # a node not heard from for this many status intervals is offline
FORGET_AFTER = 86400.0        # and is forgotten after this long (it left the network)

__all__ = ["MonitorRole", "MonitorConfig", "NodeStatus", "STATUS_TOPIC"]


def _time_param(text: str, now: float, field: str) -> float:
    """'1h' (that long ago), '' (now) or a Unix time."""
    if text == "":
        return now
    try:
        v = float(text)
    except ValueError:
        try:
            return now - parse_duration(text)
        except ValueError:
            raise RpcError(MONITOR_BAD_RANGE, f"{field}: {text!r} is neither a Unix time nor a duration "
                                              "like 10m, 2h, 7d (that long ago)", {"field": field}) from None
    if not math.isfinite(v) or v < 0:
        raise RpcError(MONITOR_BAD_RANGE, f"{field}: {text!r} is not a time", {"field": field})
    return v


class MonitorRole(Role):
    """Health, metrics, history, anomalies and alerts of this node."""

    name = "monitor"
    Config = MonitorConfig
    topics = (STATUS_TOPIC,)

    def __init__(self, ctx: Any, config: MonitorConfig) -> None:
        super().__init__(ctx, config)
        self.port: int | None = None
        self.network: dict[str, tuple[NodeStatus, float]] = {}  # peer -> (status, our receive time)
        self.metrics = MonitorMetrics.create(ctx.metrics)
        self.store: SeriesStore | None = None
        self.core = MonitorCore(series_of=None, rules=config.rules(), detectors=config.detectors,
                                anomaly_cooldown=config.anomaly_cooldown, lag_bound=config.loop_lag_degraded,
                                hook=bool(config.alert_hook))
        self.events = EventLog(config.events_kept)
        self._hooks: trio.Nursery | None = None
        self.dashboard: Dashboard | None = None
        self.alert_file = ctx.datadir / "monitor" / ALERT_FILE

    # ---- health -----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        node = self.ctx.services.require("node")
        roles = node.role_health()
        self._carry_out(self.core.update_health(roles))
        ok = all(r["health"] == "healthy" and r.get("status") != "unhealthy" for r in roles.values())
        book = self.core.health
        return {
            "status": "ok" if ok else "degraded",
            "overall": book.overall().value,
            "reasons": book.reasons(),
            "node": {"status": book.current["node"].status.value, "reason": book.current["node"].reason},
            "peer_id": self.ctx.peer_id,
            "uptime_s": round(node.uptime(), 3),
            "peers": len([p for p in self.ctx.overlay.peers() if p.connected]),
            "roles": roles,
        }

    async def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.ctx.metrics)

    async def _health(self) -> tuple[int, str, bytes]:
        h = self.health()
        return (200 if h["status"] == "ok" else 503), "application/json", json.dumps(h).encode()

    def health_detail(self) -> dict[str, Any]:
        return {"endpoint": f"http://{self.config.host}:{self.port}/metrics" if self.port else None,
                "alerts_firing": len(self.core.alerts.firing())}

    # ---- sampling ---------------------------------------------------------------------------

    def _carry_out(self, actions: list[Action]) -> None:
        """The dispatch table of the core's actions."""
        for a in actions:
            if isinstance(a, Emit):
                ev = a.event
                self.ctx.events.publish(ev)
                if isinstance(ev, AnomalyDetected):
                    self.metrics.anomalies.labels(ev.metric, ev.detector).inc()
                    log.warning("anomaly: %s", ev.sentence)
                elif isinstance(ev, HealthStatusChanged):
                    self.metrics.health.labels(ev.role).set(Status(ev.status).rank)
                    log.info("health of %s: %s -> %s%s", ev.role, ev.previous, ev.status,
                             f" ({ev.reason})" if ev.reason else "")
            elif isinstance(a, RunHook):
                if self._hooks is not None:
                    self._hooks.start_soon(self._run_hook, a.alert.to_dict())
            elif isinstance(a, SaveAlerts):
                save_alert_state(self.alert_file, a.state)
        for sev in ("info", "warning", "critical"):
            self.metrics.alerts_firing.labels(sev).set(sum(1 for x in self.core.alerts.firing() if x.severity == sev))

    async def _run_hook(self, payload: dict[str, Any]) -> None:
        outcome = await run_hook(list(self.config.alert_hook), payload, self.config.alert_hook_timeout)
        self.metrics.hook_runs.labels("ok" if outcome == "exit 0" else "killed" if outcome.startswith("killed")
                                      else "failed").inc()
        self.ctx.events.publish(AlertHookRan(payload["rule"], payload["state"], outcome))

    async def _sample_loop(self) -> None:
        node = self.ctx.services.require("node")
        await node.ready.wait()
        interval = self.config.sample_interval
        last = trio.current_time()
        flushed = last
        while True:
            await trio.sleep(interval)
            now_mono = trio.current_time()
            cpu0 = time.thread_time()
            actions = self.core.tick(self.ctx.metrics.collect(), node.role_health(), self.ctx.clock(),
                                     now_mono - last)
            last = now_mono
            self._carry_out(actions)
            if now_mono - flushed >= FLUSH_EVERY:
                flushed = now_mono
                if self.store is not None:
                    self.store.flush()
                if self.core.alerts.firing() or self.core.alerts.pending():   # saved_at: watched until now
                    save_alert_state(self.alert_file, self.core.alerts.state(self.ctx.clock()))
            if self.store is not None:
                self.metrics.history_bytes.set(self.store.disk_bytes())
            self.metrics.sample_seconds.observe(time.thread_time() - cpu0)

    async def _keep_events(self, sub: Subscription) -> None:
        """Keep every bus event for monitor.events; a role going down or up updates the
        health roll-up at once (HealthStatusChanged without waiting for the next sample)."""
        node = self.ctx.services.require("node")
        async with sub:
            async for batch in sub.batches():      # one wake-up for what queued (node/events.py)
                now = self.ctx.clock()
                for ev in batch:
                    self.events.add(ev, now)
                if any(isinstance(ev, RoleHealthChanged) for ev in batch):
                    self._carry_out(self.core.update_health(node.role_health()))

    # ---- gossip status ----------------------------------------------------------------------

    def _check_status(self, msg: GossipMessage) -> bool:
        """Run by the gossip layer before a status is relayed or delivered: one that does not
        decode is refused and charged to the peer that relayed it to us. Its origin may be a
        throw-away key that no charge reaches; every node runs this check before relaying, so
        an honest relayer never passes a bad status on and only the peer that injected it (or
        one that relays unchecked) pays. GossipSub counts it as that peer's invalid message."""
        try:
            NodeStatus.decode(msg.data, msg.origin)
        except RemoteProtocolError as e:
            self.ctx.overlay.penalize(msg.received_from or msg.origin,
                                      f"relayed a bad status of {msg.origin}: {e}",
                                      protocol=STATUS_TOPIC)
            return False
        return True

    async def _on_status(self, msg: GossipMessage) -> None:
        try:
            self.network[msg.origin] = (NodeStatus.decode(msg.data, msg.origin), self.ctx.clock())
        except RemoteProtocolError as e:   # _check_status refused it already; kept for safety
            self.ctx.overlay.penalize(msg.received_from or msg.origin, f"bad status: {e}",
                                      protocol=STATUS_TOPIC)

    def _offline(self, seen: float, now: float) -> bool:
        return now - seen > OFFLINE_INTERVALS * self.config.status_interval

    def _nodes_offline(self) -> int:
        now = self.ctx.clock()
        return sum(self._offline(seen, now) for _, seen in self.network.values())

    async def _announce(self) -> None:
        node = self.ctx.services.require("node")
        await node.ready.wait()
        while True:
            now = self.ctx.clock()
            for pid in [p for p, (_, seen) in self.network.items() if now - seen > FORGET_AFTER]:
                del self.network[pid]
            h = self.health()
            st = NodeStatus(healthy=h["status"] == "ok", peers=h["peers"], uptime_s=round(node.uptime(), 3),
                            version=__version__, at=self.ctx.clock())
            self.network[self.ctx.peer_id] = (st, self.ctx.clock())
            try:
                await self.ctx.overlay.publish(STATUS_TOPIC, st.encode())
            except FognodeError as e:
                log.warning("could not publish status: %s", e)
            await trio.sleep(self.config.status_interval)

    # ---- RPC --------------------------------------------------------------------------------

    @rpc_method("monitor.network")
    async def rpc_network(self) -> list[dict[str, Any]]:
        """The last status heard from every node: health, peers, uptime, version, seconds ago,
        and offline (not heard from for 3 status intervals; forgotten after a day)."""
        now = self.ctx.clock()
        return [
            {"peer_id": pid, "healthy": st.healthy, "peers": st.peers, "uptime_s": st.uptime_s,
             "version": st.version, "seen_s_ago": round(now - seen, 3), "offline": self._offline(seen, now)}
            for pid, (st, seen) in sorted(self.network.items())
        ]

    @rpc_method("monitor.figures")
    async def rpc_figures(self) -> dict[str, Any]:
        """Live figures (cumulative, as Prometheus counters): peers, CPU seconds, gossip in/out/
        drops, RPC requests, the event-loop lag histogram; two readings give rates."""
        t = os.times()
        return self.core.figures(self.ctx.metrics.collect(), self.ctx.clock(), t.user + t.system)

    @rpc_method("monitor.dashboard")
    async def rpc_dashboard(self) -> dict[str, Any]:
        """The web dashboard's URL with this run's token (open it in a browser on this machine),
        and the token file; null url when the endpoint is off (protocols.monitor.port = 0)."""
        if self.dashboard is None or not self.port:
            return {"url": None, "token_file": None}
        return {"url": self.dashboard.url(self.port), "token_file": str(self.dashboard.token.path)}

    @rpc_method("monitor.health")
    async def rpc_health(self) -> dict[str, Any]:
        """Overall health: status (ok, or degraded when a role is down or unhealthy), overall
        (healthy, degraded or unhealthy: the worst of the node and its roles) with the reasons,
        per-role health, peer count, uptime."""
        return self.health()

    @rpc_method("monitor.metrics")
    async def rpc_metrics(self) -> list[dict[str, Any]]:
        """The series the monitor records: name, Prometheus metric, how it is sampled, unit,
        the newest value (with its Unix time), and the anomaly detectors that score it now
        (warmed up; at start they learn from the recorded history)."""
        out = []
        now = self.ctx.clock()
        for s in self.core.table:
            last = self.core.latest.get(s.name)
            out.append({"name": s.name, "metric": s.family, "kind": s.kind.value, "unit": s.unit,
                        "help": s.help, "value": last[1] if last else None,
                        "at": round(last[0], 3) if last else None, "detectors": self.core.armed(s.name, now)})
        return out

    @rpc_method("monitor.series")
    async def rpc_series(self, metric: str, since: str = "1h", until: str = "", step: str = "") -> dict[str, Any]:
        """Recorded values of METRIC (see monitor.metrics) from --since to --until (a Unix time,
        or a duration like 10m, 6h, 7d meaning that long ago; until defaults to now), one point
        per --step (a duration or seconds; default the finest tier still holding the range):
        bucket start time, mean, min, max, sample count. Each part of the range comes from the
        finest tier that still holds it. Error 800: unknown metric; 801: bad since/until/step;
        802: history is off."""
        if metric not in BY_NAME:
            raise RpcError(MONITOR_UNKNOWN_METRIC, f"no series {metric!r}; see monitor.metrics",
                           {"known": sorted(BY_NAME)})
        if self.store is None:
            raise RpcError(MONITOR_HISTORY_OFF, "history is off on this node (protocols.monitor.history)")
        now = self.ctx.clock()
        t0, t1 = _time_param(since, now, "since"), _time_param(until, now, "until")
        step_s: float | None = None
        if step != "":
            try:
                step_s = float(step)
            except ValueError:
                try:
                    step_s = parse_duration(step)
                except ValueError as e:
                    raise RpcError(MONITOR_BAD_RANGE, f"step: {e}", {"field": "step"}) from None
        try:
            pts = self.store.series(metric).query(t0, t1, step_s, now)
        except SeriesQueryError as e:
            raise RpcError(MONITOR_BAD_RANGE, str(e), {"field": e.param}) from None
        return {"metric": metric, "since": t0, "until": t1, "step": step_s,
                "points": [p.to_dict() for p in pts]}

    @rpc_method("monitor.alerts")
    async def rpc_alerts(self) -> dict[str, Any]:
        """Alert rules firing now, those whose condition holds but not yet for their `for`
        (pending: rule, since, for), recently resolved alerts, and the configured rules. Firing
        and pending alerts survive a restart (<datadir>/monitor/alerts.json)."""
        return {"firing": [a.to_dict() for a in self.core.alerts.firing()],
                "pending": self.core.alerts.pending(),
                "recent": [a.to_dict() for a in self.core.alerts.recent()],
                "rules": [{"name": r.name, "condition": r.describe(), "severity": r.severity}
                          for r in self.core.alerts.rules]}

    @rpc_method("monitor.events")
    async def rpc_events(self, type: list[str] | None = None, limit: int = 50, follow: bool = False,
                         count: int = 0, *, progress: Progress = Progress()) -> list[dict[str, Any]] | dict[str, int]:
        """The node's recent events (the last --limit, oldest first): sequence number, time,
        type (`event`) and fields (`data`); --type keeps only those event types (e.g.
        PeerConnected, HealthStatusChanged, AnomalyDetected, AlertFired). --follow prints each
        new event as one line as it happens (JSON lines with fognode-cli --json), until
        interrupted or --count new events, then says how many it followed. Error 803: an
        unknown event type."""
        kinds = tuple(type or ())
        known = self.events.kinds | known_kinds()
        bad = [k for k in kinds if k not in known]
        if bad:
            raise RpcError(MONITOR_UNKNOWN_EVENT, f"unknown event type {bad[0]!r}; known: "
                           f"{', '.join(sorted(known))}", {"known": sorted(known)})
        if not 0 <= limit <= 100_000 or count < 0:
            raise RpcError(MONITOR_BAD_RANGE, "limit must be 0-100000 and count >= 0",
                           {"field": "limit" if not 0 <= limit <= 100_000 else "count"})
        if not follow:
            return self.events.recent(kinds, limit)
        send, recv = trio.open_memory_channel[dict[str, Any]](1024)

        def queue(item: dict[str, Any]) -> None:
            if not kinds or item["event"] in kinds:
                try:
                    send.send_nowait(item)
                except trio.WouldBlock:     # a follower too slow to read: it misses events
                    pass

        self.events.followers.add(queue)
        try:
            for item in self.events.recent(kinds, limit):
                await progress(item)
            sent = 0
            async with recv:
                async for item in recv:
                    await progress(item)
                    sent += 1
                    if count and sent >= count:
                        break
        finally:
            self.events.followers.discard(queue)
            send.close()
        return {"followed": sent}

    # ---- serving ----------------------------------------------------------------------------

    async def _serve_endpoint(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """serve_http on host:port. A port that cannot be bound (in use by another fognode or
        program, not ours to bind) is PermanentRoleError: one line saying what to change,
        and the supervisor does not restart the role."""
        host, port = self.config.host, self.config.port
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as e:
            what = "is already in use (another fognode or program listens there)" \
                if e.errno == errno.EADDRINUSE else f"cannot be bound: {e.strerror or e}"
            raise PermanentRoleError(
                f"metrics endpoint {host}:{port} {what}; choose another port with "
                f"--metrics-port N or protocols.monitor.port in node.toml (0 disables it)") from None
        token = AccessToken(self.ctx.datadir)
        token.write()
        self.dashboard = Dashboard(token, self.ctx.services.require("node").rpc_methods, self.ctx.metrics, host=host)
        try:
            await serve_http(listeners, {"/metrics": self._metrics, "/health": self._health},
                             fallback=self.dashboard.handle, task_status=task_status)
        finally:
            token.remove()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        node = self.ctx.services.require("node")
        metric(self.ctx.metrics, Gauge, "fognode_node_uptime_seconds",
               "Seconds since the daemon started").set_function(node.uptime)
        self.metrics.nodes_offline.set_function(self._nodes_offline)
        self.ctx.role_dir("monitor")
        load_alert_state(self.alert_file, self.core.alerts, self.ctx.clock())
        if self.config.history:
            self.store = SeriesStore(self.ctx.role_dir("monitor") / "series", self.config.tier_list())
            self.core.series_of = self.store.series
            t0 = time.perf_counter()
            n = self.core.warm_up(self.ctx.clock(), self.store.stored([s.name for s in self.core.table]),
                                  self.config.sample_interval)
            if n:
                log.info("detectors warmed up from %d recorded points in %.0f ms", n, (time.perf_counter() - t0) * 1000)
        self._carry_out([])
        try:
            async with trio.open_nursery() as nursery:
                self._hooks = nursery
                nursery.start_soon(self._keep_events, self.ctx.events.subscribe("monitor.events", size=1024))
                if self.config.port:
                    self.port = await nursery.start(self._serve_endpoint)
                    log.info("metrics on http://%s:%d/metrics; dashboard: `fognode-cli monitor dashboard` "
                             "prints its URL", self.config.host, self.port)
                await self.ctx.overlay.subscribe(STATUS_TOPIC, self._on_status,
                                                  check=self._check_status)
                nursery.start_soon(self._announce)
                nursery.start_soon(self._sample_loop)
                self.ctx.services.provide(SERVICE_NAME, MonitorService(
                    self.core, self.store.series if self.store else None, self.events, self.health,
                    self.ctx.clock))
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.ctx.services.withdraw(SERVICE_NAME)
            save_alert_state(self.alert_file, self.core.alerts.state(self.ctx.clock()))
            if self.store is not None:
                self.store.close()
                self.store = None
