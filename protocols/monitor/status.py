"""The status every node gossips on `fognode/monitor/status/1` (one validating decoder)."""
from __future__ import annotations

from dataclasses import dataclass

from fognode.node.wire import Fields, pack, unpack

STATUS_TOPIC = "fognode/monitor/status/1"


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
