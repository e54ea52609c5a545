"""Which of the node's Prometheus metrics the monitor records, and how one sample is taken.

`SAMPLED` is the table: one line per recorded series, naming the Prometheus metric family, the
labels a sample must carry (all other label sets are summed) and the way a value is made:

- GAUGE: the current value (summed over matching label sets),
- RATE: a counter's increase per second since the previous sample,
- MEAN: a histogram's mean over the interval (increase of _sum / increase of _count),
- P99 (or any `q`): a histogram's quantile over the interval, from its bucket increases
  (the upper bound of the bucket the quantile falls in, as a conservative reading).

A metric that is not (yet) in the registry (a role that is not running, one that has not
landed) gives no sample: nothing is recorded for it. Adding a series is one line here; the
series name is what `monitor.series`, the detectors and the alert rules use.

`Sampler.sample(families, dt)` is sans-IO: it is handed `registry.collect()` and returns
{series name: value}. `totals(by_family, spec)` is the one reading of a series' metric (its
cumulative value, count and buckets); the sampler and the live figures (core.py,
`monitor.figures`) both read through it.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Iterable


class Kind(enum.Enum):
    GAUGE = "gauge"
    RATE = "rate"
    MEAN = "mean"
    QUANTILE = "quantile"


@dataclass(frozen=True)
class Sampled:
    name: str                      # the series name (dots and underscores; used as a file name)
    family: str                    # the Prometheus metric family (without _total/_sum/_bucket)
    kind: Kind
    help: str
    labels: tuple[tuple[str, str], ...] = ()   # only samples carrying these labels count
    q: float = 0.99                # for QUANTILE
    seasonal: bool = False         # has a daily cycle: the seasonal detector watches it too
    unit: str = ""
    floor: float = 0.0             # changes smaller than this are never anomalies (noise floor)


SAMPLED: tuple[Sampled, ...] = (
    Sampled("node.peers", "fognode_node_peers", Kind.GAUGE, "connected peers", seasonal=True, floor=1),
    Sampled("node.loop_lag_p99", "fognode_node_event_loop_lag_seconds", Kind.QUANTILE,
            "event-loop lag, 99th percentile over the interval", unit="s", floor=0.05),
    Sampled("node.loop_lag_mean", "fognode_node_event_loop_lag_seconds", Kind.MEAN,
            "event-loop lag, mean over the interval", unit="s", floor=0.02),
    Sampled("node.rpc_latency_mean", "fognode_node_rpc_request_seconds", Kind.MEAN,
            "control-socket request latency, mean", unit="s", floor=0.02),
    Sampled("node.rpc_requests_rate", "fognode_node_rpc_request_seconds", Kind.RATE,
            "control-socket requests per second", unit="1/s", floor=1),
    Sampled("node.gossip_in_rate", "fognode_node_gossip_messages_in", Kind.RATE,
            "gossip messages received per second", unit="1/s", seasonal=True, floor=1),
    Sampled("node.gossip_out_rate", "fognode_node_gossip_messages_out", Kind.RATE,
            "gossip messages published per second", unit="1/s", seasonal=True, floor=1),
    Sampled("node.gossip_drops_rate", "fognode_node_gossip_drops", Kind.RATE,
            "gossip messages dropped per second", unit="1/s", floor=0.1),
    Sampled("node.event_drops_rate", "fognode_node_event_drops", Kind.RATE,
            "event-bus events dropped per second", unit="1/s", floor=0.1),
    Sampled("node.dials_rate", "fognode_node_dials", Kind.RATE, "outbound dials per second (every outcome)",
            unit="1/s", floor=1),
    Sampled("node.ping_rtt_mean", "fognode_node_ping_rtt_seconds", Kind.MEAN,
            "ping round-trip time to peers, mean", unit="s", floor=0.02),
    Sampled("ledger.apply_latency_mean", "fognode_ledger_apply_latency_seconds", Kind.MEAN,
            "certificate apply latency, mean", unit="s", floor=0.02),
    Sampled("ledger.applied_rate", "fognode_ledger_certificates_applied", Kind.RATE,
            "certificates applied per second", unit="1/s", floor=0.5),
    Sampled("ledger.supply", "fognode_ledger_supply_microtokens", Kind.GAUGE,
            "token supply", unit="microtokens", floor=1),
    Sampled("ledger.pending", "fognode_ledger_pending_certificates", Kind.GAUGE,
            "certificates waiting for a predecessor", floor=5),
    Sampled("fl.round_duration_mean", "fognode_fl_round_duration_seconds", Kind.MEAN,
            "FL round duration, mean of the rounds ended in the interval", unit="s", floor=1),
    Sampled("fl.rounds_rate", "fognode_fl_rounds", Kind.RATE, "FL rounds ended per second", unit="1/s", floor=0.05),
    Sampled("fl.task_starts_rate", "fognode_fl_task_process_starts", Kind.RATE,
            "FL task processes started per second", unit="1/s", floor=0.02),
    Sampled("registry.devices_online", "fognode_registry_devices_online", Kind.GAUGE,
            "devices the registry considers online", seasonal=True, floor=1),
    Sampled("network.nodes_offline", "fognode_monitor_nodes_offline", Kind.GAUGE,
            "nodes not heard from for 3 status intervals (monitor.network)", floor=1),
    # harvest (protocols/harvest/metrics.py)
    Sampled("harvest.running", "fognode_harvest_running", Kind.GAUGE,
            "1 while the harvest policy lets work run, 0 while suspended", floor=1),
    Sampled("harvest.suspensions_rate", "fognode_harvest_suspensions", Kind.RATE,
            "harvest suspensions per second (every reason counted)", unit="1/s", floor=0.05),
    Sampled("harvest.cpu_rate", "fognode_harvest_cpu_seconds", Kind.RATE,
            "CPU seconds of harvested work per second (cores busy)", unit="cores", floor=0.25),
    Sampled("harvest.fuel_rate", "fognode_harvest_fuel", Kind.RATE,
            "WASM fuel consumed by harvested jobs per second", unit="1/s", floor=1e6),
    # market (protocols/market/metrics.py)
    Sampled("market.offers", "fognode_market_offers_known", Kind.GAUGE,
            "offers in this node's order book", floor=5),
    Sampled("market.contracts_active", "fognode_market_contracts_active", Kind.GAUGE,
            "contracts not finished (negotiated, escrowed, running)", floor=2),
    Sampled("market.paid_rate", "fognode_market_paid_micro", Kind.RATE,
            "micro-units paid out by debit notes per second", unit="micro/s", floor=1000),
    Sampled("market.fuel_rate", "fognode_market_fuel", Kind.RATE,
            "WASM fuel consumed by market tasks per second (both sides)", unit="1/s", floor=1e6),
    Sampled("market.rejected_rate", "fognode_market_rejected", Kind.RATE,
            "market messages refused per second", unit="1/s", floor=0.5),
    # onion (protocols/onion/metrics.py)
    Sampled("onion.circuits_open", "fognode_onion_circuits", Kind.GAUGE, "this node's own open circuits",
            labels=(("state", "open"),), floor=2),
    Sampled("onion.relay_circuits", "fognode_onion_relay_circuits", Kind.GAUGE,
            "circuits this relay carries", floor=2),
    Sampled("onion.build_mean", "fognode_onion_circuit_build_seconds", Kind.MEAN,
            "circuit build time, mean of the builds in the interval", unit="s", floor=0.5),
    Sampled("onion.cells_rate", "fognode_onion_cells_relayed", Kind.RATE,
            "RELAY cells passed on per second", unit="1/s", floor=10),
    Sampled("onion.link_bytes_rate", "fognode_onion_link_bytes", Kind.RATE,
            "bytes on relay links per second (both directions)", unit="B/s", floor=10_000),
    Sampled("onion.stream_bytes_rate", "fognode_onion_stream_bytes", Kind.RATE,
            "payload bytes of this node's circuit streams per second", unit="B/s", floor=10_000),
    Sampled("onion.socks_rate", "fognode_onion_socks_events", Kind.RATE,
            "SOCKS connections established per second", labels=(("event", "established"),),
            unit="1/s", floor=0.5),
)

BY_NAME: dict[str, Sampled] = {s.name: s for s in SAMPLED}


def _match(labels: dict[str, str], want: tuple[tuple[str, str], ...]) -> bool:
    return all(labels.get(k) == v for k, v in want)


@dataclass
class Totals:
    """One reading of a series' metric, cumulative as Prometheus keeps it."""
    value: float = 0.0       # gauge value, counter total, or histogram _sum
    count: float = 0.0       # histogram _count
    buckets: dict[float, float] = field(default_factory=dict)   # le -> cumulative count
    seen: bool = False       # the metric exists (its role runs)


def totals(by_family: dict[str, Any], spec: Sampled) -> Totals:
    """Read `spec`'s metric from a registry snapshot ({family name: family}), summing the
    samples whose labels match."""
    t = Totals()
    fam = by_family.get(spec.family)
    if fam is None:
        return t
    for s in fam.samples:
        if not _match(s.labels, spec.labels):
            continue
        if s.name.endswith("_created"):
            continue
        t.seen = True
        if s.name.endswith("_bucket"):
            le = float(s.labels["le"])
            t.buckets[le] = t.buckets.get(le, 0.0) + s.value
        elif s.name.endswith("_count"):
            t.count += s.value
        elif s.name.endswith("_sum") or s.name in (spec.family, spec.family + "_total"):
            t.value += s.value
    return t


class Sampler:
    """Turns successive registry snapshots into series values (keeps the previous totals)."""

    def __init__(self, table: Iterable[Sampled] = SAMPLED) -> None:
        self.table = tuple(table)
        self._prev: dict[str, Totals] = {}

    def sample(self, families: Iterable[Any], dt: float) -> dict[str, float]:
        """Values of every series whose metric exists; rates and interval figures need a
        previous sample (the first call gives gauges only). `dt` > 0: seconds since then."""
        by_family = {f.name: f for f in families}
        out: dict[str, float] = {}
        for spec in self.table:
            cur = totals(by_family, spec)
            prev = self._prev.get(spec.name)
            self._prev[spec.name] = cur
            if not cur.seen:
                continue
            if spec.kind is Kind.GAUGE:
                out[spec.name] = cur.value
                continue
            if prev is None or not prev.seen or dt <= 0:
                continue
            if spec.kind is Kind.RATE:
                total, before = (cur.count, prev.count) if cur.buckets else (cur.value, prev.value)
                out[spec.name] = max(0.0, total - before) / dt   # a reset counts from zero
            elif spec.kind is Kind.MEAN:
                n = cur.count - prev.count
                if n > 0:
                    out[spec.name] = (cur.value - prev.value) / n
            else:
                v = _quantile(cur.buckets, prev.buckets, spec.q)
                if v is not None:
                    out[spec.name] = v
        return out


def _quantile(cur: dict[float, float], prev: dict[float, float], q: float) -> float | None:
    """The upper bound of the bucket holding quantile q of the observations between two
    snapshots (None without observations; the largest finite bound for the +Inf bucket)."""
    les = sorted(cur)
    inc = [(le, cur[le] - prev.get(le, 0.0)) for le in les]
    total = inc[-1][1] if inc else 0.0
    if total <= 0:
        return None
    rank = q * total
    finite = [le for le in les if math.isfinite(le)]
    for le, c in inc:
        if c >= rank:
            return le if math.isfinite(le) else (finite[-1] if finite else None)
    return None
