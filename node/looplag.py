"""Event-loop lag: how late the daemon's trio loop wakes a task that asked to sleep.

Everything a node does for the network (stream negotiation, gossip, RPC) runs on one trio
loop; when something holds it (a CPU-bound call in the loop, a thread holding the GIL, a
starved machine) every peer of this node sees it slow, and libp2p negotiations time out. The
lag is the first figure to read then: `fognode_node_event_loop_lag_seconds` (a histogram), and
a warning in the log, at most once a minute, when one wake-up was over a second late.
"""
from __future__ import annotations

import logging

import trio
from prometheus_client import CollectorRegistry, Histogram

from fognode.node.metrics import metric

log = logging.getLogger("fognode.daemon")

INTERVAL = 0.25        # seconds between probes
WARN_LAG = 1.0         # a wake-up this late is logged
WARN_EVERY = 60.0      # at most one warning per this many seconds


async def watch_loop_lag(registry: CollectorRegistry, *, interval: float = INTERVAL,
                         warn_lag: float = WARN_LAG) -> None:
    """Sleep `interval` again and again and record how late each wake-up was (forever)."""
    lag_h = metric(registry, Histogram, "fognode_node_event_loop_lag_seconds",
                   "How late the event loop woke a task that slept (probe every 0.25 s)",
                   buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    warned_at = -WARN_EVERY
    while True:
        asked = trio.current_time() + interval
        await trio.sleep_until(asked)
        now = trio.current_time()
        lag = max(0.0, now - asked)
        lag_h.observe(lag)
        if lag >= warn_lag and now - warned_at >= WARN_EVERY:
            warned_at = now
            log.warning("the event loop woke %.1f s late: something holds it (CPU starvation, "
                        "a blocking call); peers see this node slow", lag)
