"""What the gossip tracker refused or lost: counted, logged once per interval, charged.

`TrackerReport.take(events, now)` counts every tracker event in metrics (per topic and reason),
adds it to the current interval's digest, and penalizes a peer that ran into one of its own
caps (at most once per peer per interval: one penalty per burst, not per message).
`flush(now)` logs the digest as at most two WARNING lines per interval (refusals with the
peers charged most; messages lost) instead of one line per event, which a flood would turn
into a flood of log lines. The tracker's sizes and peaks are exported as gauges. No trio: the
adapter passes the time in.
"""
from __future__ import annotations

import logging
import math
from collections import Counter as Tally
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from fognode.node.gossip_charges import RESOURCES, Charges
from fognode.node.gossip_tracker import Lost, Refused, TrackerEvent
from fognode.node.metrics import metric

Penalize = Callable[[str, str], None]


class TrackerReport:
    def __init__(self, metrics: CollectorRegistry, charges: Charges, *, penalize: Penalize,
                 peer_id_of: Callable[[bytes], str], interval: float,
                 log: logging.Logger) -> None:
        self.penalize = penalize
        self.peer_id_of = peer_id_of
        self.interval = interval
        self.log = log
        self.m_refused = metric(metrics, Counter, "fognode_node_gossip_refused_total",
                                "Gossip tracker work refused (not delivered, not tracked or "
                                "not pulled), per topic and reason", ["topic", "reason"])
        self.m_skipped = metric(metrics, Counter, "fognode_node_gossip_skipped_total",
                                "Gossip seqs never pulled: past the window, over a cap, or "
                                "of an origin in back-off", ["topic"])
        self.m_lost = metric(metrics, Counter, "fognode_node_gossip_lost_total",
                             "Gossip messages that could not be fetched (origin forgot them)",
                             ["topic"])
        size = metric(metrics, Gauge, "fognode_node_gossip_tracker_size",
                      "Gossip tracker state now: origins, missing seqs, pulls in flight, in "
                      "total and for the peer charged most", ["resource"])
        peak = metric(metrics, Gauge, "fognode_node_gossip_tracker_peak",
                      "Gossip tracker state, highest since start (same resources)",
                      ["resource"])
        for r in RESOURCES:
            size.labels(r).set_function(lambda r=r: charges.sizes()[r])
            peak.labels(r).set_function(lambda r=r: charges.peaks[r])
        self._next_flush = -math.inf
        self._penalized: set[str] = set()
        self._reset()

    def _reset(self) -> None:
        self._refused: Tally[str] = Tally()
        self._skipped = 0
        self._by_peer: Tally[str] = Tally()
        self._lost: Tally[str] = Tally()
        self._lost_example: Lost | None = None
        self._penalized.clear()

    def pending(self) -> bool:
        return bool(self._refused or self._lost)

    def next_flush(self) -> float:
        """When `flush` has something to log (math.inf if nothing is pending)."""
        return self._next_flush if self.pending() else math.inf

    def take(self, events: list[TrackerEvent], now: float) -> None:
        if not self.pending():
            self._next_flush = max(self._next_flush, now)   # first event: log at once
        for ev in events:
            if isinstance(ev, Refused):
                self.m_refused.labels(ev.topic, ev.reason.value).inc()
                if ev.reason.queued:
                    continue                  # counted; a pull put off is no news to log
                if ev.skipped:
                    self.m_skipped.labels(ev.topic).inc(ev.skipped)
                self._refused[ev.reason.value] += 1
                self._skipped += ev.skipped
                self._by_peer[ev.peer or "(unknown)"] += 1
                if ev.reason.per_peer and ev.peer and ev.peer not in self._penalized:
                    self._penalized.add(ev.peer)
                    self.penalize(ev.peer, f"gossip: over its {ev.reason.value} cap")
            elif isinstance(ev, Lost):
                self.m_lost.labels(ev.topic).inc(ev.count)
                self._lost[ev.reason] += ev.count
                if self._lost_example is None:
                    self._lost_example = ev

    def flush(self, now: float) -> None:
        """Log the digest if one is pending and the interval has passed."""
        if not self.pending() or now < self._next_flush:
            return
        if self._refused:
            reasons = ", ".join(f"{r} {n}" for r, n in self._refused.most_common())
            peers = ", ".join(f"{p} ({n})" for p, n in self._by_peer.most_common(3))
            self.log.warning("gossip: refused tracking work %d time(s) in %.0f s (%s; %d seqs "
                             "skipped); charged to %s", sum(self._refused.values()),
                             self.interval, reasons, self._skipped, peers)
        if self._lost and self._lost_example is not None:
            ex = self._lost_example
            reasons = ", ".join(f"{r} {n}" for r, n in self._lost.most_common())
            self.log.warning("gossip: %d message(s) could not be fetched from any peer (%s); "
                             "e.g. %d on %s from %s (seqs %s%s)", sum(self._lost.values()),
                             reasons, ex.count, ex.topic, self.peer_id_of(ex.origin),
                             list(ex.sample), "..." if ex.count > len(ex.sample) else "")
        self._reset()
        self._next_flush = now + self.interval
