"""The resource manager's adapter: node/rcmgr.py's verdicts carried out on libp2p objects.

`ResourceGate` owns one `ResourceManager`, the metrics and the rate-limited warnings. It hands
out a `StreamSlot` per admitted inbound stream (node/streams.guard_handler for our handlers,
node/host._guard_raw for libp2p's own), a `BufferAccount` per framed stream (the bytes of
unfinished frames it holds, charged to its peer), and admits or refuses connections from the
swarm's connected notifee. Refusals and deadlines are counted in
`fognode_node_resource_refusals_total{reason}` and `fognode_node_stream_deadlines_total{phase}`;
`fognode_node_inbound_streams`, `fognode_node_stream_buffered_bytes` and
`fognode_node_limited_connections` show what is held. An over-limit peer is not penalised: a
refusal is go-libp2p's answer too, and an honest peer may meet a full scope in a storm.

`WindowBudget` (`ResourceGate.window_budget`) is what node/p2pfix_yamux.py charges a Yamux
stream's receive-window growth to: bytes its peer may send us before anyone reads them. Growth
gets at most rcmgr.WINDOW_SHARE of either budget; less than asked is counted as
`fognode_node_resource_refusals_total{reason="window_capped"}` (no warning: a busy honest peer
meets it too, and only its window stays smaller). The buffered-bytes gauge includes it.
"""
from __future__ import annotations

import logging
import time
import weakref
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from fognode.node.metrics import metric
from fognode.node.rcmgr import (Refusal, ResourceLimits, ResourceManager, StreamDeadlines,
                                Wait)

log = logging.getLogger("fognode.resources")

WARN_INTERVAL = 10.0   # seconds between two warnings of one kind about one peer


def remote_ip(muxed_conn: Any) -> str:
    """The remote IP of a py-libp2p muxed connection, "" if it has none (e.g. relayed)."""
    try:
        addr = muxed_conn.get_remote_address()
    except Exception:   # a closed or exotic transport: no subnet to count under
        return ""
    return str(addr[0]) if addr else ""


class StreamSlot:
    """One inbound stream's slot; `release()` gives it back (idempotent)."""

    __slots__ = ("_manager", "_key", "_released")

    def __init__(self, manager: ResourceManager, key: tuple[str, str, str]) -> None:
        self._manager = manager
        self._key = key
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager.close_stream(*self._key)


class _Held:
    """The bytes one account holds; separate from the account so a finalizer can give them
    back without keeping the account alive."""

    __slots__ = ("manager", "peer", "n")

    def __init__(self, manager: ResourceManager, peer: str) -> None:
        self.manager = manager
        self.peer = peer
        self.n = 0

    def release(self) -> None:
        self.manager.uncharge(self.peer, self.n)
        self.n = 0


class BufferAccount:
    """The bytes of unfinished frames one framed stream holds, charged to its peer.

    The stream calls `resize(len(buffer))` after every change of its buffer; bytes it drops
    without calling `release()` are given back when the account is garbage-collected."""

    def __init__(self, gate: "ResourceGate", peer: str, protocol: str) -> None:
        self._gate = gate
        self._held = _Held(gate.manager, peer)
        self.peer = peer
        self.protocol = protocol
        weakref.finalize(self, self._held.release)

    @property
    def held(self) -> int:
        return self._held.n

    def room(self) -> int:
        """Further bytes this stream may buffer now."""
        return self._gate.manager.buffer_room(self.peer)

    def resize(self, n: int) -> Refusal | None:
        """Hold `n` bytes from now on. Growing over a budget holds nothing more and returns the
        refusal (counted and warned); shrinking always succeeds."""
        delta = n - self._held.n
        if delta > 0:
            why = self._gate.manager.charge(self.peer, delta)
            if why is not None:
                self._gate.refused(why, self.peer, self.protocol)
                return why
        else:
            self._gate.manager.uncharge(self.peer, -delta)
        self._held.n = n
        return None

    def release(self) -> None:
        self._held.release()


class WindowBudget:
    """Yamux receive-window growth charged to peers (see module doc)."""

    def __init__(self, gate: "ResourceGate") -> None:
        self._gate = gate

    def grow(self, peer: str, n: int) -> int:
        """Charge up to `n` bytes of window growth to `peer`; returns the bytes charged."""
        got = self._gate.manager.reserve(peer, n)
        if got < n:
            self._gate.m_refusals.labels(Refusal.WINDOW_CAPPED.value).inc()
        return got

    def give_back(self, peer: str, n: int) -> None:
        """Give back `n` bytes charged by `grow` (the stream is gone)."""
        self._gate.manager.uncharge(peer, n)


class ResourceGate:
    """Limits, deadlines and their metrics for one node (see module docstring)."""

    def __init__(self, limits: ResourceLimits, deadlines: StreamDeadlines,
                 registry: CollectorRegistry) -> None:
        self.manager = ResourceManager(limits)
        self.deadlines = deadlines
        self._warned: dict[tuple[str, str], float] = {}
        self._conns: dict[int, tuple[Any, str, str]] = {}   # id(conn) -> (conn, peer, subnet)
        self.m_refusals = metric(
            registry, Counter, "fognode_node_resource_refusals_total",
            "Streams, connections and buffered bytes refused by the resource manager",
            ["reason"])
        self.m_deadlines = metric(
            registry, Counter, "fognode_node_stream_deadlines_total",
            "Streams reset because the peer sent nothing in time, by what was awaited",
            ["phase"])
        usage = self.manager.usage
        g = metric(registry, Gauge, "fognode_node_inbound_streams",
                   "Inbound streams holding a resource-manager slot")
        g.set_function(lambda: usage.streams)
        g = metric(registry, Gauge, "fognode_node_stream_buffered_bytes",
                   "Bytes of unfinished frames held for peers")
        g.set_function(lambda: usage.buffered)
        g = metric(registry, Gauge, "fognode_node_limited_connections",
                   "Connections holding a resource-manager slot")
        g.set_function(lambda: usage.connections)

    # -- reporting ----------------------------------------------------------------------------

    def _warn(self, kind: str, peer: str, msg: str, *args: Any, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        key = (kind, peer)
        if now - self._warned.get(key, -WARN_INTERVAL) < WARN_INTERVAL:
            return
        if len(self._warned) > 4096:
            self._warned = {k: t for k, t in self._warned.items() if now - t < WARN_INTERVAL}
        self._warned[key] = now
        log.log(level, msg, *args)

    def refused(self, why: Refusal, peer: str, what: str) -> None:
        """Count a refusal and warn (at most once per WARN_INTERVAL per peer and reason)."""
        self.m_refusals.labels(why.value).inc()
        self._warn(why.value, peer, "resource limit: refused %s from %s (%s full)", what, peer,
                   why.value)

    def deadline_missed(self, phase: Wait, peer: str, protocol: str, what: str) -> None:
        """Count a stream reset for a missed deadline (`what` says which) and warn
        (rate-limited). A stream idle between whole frames is logged at INFO: honest peers
        keep long-lived request streams (the ledger's order streams) and open a new one after
        the reset, so that is housekeeping, not a stall."""
        self.m_deadlines.labels(phase.value).inc()
        self._warn(phase.value, peer, "stream %s from %s: %s; stream reset", protocol, peer, what,
                   level=logging.INFO if phase is Wait.IDLE else logging.WARNING)

    # -- streams ------------------------------------------------------------------------------

    def open_stream(self, peer: str, protocol: str, muxed_conn: Any) -> StreamSlot | None:
        """A slot for an inbound stream on `protocol` from `peer`, or None (refusal counted)."""
        subnet = self.manager.subnet_key(remote_ip(muxed_conn))
        why = self.manager.open_stream(peer, protocol, subnet)
        if why is not None:
            self.refused(why, peer, f"a stream on {protocol}")
            return None
        return StreamSlot(self.manager, (peer, protocol, subnet))

    def account(self, peer: str, protocol: str) -> BufferAccount:
        return BufferAccount(self, peer, protocol)

    def window_budget(self) -> WindowBudget:
        return WindowBudget(self)

    # -- connections --------------------------------------------------------------------------

    def admit_connection(self, conn: Any) -> bool:
        """Take a slot for a new swarm connection; False (refusal counted) when its peer or its
        subnet is full: the caller closes it. Slots of connections that closed without a
        disconnected notice (a close racing the connected one) are given back first."""
        for key, (c, p, net) in list(self._conns.items()):
            if getattr(c, "is_closed", False):
                del self._conns[key]
                self.manager.close_connection(p, net)
        peer = str(conn.muxed_conn.peer_id)
        subnet = self.manager.subnet_key(remote_ip(conn.muxed_conn))
        why = self.manager.open_connection(peer, subnet)
        if why is not None:
            self.refused(why, peer, "a connection")
            return False
        self._conns[id(conn)] = (conn, peer, subnet)
        return True

    def connection_closed(self, conn: Any) -> None:
        """Give back the slot of a connection admitted before (no-op for a refused one)."""
        held = self._conns.pop(id(conn), None)
        if held is not None:
            self.manager.close_connection(held[1], held[2])


__all__ = ["ResourceGate", "StreamSlot", "BufferAccount", "WindowBudget", "remote_ip"]
