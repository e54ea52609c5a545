"""Ping connected peers with libp2p ping (`/ipfs/ping/1.0.0`) and keep their RTT: the trio
adapter of node/latency.py.

`Pinger.run` wakes when a ping is due (or a peer connects), starts at most
`PingSettings.concurrency` pings at once, each under `PingSettings.timeout`, and hands results
to the `LatencyTracker`. A ping opens a stream, sends 32 random bytes and reads them back; the
round trip is timed with `time.perf_counter` (py-libp2p's own ping helper rounds to whole
milliseconds, which reads 0 on a LAN). Every host answers pings: py-libp2p registers the
handler by default, as every libp2p implementation does.

Metrics: `fognode_node_ping_rtt_seconds` (histogram of answered pings),
`fognode_node_pings_total{outcome}` (ok, failed), `fognode_node_ping_unresponsive_total`
(peers that failed `failures` pings in a row; each is also logged and passed to
`on_unresponsive`, the connection manager's signal).
"""
from __future__ import annotations

import logging
import os
import random
import time
from typing import Any, Awaitable, Callable

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram

from fognode.node.latency import LatencyTracker, PingSettings
from fognode.node.metrics import metric

log = logging.getLogger("fognode.ping")

PING_PROTOCOL = "/ipfs/ping/1.0.0"
PING_SIZE = 32
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
               10.0)

PingFn = Callable[[str], Awaitable[float]]


async def libp2p_ping(host: Any, peer_id: str) -> float:
    """One libp2p ping to a connected peer over a new stream; returns the RTT in seconds.
    Raises whatever opening or using the stream raises, ValueError for a wrong echo or when
    the peer has no connection: py-libp2p's new_stream would dial it, and a ping must not
    bring back a peer that was just disconnected or trimmed. The caller puts the deadline."""
    from libp2p.custom_types import TProtocol
    from libp2p.io.utils import read_exactly
    from libp2p.peer.id import ID

    pid = ID.from_base58(peer_id)
    if not host.get_network().get_connections(pid):
        raise ValueError(f"ping to {peer_id}: not connected")
    stream = await host.new_stream(pid, [TProtocol(PING_PROTOCOL)])
    try:
        payload = os.urandom(PING_SIZE)
        t0 = time.perf_counter()
        await stream.write(payload)
        echo = await read_exactly(stream, PING_SIZE)
        rtt = time.perf_counter() - t0
        if echo != payload:
            raise ValueError(f"ping to {peer_id}: the echo differs from what was sent")
    except BaseException:
        with trio.CancelScope(shield=True):
            try:
                await stream.reset()
            except Exception:
                pass
        raise
    try:
        await stream.close()
    except Exception:       # the peer went away after answering: the RTT stands
        pass
    return rtt


class Pinger:
    """Pings every connected peer periodically. `connected`/`disconnected` come from the
    host's connection events; `latency(peer)` is the smoothed RTT in seconds or None."""

    def __init__(self, settings: PingSettings, ping: PingFn, metrics: CollectorRegistry, *,
                 on_unresponsive: Callable[[str], None] | None = None,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.tracker = LatencyTracker(settings, rng or random.Random())
        self._ping = ping
        self._on_unresponsive = on_unresponsive
        self._wake = trio.Event()
        self.m_rtt = metric(metrics, Histogram, "fognode_node_ping_rtt_seconds",
                            "Round-trip time of answered libp2p pings", buckets=RTT_BUCKETS)
        self.m_pings = metric(metrics, Counter, "fognode_node_pings_total",
                              "libp2p pings sent to peers, by outcome", ["outcome"])
        self.m_unresponsive = metric(metrics, Counter, "fognode_node_ping_unresponsive_total",
                                     "Peers that failed ping_failures pings in a row")

    def connected(self, peer: str) -> None:
        self.tracker.connected(peer, trio.current_time())
        self._wake.set()

    def disconnected(self, peer: str) -> None:
        self.tracker.disconnected(peer)

    def latency(self, peer: str) -> float | None:
        return self.tracker.latency(peer)

    async def run(self) -> None:
        """Serve until cancelled. Never raises for a peer's failure."""
        limit = self.settings.concurrency
        in_flight = [0]
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                for peer in self.tracker.due(now, limit - in_flight[0]):
                    in_flight[0] += 1
                    nursery.start_soon(self._one, peer, in_flight)
                nxt = self.tracker.next_due()
                self._wake = trio.Event()
                if in_flight[0] >= limit:
                    nxt = None     # a finished ping wakes us
                with trio.move_on_at(nxt if nxt is not None else now + self.settings.interval):
                    await self._wake.wait()

    async def _one(self, peer: str, in_flight: list[int]) -> None:
        try:
            try:
                with trio.fail_after(self.settings.timeout):
                    rtt = await self._ping(peer)
            except Exception as e:     # timeout, reset, refused, gone: counted, never raised
                self.m_pings.labels("failed").inc()
                log.debug("ping %s failed: %s: %s", peer, type(e).__name__, e)
                if self.tracker.record_failure(peer, trio.current_time()):
                    self.m_unresponsive.inc()
                    log.info("peer %s did not answer %d pings in a row", peer,
                             self.settings.failures)
                    if self._on_unresponsive is not None:
                        self._on_unresponsive(peer)
                return
            self.m_pings.labels("ok").inc()
            self.m_rtt.observe(rtt)
            self.tracker.record_rtt(peer, rtt, trio.current_time())
        finally:
            in_flight[0] -= 1
            self._wake.set()
