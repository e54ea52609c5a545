"""The monitor role: Prometheus endpoint, node health, uptime, and the network's health view.

Serves `GET /metrics` (the node's own CollectorRegistry) and `GET /health` (JSON: overall
status, per-role health, peer count, uptime) on `[protocols.monitor] host:port` (0 disables
the endpoint; the RPC method `monitor.health` works either way). A port that cannot be bound
(another node on this machine has it) fails the role in one line naming the port and the
setting to change; it is not restarted (PermanentRoleError).

Every `status_interval` seconds the node gossips a small status (health, peers, uptime,
version) on `fognode/monitor/status/1`; `monitor.network` shows the last status heard from
every node, so an operator sees the whole network's health from any node.

The same port serves the read-only web dashboard (dashboard/app.py) behind a token written to
`<datadir>/monitor.cookie` at start; `monitor.dashboard` gives its URL, `monitor.figures` the
live figures its node page and `fognode-cli top` chart.
"""
from __future__ import annotations

import errno
import json
import logging
from dataclasses import dataclass
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from fognode.node import __version__
from fognode.node.errors import ConfigError, FognodeError, PermanentRoleError, RemoteProtocolError
from fognode.node.overlay import GossipMessage
from fognode.node.wire import Fields, pack, unpack
from fognode.node.metrics import metric
from fognode.node.protocol import Protocol
from fognode.node.rpc.methods import rpc_method
from fognode.protocols.monitor.dashboard.app import Dashboard
from fognode.protocols.monitor.dashboard.cookie import AccessToken
from fognode.protocols.monitor.dashboard.figures import figures
from fognode.protocols.monitor.http import serve_http

log = logging.getLogger("fognode.monitor")


STATUS_TOPIC = "fognode/monitor/status/1"


@dataclass(frozen=True)
class MonitorConfig:
    host: str = "127.0.0.1"        # address of the /metrics and /health endpoint
    port: int = 9464               # TCP port of the endpoint; 0 disables it
    status_interval: float = 10.0  # seconds between this node's status announcements on gossip

    def validate(self, source: str) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range 0-65535", source=source,
                              key="protocols.monitor.port")
        if not 0.1 <= self.status_interval <= 3600:
            raise ConfigError("must be between 0.1 and 3600 seconds", source=source,
                              key="protocols.monitor.status_interval")


@dataclass(frozen=True)
class NodeStatus:
    """One node's self-reported status (gossiped; the gossip layer authenticates the origin)."""

    healthy: bool
    peers: int
    uptime_s: float
    version: str
    at: float  # sender's wall clock

    def encode(self) -> bytes:
        return pack({"v": 1, "healthy": self.healthy, "peers": self.peers, "uptime_s": self.uptime_s,
                     "version": self.version, "at": self.at})

    @staticmethod
    def decode(data: bytes, peer: str) -> "NodeStatus":
        f = Fields(unpack(data, max_size=1024, what="monitor status"), "monitor status", versions={1}, peer=peer)
        st = NodeStatus(healthy=f.bool("healthy"), peers=f.int("peers", lo=0, hi=1 << 20),
                        uptime_s=f.float("uptime_s", lo=0), version=f.str("version", max_len=32),
                        at=f.float("at", lo=0))
        f.done()
        return st


class MonitorRole(Protocol):
    """Health and metrics of this node."""

    name = "monitor"
    Config = MonitorConfig
    topics = (STATUS_TOPIC,)

    def __init__(self, ctx: Any, config: MonitorConfig) -> None:
        super().__init__(ctx, config)
        self.port: int | None = None
        self.network: dict[str, tuple[NodeStatus, float]] = {}  # peer -> (status, our receive time)
        self.dashboard: Dashboard | None = None

    def health(self) -> dict[str, Any]:
        node = self.ctx.services.require("node")
        roles = node.role_health()
        ok = all(r["health"] == "healthy" for r in roles.values())
        return {
            "status": "ok" if ok else "degraded",
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
        return {"endpoint": f"http://{self.config.host}:{self.port}/metrics" if self.port else None}

    async def _on_status(self, msg: GossipMessage) -> None:
        try:
            self.network[msg.origin] = (NodeStatus.decode(msg.data, msg.origin), self.ctx.clock())
        except RemoteProtocolError as e:
            # signed by its origin (the gossip envelope): a rate-limited WARNING, charged to it
            self.ctx.overlay.penalize(msg.origin, f"bad status: {e}", protocol=STATUS_TOPIC)

    async def _announce(self) -> None:
        node = self.ctx.services.require("node")
        await node.ready.wait()
        while True:
            h = self.health()
            st = NodeStatus(healthy=h["status"] == "ok", peers=h["peers"], uptime_s=round(node.uptime(), 3),
                            version=__version__, at=self.ctx.clock())
            self.network[self.ctx.peer_id] = (st, self.ctx.clock())
            try:
                await self.ctx.overlay.publish(STATUS_TOPIC, st.encode())
            except FognodeError as e:
                log.warning("could not publish status: %s", e)
            await trio.sleep(self.config.status_interval)

    @rpc_method("monitor.network")
    async def rpc_network(self) -> list[dict[str, Any]]:
        """The last status heard from every node: health, peers, uptime, version, seconds ago."""
        now = self.ctx.clock()
        return [
            {"peer_id": pid, "healthy": st.healthy, "peers": st.peers, "uptime_s": st.uptime_s,
             "version": st.version, "seen_s_ago": round(now - seen, 3)}
            for pid, (st, seen) in sorted(self.network.items())
        ]

    @rpc_method("monitor.figures")
    async def rpc_figures(self) -> dict[str, Any]:
        """Live figures (cumulative, as Prometheus counters): peers, CPU seconds, gossip in/out/
        drops, RPC requests, the event-loop lag histogram; two readings give rates."""
        return figures(self.ctx.metrics, self.ctx.clock())

    @rpc_method("monitor.dashboard")
    async def rpc_dashboard(self) -> dict[str, Any]:
        """The web dashboard's URL with this run's token (open it in a browser on this machine),
        and the token file; null url when the endpoint is off (protocols.monitor.port = 0)."""
        if self.dashboard is None or not self.port:
            return {"url": None, "token_file": None}
        return {"url": self.dashboard.url(self.port), "token_file": str(self.dashboard.token.path)}

    @rpc_method("monitor.health")
    async def rpc_health(self) -> dict[str, Any]:
        """Overall health: status (ok or degraded), per-role health, peer count, uptime."""
        return self.health()

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
        async with trio.open_nursery() as nursery:
            if self.config.port:
                self.port = await nursery.start(self._serve_endpoint)
                log.info("metrics on http://%s:%d/metrics; dashboard: `fognode-cli monitor dashboard` "
                         "prints its URL", self.config.host, self.port)
            await self.ctx.overlay.subscribe(STATUS_TOPIC, self._on_status)
            nursery.start_soon(self._announce)
            task_status.started()
            await trio.sleep_forever()
