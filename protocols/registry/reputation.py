"""Global reputation scores per service, kept between EigenTrust recomputes (sans-IO).

The role takes `ObservationBook.frozen_sums()` on the event loop (one dict copy per service)
and runs `compute_sums(sums, pretrusted, alpha)` in a worker thread: it builds the local trust
matrices (`local_trusts`, which imports numpy on first use) and runs EigenTrust on them (`compute`,
pure). `snapshot(book)` is both steps of `local_trusts` at once, for callers off the loop.
`ReputationTable.apply(results)` installs the scores and returns ReputationUpdated events for
scores that moved and the app scores to feed GossipSub. Scores are relative: n * t_i, so 1.0 is an
average peer, 0.0 a peer nobody vouches for.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fognode.protocols.registry.events import ReputationUpdated
from fognode.protocols.registry.observation import (ALL_SERVICES, LocalTrust, ObservationBook, Sums,
                                                    local_trust)

if TYPE_CHECKING:   # numpy: imported by `compute` (a worker thread), not when the role's modules load
    from fognode.protocols.registry.eigentrust import TrustResult

MAX_APP_SCORE = 10.0
MAX_EVENTS_PER_RECOMPUTE = 256


@dataclass(frozen=True)
class Recompute:
    results: dict[str, TrustResult]
    seconds: float


def local_trusts(sums: Sums) -> dict[str, LocalTrust]:
    """Local trust of every service plus the all-services matrix; pure (any thread)."""
    out = {s: local_trust(sums, s) for s in sorted(sums)}
    out[ALL_SERVICES] = local_trust(sums, ALL_SERVICES)
    return out


def snapshot(book: ObservationBook) -> dict[str, LocalTrust]:
    """`local_trusts` of the book now: O(observation pairs) of Python, so not on the event loop
    (tens of ms at 500 peers with 60 observations each)."""
    return local_trusts(book.frozen_sums())


def compute_sums(sums: Sums, pretrusted: list[str], alpha: float) -> Recompute:
    """`compute` on the local trust built from `sums` (`ObservationBook.frozen_sums()`): the
    whole recompute, for a worker thread; its `seconds` include building the matrices."""
    t0 = time.perf_counter()
    rc = compute(local_trusts(sums), pretrusted, alpha)
    return Recompute(rc.results, time.perf_counter() - t0)


def compute(inputs: dict[str, LocalTrust], pretrusted: list[str], alpha: float) -> Recompute:
    """EigenTrust for every service; pure and thread-safe (numpy releases the GIL in places).
    The first call imports numpy (eigentrust.py): kept off the daemon's start."""
    from fognode.protocols.registry.eigentrust import global_trust

    t0 = time.perf_counter()
    results = {s: global_trust(lt.peers, lt.rows, lt.cols, lt.vals, pretrusted, alpha=alpha)
               for s, lt in inputs.items()}
    return Recompute(results, time.perf_counter() - t0)


class ReputationTable:
    def __init__(self, *, change_threshold: float = 0.05) -> None:
        self.change_threshold = change_threshold
        self._scores: dict[str, dict[str, float]] = {}
        self.last_seconds: float | None = None
        self.recomputes = 0

    def score(self, peer: str, service: str = ALL_SERVICES) -> float:
        """Relative global trust of `peer` for `service` (0.0 when nobody vouches for it)."""
        return self._scores.get(service, {}).get(peer, 0.0)

    def has_service(self, service: str) -> bool:
        return service in self._scores

    def services(self) -> list[str]:
        return sorted(self._scores)

    def scores(self, service: str = ALL_SERVICES) -> dict[str, float]:
        return dict(self._scores.get(service, {}))

    def top(self, service: str = ALL_SERVICES, n: int = 20) -> list[tuple[str, float]]:
        items = sorted(self._scores.get(service, {}).items(), key=lambda kv: (-kv[1], kv[0]))
        return items[:n]

    def apply(self, rc: Recompute) -> tuple[list[ReputationUpdated], dict[str, float]]:
        """Install new scores; returns (events for moved scores, app scores per peer)."""
        events: list[ReputationUpdated] = []
        for service, res in rc.results.items():
            n = len(res.peers)
            new = {p: float(t) * n for p, t in zip(res.peers, res.trust)}
            old = self._scores.get(service, {})
            for p, s in new.items():
                prev = old.get(p, 0.0)
                if abs(s - prev) >= self.change_threshold * max(1.0, prev) \
                        and len(events) < MAX_EVENTS_PER_RECOMPUTE:
                    events.append(ReputationUpdated(p, service, s, prev))
            self._scores[service] = new
        self.last_seconds = rc.seconds
        self.recomputes += 1
        app = {p: min(MAX_APP_SCORE, s) for p, s in self._scores.get(ALL_SERVICES, {}).items()}
        return events, app
