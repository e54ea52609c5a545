"""The gap tracker's vocabulary (sans-IO): its limits, the pulls it hands out, the events it
reports, and why it refused work.

`TrackerLimits` bounds what node/gossip_tracker.py's `SequenceTracker` may hold and how it
pulls (`problem()` says what is wrong with a set of limits; `caps()` gives the per-peer and
total caps of node/gossip_charges.py). A `PullRequest` is one pull the adapter must start and
settle. `Lost` and `Refused` are the events the adapter counts, logs and charges
(node/gossip_report.py); `Refusal` names the reasons (the label of
fognode_node_gossip_refused_total).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from fognode.node.gossip_charges import Caps

MAX_PULL_SEQS = 512        # seqs one pull request may ask for (the window is at most this)


class Refusal(str, enum.Enum):
    """Why tracker work was refused; the label of fognode_node_gossip_refused_total."""
    ORIGINS_PER_PEER = "origins_per_peer"   # the relayer already sponsors its cap of origins
    ORIGINS_TOTAL = "origins_total"         # the tracker holds its cap of origins
    MISSING_PER_PEER = "missing_per_peer"   # a gap (or back-fill) over the relayer's budget
    MISSING_TOTAL = "missing_total"         # a gap (or back-fill) over the total budget
    WINDOW = "window"                       # a jump past the window: resync from the new head
    PULLS_PER_PEER = "pulls_per_peer"       # a due pull waits: the sponsor's pulls are at cap
    PULLS_TOTAL = "pulls_total"             # a due pull waits: all pull slots are busy
    PULL_FAILURES = "pull_failures"         # an origin dropped: its pulls kept failing
    ORIGIN_BACKOFF = "origin_backoff"       # a gap of a dropped origin, not pulled
    INBOX_FULL = "inbox_full"               # its queue was the longest of a full inbox

    @property
    def queued(self) -> bool:
        """True when the work was only put off (a due pull waiting for a slot)."""
        return self in (Refusal.PULLS_PER_PEER, Refusal.PULLS_TOTAL)

    @property
    def per_peer(self) -> bool:
        """True for a cap of the peer's own that refused work (grounds for a penalty)."""
        return self in (Refusal.ORIGINS_PER_PEER, Refusal.MISSING_PER_PEER)


@dataclass(frozen=True)
class TrackerLimits:
    window: int = 256              # seqs an origin may have open beyond its settled prefix
    backfill: int = 64             # seqs before the first one seen that are pulled (optional)
    max_origins: int = 8192        # (topic, origin) pairs tracked in total
    max_origins_per_peer: int = 1024
    max_missing: int = 16384       # missing seqs in total
    max_missing_per_peer: int = 2048
    max_pulls: int = 64            # pulls in flight in total
    max_pulls_per_peer: int = 16
    pull_delay: float = 0.3        # seconds a gap may heal by itself before it is pulled
    retry: float = 1.0             # seconds before the first retry of a failed pull; doubles
    max_attempts: int = 5          # failed pulls in a row before an origin is dropped
    drop_backoff: float = 30.0     # seconds a dropped origin stays quiet; doubles per drop
    idle_evict: float = 300.0      # an origin idle this long may make room for a new one

    def problem(self) -> str:
        """What is wrong with these limits ("" if nothing)."""
        if not 1 <= self.window <= MAX_PULL_SEQS:
            return f"window must be between 1 and {MAX_PULL_SEQS}, got {self.window}"
        if not 0 <= self.backfill < self.window:
            return (f"backfill must be 0 or more and below the window ({self.window}), got "
                    f"{self.backfill}")
        for name in ("max_origins", "max_origins_per_peer", "max_missing",
                     "max_missing_per_peer", "max_pulls", "max_pulls_per_peer", "max_attempts"):
            if getattr(self, name) < 1:
                return f"{name} must be at least 1, got {getattr(self, name)}"
        for name in ("pull_delay", "retry", "drop_backoff", "idle_evict"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                return f"{name} must be a finite number of seconds >= 0, got {v}"
        return ""

    def caps(self) -> Caps:
        return Caps(self.max_origins, self.max_origins_per_peer, self.max_missing,
                    self.max_missing_per_peer, self.max_pulls, self.max_pulls_per_peer)


@dataclass(frozen=True)
class PullRequest:
    topic: str
    origin: bytes
    epoch: int
    seqs: tuple[int, ...]
    sources: tuple[str, ...]   # peers that relayed this origin lately, newest first
    ticket: int                # hand back to pull_done


@dataclass(frozen=True)
class Lost:
    """Messages the origin published that we will not deliver."""
    topic: str
    origin: bytes
    epoch: int
    count: int
    sample: tuple[int, ...]    # the first few lost seqs, for the log
    reason: str                # "gone" (origin forgot), "unreachable" (dropped), "window"


@dataclass(frozen=True)
class Refused:
    """Work refused and charged to `peer`; `skipped` seqs will never be pulled."""
    topic: str
    peer: str
    reason: Refusal
    skipped: int = 0


TrackerEvent = Lost | Refused
