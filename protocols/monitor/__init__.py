"""monitor: per-role health, peer count, uptime, and the Prometheus /metrics endpoint."""
