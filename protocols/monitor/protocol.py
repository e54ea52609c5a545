"""The monitor role: Prometheus endpoint, node health, uptime.

Serves `GET /metrics` (the node's own CollectorRegistry) and `GET /health` (JSON: overall
status, per-role health, peer count, uptime) on `[protocols.monitor] host:port` (0 disables
the endpoint; the RPC method `monitor.health` works either way).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from fognode.node.errors import ConfigError
from fognode.node.metrics import metric
from fognode.node.protocol import Protocol
from fognode.node.rpc.methods import rpc_method
from fognode.protocols.monitor.http import serve_http

log = logging.getLogger("fognode.monitor")


@dataclass(frozen=True)
class MonitorConfig:
    host: str = "127.0.0.1"   # address of the /metrics and /health endpoint
    port: int = 9464          # TCP port of the endpoint; 0 disables it

    def validate(self, source: str) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range 0-65535", source=source,
                              key="protocols.monitor.port")


class MonitorRole(Protocol):
    """Health and metrics of this node."""

    name = "monitor"
    Config = MonitorConfig

    def __init__(self, ctx: Any, config: MonitorConfig) -> None:
        super().__init__(ctx, config)
        self.port: int | None = None
        self._started = time.monotonic()

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

    @rpc_method("monitor.health")
    async def rpc_health(self) -> dict[str, Any]:
        """Overall health: status (ok or degraded), per-role health, peer count, uptime."""
        return self.health()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        node = self.ctx.services.require("node")
        metric(self.ctx.metrics, Gauge, "fognode_node_uptime_seconds",
               "Seconds since the daemon started").set_function(node.uptime)
        async with trio.open_nursery() as nursery:
            if self.config.port:
                self.port = await nursery.start(serve_http, self.config.host, self.config.port,
                                                {"/metrics": self._metrics, "/health": self._health})
                log.info("metrics on http://%s:%d/metrics", self.config.host, self.port)
            task_status.started()
            await trio.sleep_forever()
