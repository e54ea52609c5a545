"""Hosted data's Prometheus metrics (names `fognode_onion_hosted_<name>_<unit>`)."""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from fognode.node.metrics import metric


@dataclass(frozen=True)
class HostingMetrics:
    requests: Counter         # shard requests at this host, by outcome (served or the refusal reason)
    stored_bytes: Gauge       # bytes of shards this host keeps
    fetches: Counter          # shard fetches by this node as accessor, by outcome
    deploys: Counter          # deploys by this node, by outcome
    order_redrives: Counter   # a deploy's ledger orders driven again after a NotCertified, by order

    @staticmethod
    def create(reg: CollectorRegistry) -> "HostingMetrics":
        return HostingMetrics(
            requests=metric(reg, Counter, "fognode_onion_hosted_requests_total",
                            "Shard requests served or refused by this host, by outcome", ["outcome"]),
            stored_bytes=metric(reg, Gauge, "fognode_onion_hosted_stored_bytes", "Bytes of shards this host keeps"),
            fetches=metric(reg, Counter, "fognode_onion_hosted_fetches_total",
                           "Shard fetches by this node as an accessor, by outcome", ["outcome"]),
            deploys=metric(reg, Counter, "fognode_onion_hosted_deploys_total", "Deploys by this node, by outcome",
                           ["outcome"]),
            order_redrives=metric(reg, Counter, "fognode_onion_hosted_order_redrives_total",
                                  "A deploy's ledger orders driven again after the ledger did not certify them in "
                                  "time, by order (escrow: the owner's; first_note: the host's payout)", ["order"]),
        )
