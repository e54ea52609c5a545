"""The registry's Prometheus metrics (per node registry; survive role restarts via node.metrics)."""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fognode.node.metrics import metric


@dataclass(frozen=True)
class RegistryMetrics:
    devices_known: Gauge
    devices_online: Gauge
    dht_lookup_seconds: Histogram
    dht_failures: Counter
    rejected: Counter
    recompute_seconds: Histogram
    observations: Counter
    actions_dropped: Counter

    @staticmethod
    def create(reg: CollectorRegistry) -> "RegistryMetrics":
        return RegistryMetrics(
            devices_known=metric(reg, Gauge, "fognode_registry_devices_known",
                                 "Devices in this node's local view"),
            devices_online=metric(reg, Gauge, "fognode_registry_devices_online",
                                  "Devices currently considered online"),
            dht_lookup_seconds=metric(reg, Histogram, "fognode_registry_dht_lookup_seconds",
                                      "Duration of DHT record look-ups and puts", ["op"],
                                      buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
            dht_failures=metric(reg, Counter, "fognode_registry_dht_failures_total",
                                "DHT operations that failed or timed out", ["op"]),
            rejected=metric(reg, Counter, "fognode_registry_rejected_total",
                            "Records, observations and gossip refused, by kind and reason",
                            ["what", "reason"]),
            recompute_seconds=metric(reg, Histogram, "fognode_registry_reputation_recompute_seconds",
                                     "Duration of one EigenTrust recompute (all services)",
                                     buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)),
            observations=metric(reg, Counter, "fognode_registry_observations_total",
                                "Observations accepted into the local trust book", ["source"]),
            actions_dropped=metric(reg, Counter, "fognode_registry_actions_dropped_total",
                                   "Network actions dropped because the registry's queue was full",
                                   ["action"]),
        )
