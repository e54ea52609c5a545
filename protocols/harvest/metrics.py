"""The harvest role's Prometheus metrics (`fognode_harvest_*`), created once per node registry."""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from fognode.node.metrics import metric


@dataclass(frozen=True)
class HarvestMetrics:
    state: Gauge              # 1 while work may run, 0 while suspended
    suspensions: Counter      # suspensions, by reason (each reason of a suspension counts)
    cpu_seconds: Counter      # CPU seconds of harvested work (executor jobs and adopted workers)
    fuel: Counter             # WASM fuel consumed by harvested jobs
    sessions: Counter         # harvest sessions ended, by kind and state
    credits: Counter          # receipts credited, by kind and outcome
    refused: Counter          # receipts refused, by reason
    tokens: Counter           # micro-units credited receipts entitle this device to
    sensor_errors: Counter    # sensor reads that failed (the previous readings stay in force)

    @classmethod
    def create(cls, reg: CollectorRegistry) -> HarvestMetrics:
        return cls(
            state=metric(reg, Gauge, "fognode_harvest_running",
                         "1 while the harvest policy lets work run, 0 while suspended"),
            suspensions=metric(reg, Counter, "fognode_harvest_suspensions_total",
                               "Harvest suspensions, by reason", ["reason"]),
            cpu_seconds=metric(reg, Counter, "fognode_harvest_cpu_seconds_total",
                               "CPU seconds of harvested work"),
            fuel=metric(reg, Counter, "fognode_harvest_fuel_total",
                        "WASM fuel consumed by harvested jobs"),
            sessions=metric(reg, Counter, "fognode_harvest_sessions_total",
                            "Harvest sessions ended, by kind and state", ["kind", "state"]),
            credits=metric(reg, Counter, "fognode_harvest_credits_total",
                           "Contribution receipts credited, by kind and outcome",
                           ["kind", "outcome"]),
            refused=metric(reg, Counter, "fognode_harvest_receipts_refused_total",
                           "Contribution receipts refused, by reason", ["reason"]),
            tokens=metric(reg, Counter, "fognode_harvest_tokens_credited_total",
                          "Micro-units the credited receipts entitle this device to"),
            sensor_errors=metric(reg, Counter, "fognode_harvest_sensor_errors_total",
                                 "Sensor reads that failed"),
        )
