"""The market role's Prometheus metrics (per node registry; survive role restarts via node.metrics)."""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fognode.node.metrics import metric


@dataclass(frozen=True)
class MarketMetrics:
    offers_known: Gauge
    own_offers: Gauge
    contracts_active: Gauge
    rejected: Counter
    agreements: Counter
    negotiations_failed: Counter
    tasks: Counter
    fuel: Counter
    paid: Counter
    breaches: Counter
    job_seconds: Histogram

    @staticmethod
    def create(reg: CollectorRegistry) -> "MarketMetrics":
        return MarketMetrics(
            offers_known=metric(reg, Gauge, "fognode_market_offers_known",
                                "Offers in this node's order book"),
            own_offers=metric(reg, Gauge, "fognode_market_own_offers", "Offers this node publishes"),
            contracts_active=metric(reg, Gauge, "fognode_market_contracts_active", "Contracts not finished yet"),
            rejected=metric(reg, Counter, "fognode_market_rejected_total",
                            "Market messages refused, by kind and reason", ["what", "reason"]),
            agreements=metric(reg, Counter, "fognode_market_agreements_total",
                              "Agreements concluded, by our side", ["role"]),
            negotiations_failed=metric(reg, Counter, "fognode_market_negotiations_failed_total",
                                       "Negotiations that ended without an agreement"),
            tasks=metric(reg, Counter, "fognode_market_tasks_total",
                         "WASM tasks, by our side and outcome", ["role", "outcome"]),
            fuel=metric(reg, Counter, "fognode_market_fuel_total",
                        "WASM fuel consumed by tasks, by our side", ["role"]),
            paid=metric(reg, Counter, "fognode_market_paid_micro_total",
                        "Micro-units moved by debit-note payouts, by our side", ["role"]),
            breaches=metric(reg, Counter, "fognode_market_sla_breaches_total",
                            "Breaches seen (wrong result, unresponsive, unpaid, disputed)", ["kind"]),
            job_seconds=metric(reg, Histogram, "fognode_market_job_seconds",
                               "Wall time of a request or burst, request to verified results",
                               buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)),
        )
