"""What the registry role does with a refusal of its core (`actions.Refused`).

Every refusal is counted in the registry's rejection metric (by what and reason). Then:

- a peer fault (`PEER_FAULTS`: bytes an honest peer never sends, forged or malformed) charges
  that peer through the overlay (its rate-limited WARNING says why);
- an observer over the observation rate limit (RATE_LIMITED: `registry.observation_rate_per_minute`,
  burst `registry.observation_burst`) is logged at INFO, at most once per observer per
  `RATE_LOG_INTERVAL` with the count held back since: an FL aggregator reports every
  participant of every round, and beyond the limit its reports stop counting towards
  reputation, which an operator should see;
- the rest (stale, expired, duplicate, capacity: clocks and races) only at DEBUG.

Nothing but peer faults is held against anyone.
"""
from __future__ import annotations

import logging
from typing import Callable

from prometheus_client import Counter

from fognode.node.faults import LogRateLimiter
from fognode.protocols.registry.actions import Refused
from fognode.protocols.registry.errors import RejectReason

log = logging.getLogger("fognode.registry")

# refusals that an honest peer never causes (the rest: clocks, races, rates, capacity)
PEER_FAULTS = frozenset({RejectReason.OVERSIZE, RejectReason.MALFORMED, RejectReason.UNSIGNED,
                         RejectReason.BAD_SIGNATURE, RejectReason.FOREIGN_KEY,
                         RejectReason.WRONG_KEY, RejectReason.SPOOFED_ORIGIN})
RATE_LOG_INTERVAL = 60.0   # seconds: the rate limit's own window (observations per minute)


class RefusalLog:
    """Counts, charges and logs the core's refusals (module docstring). `penalize(peer,
    reason, protocol)` is the overlay's; `me` is this node's peer id (never charged)."""

    def __init__(self, rejected: Counter, penalize: Callable[..., None], me: str) -> None:
        self.rejected = rejected
        self.penalize = penalize
        self.me = me
        self.rate_lines = LogRateLimiter(interval=RATE_LOG_INTERVAL)

    def refused(self, a: Refused, now: float) -> None:
        self.rejected.labels(a.what, a.reason.value).inc()
        if a.reason in PEER_FAULTS and a.peer and a.peer != self.me:
            self.penalize(a.peer, f"refused {a.what}: {a.detail}", protocol=f"registry/{a.what}")
        elif a.reason is RejectReason.RATE_LIMITED:
            held = self.rate_lines.admit((a.what, a.peer), now)
            if held is not None:
                more = f" ({held} more since the last line)" if held else ""
                log.info("registry: %ss from %s over the rate limit are not counted: %s%s",
                         a.what, a.peer, a.detail, more)
            else:
                log.debug("refused %s from %s: %s", a.what, a.peer, a.detail)
        else:   # stale, expired, duplicate: not held against anyone
            log.debug("refused %s from %s: %s", a.what, a.peer, a.detail)
