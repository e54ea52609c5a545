"""The node's live figures: a small JSON digest of its own Prometheus registry.

`monitor.figures` (and so `fognode-cli top` and the dashboard's node page) reads these every
second or two. Counters and the loop-lag histogram are cumulative, as in Prometheus: a client
turns two readings into rates and the lag of the interval between them (`delta_lag` in the
dashboard's JS, `tools/top.py` in Python). No trio: the caller passes the time.
"""
from __future__ import annotations

import math
import os
from typing import Any

from prometheus_client import CollectorRegistry

LAG = "fognode_node_event_loop_lag_seconds"
SUMMED = {  # figure -> sample name, summed over its labels (topic, method, ...)
    "gossip_in": "fognode_node_gossip_messages_in_total",
    "gossip_out": "fognode_node_gossip_messages_out_total",
    "gossip_drops": "fognode_node_gossip_drops_total",
    "rpc_requests": "fognode_node_rpc_request_seconds_count",
    "rpc_seconds": "fognode_node_rpc_request_seconds_sum",
    "peers": "fognode_node_peers",
    "dials": "fognode_node_dials_total",
}


def figures(registry: CollectorRegistry, now: float) -> dict[str, Any]:
    """{t, cpu_s, gossip_in, gossip_out, gossip_drops, rpc_requests, rpc_seconds, peers, dials,
    loop_lag: {count, sum, buckets: [[le, cumulative count], ...]}} at wall-clock `now`; a
    figure whose metric is not registered (its role is off) is 0."""
    sums = dict.fromkeys(SUMMED, 0.0)
    by_sample = {v: k for k, v in SUMMED.items()}
    lag: dict[str, Any] = {"count": 0, "sum": 0.0, "buckets": []}
    for family in registry.collect():
        for s in family.samples:
            key = by_sample.get(s.name)
            if key is not None:
                sums[key] += s.value
            elif s.name == LAG + "_bucket":
                le = float(s.labels["le"])
                lag["buckets"].append([le if math.isfinite(le) else None, int(s.value)])
            elif s.name == LAG + "_count":
                lag["count"] = int(s.value)
            elif s.name == LAG + "_sum":
                lag["sum"] = s.value
    t = os.times()
    return {"t": now, "cpu_s": round(t.user + t.system, 3),
            **{k: (int(v) if k != "rpc_seconds" else round(v, 6)) for k, v in sums.items()},
            "loop_lag": lag}
