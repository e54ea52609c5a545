"""Round-trip times to connected peers: when to ping whom, and the smoothed result (sans-IO).

`LatencyTracker` keeps, per connected peer, an EWMA of ping round trips (seconds), the number
of failed pings in a row and when the next ping is due. Time is an argument; randomness comes
from the `random.Random` handed in. The trio adapter is node/ping.py.

Schedule: a newly connected peer is first pinged after a short random delay (up to
`first_delay`, so a burst of new connections does not ping in one burst), then every
`interval` seconds, each wait jittered by +-`jitter` (a fraction) so pings of many peers
spread out. A ping in flight is not started again. `failures` failed pings in a row make the
peer *unresponsive* (`record_failure` returns True once, when the threshold is crossed); one
answered ping clears it. The next due time is found with a heap (O(log n) per ping).
"""
from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from typing import Any

from fognode.node.errors import ConfigError

EWMA_WEIGHT = 0.3          # weight of a new sample in the smoothed RTT


@dataclass(frozen=True)
class PingSettings:
    """The ping keys of [overlay] (node.toml)."""

    interval: float = 20.0     # seconds between two pings of one peer (jittered)
    timeout: float = 10.0      # seconds one ping may take (stream open + round trip)
    failures: int = 3          # failed pings in a row before a peer counts as unresponsive
    jitter: float = 0.25       # +- this fraction of `interval` on every wait
    first_delay: float = 1.0   # at most this many seconds from connecting to the first ping
    concurrency: int = 8       # pings in flight at once at most

    @classmethod
    def from_overlay(cls, config: Any) -> "PingSettings":
        """From an OverlayConfig (node/host.py): its `ping_*` fields."""
        return cls(interval=config.ping_interval, timeout=config.ping_timeout,
                   failures=config.ping_failures)

    def validate(self) -> None:
        """Raise ConfigError(key="overlay.ping_<key>") naming the first wrong key."""
        for key in ("interval", "timeout"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= 3600):
                raise ConfigError(f"must be a number of seconds in (0, 3600], got {v!r}",
                                  key=f"overlay.ping_{key}")
        if not 1 <= self.failures <= 1000:
            raise ConfigError(f"must be between 1 and 1000, got {self.failures}",
                              key="overlay.ping_failures")


@dataclass
class _Peer:
    next_at: float
    rtt: float | None = None
    failures: int = 0
    samples: int = 0
    in_flight: bool = False


@dataclass
class LatencyTracker:
    settings: PingSettings
    rng: random.Random = field(default_factory=random.Random)
    _peers: dict[str, _Peer] = field(default_factory=dict)
    _heap: list[tuple[float, str]] = field(default_factory=list)

    # -- connections ----------------------------------------------------------------------

    def connected(self, peer: str, now: float) -> None:
        if peer in self._peers:
            return
        first = now + self.rng.uniform(0, self.settings.first_delay)
        self._schedule(peer, _Peer(next_at=first), first)

    def disconnected(self, peer: str) -> None:
        self._peers.pop(peer, None)      # its heap entries are skipped when they come up

    # -- schedule -------------------------------------------------------------------------

    def _schedule(self, peer: str, p: _Peer, at: float) -> None:
        p.next_at = at
        self._peers[peer] = p
        heapq.heappush(self._heap, (at, peer))

    def _wait(self) -> float:
        j = self.settings.jitter
        return self.settings.interval * self.rng.uniform(1.0 - j, 1.0 + j)

    def due(self, now: float, limit: int) -> list[str]:
        """Up to `limit` peers to ping now; each is marked in flight until its result."""
        out: list[str] = []
        while self._heap and len(out) < limit and self._heap[0][0] <= now:
            at, peer = heapq.heappop(self._heap)
            p = self._peers.get(peer)
            if p is None or p.next_at != at or p.in_flight:
                continue                  # stale entry (disconnected or rescheduled)
            p.in_flight = True
            out.append(peer)
        return out

    def next_due(self) -> float | None:
        """When the earliest ping is due (None if no peer); stale entries are dropped."""
        while self._heap:
            at, peer = self._heap[0]
            p = self._peers.get(peer)
            if p is not None and p.next_at == at and not p.in_flight:
                return at
            heapq.heappop(self._heap)
        return None

    # -- results --------------------------------------------------------------------------

    def record_rtt(self, peer: str, rtt: float, now: float) -> None:
        p = self._peers.get(peer)
        if p is None:
            return
        p.rtt = rtt if p.rtt is None else (1 - EWMA_WEIGHT) * p.rtt + EWMA_WEIGHT * rtt
        p.samples += 1
        p.failures = 0
        p.in_flight = False
        self._schedule(peer, p, now + self._wait())

    def record_failure(self, peer: str, now: float) -> bool:
        """Count a failed ping; True exactly when the peer has now failed `failures` in a row."""
        p = self._peers.get(peer)
        if p is None:
            return False
        p.failures += 1
        p.in_flight = False
        self._schedule(peer, p, now + self._wait())
        return p.failures == self.settings.failures

    # -- queries --------------------------------------------------------------------------

    def latency(self, peer: str) -> float | None:
        """Smoothed RTT in seconds, None before the first answered ping."""
        p = self._peers.get(peer)
        return None if p is None else p.rtt

    def failures(self, peer: str) -> int:
        p = self._peers.get(peer)
        return 0 if p is None else p.failures

    def unresponsive(self) -> list[str]:
        return [k for k, p in self._peers.items() if p.failures >= self.settings.failures]

    def __len__(self) -> int:
        return len(self._peers)
