"""The monitor's own Prometheus metrics (per node registry; survive role restarts via node.metrics)."""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fognode.node.metrics import metric


@dataclass(frozen=True)
class MonitorMetrics:
    sample_seconds: Histogram
    history_bytes: Gauge
    anomalies: Counter
    alerts_firing: Gauge
    hook_runs: Counter
    health: Gauge
    nodes_offline: Gauge

    @staticmethod
    def create(reg: CollectorRegistry) -> "MonitorMetrics":
        return MonitorMetrics(
            sample_seconds=metric(reg, Histogram, "fognode_monitor_sample_seconds",
                                  "CPU time of one sample: read the metrics, record them, run detectors and alert rules",
                                  buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)),
            history_bytes=metric(reg, Gauge, "fognode_monitor_history_bytes",
                                 "Size of the history ring files on disk"),
            anomalies=metric(reg, Counter, "fognode_monitor_anomalies_total",
                             "Anomalies detected, by series and detector", ["metric", "detector"]),
            alerts_firing=metric(reg, Gauge, "fognode_monitor_alerts_firing",
                                 "Alert rules firing now, by severity", ["severity"]),
            hook_runs=metric(reg, Counter, "fognode_monitor_alert_hook_runs_total",
                             "Runs of the alert hook, by outcome (ok, failed, killed)", ["outcome"]),
            health=metric(reg, Gauge, "fognode_monitor_health_status",
                          "Health of each role and of the node: 0 healthy, 1 degraded, 2 unhealthy",
                          ["role"]),
            nodes_offline=metric(reg, Gauge, "fognode_monitor_nodes_offline",
                                 "Nodes of monitor.network not heard from for 3 status intervals"),
        )
