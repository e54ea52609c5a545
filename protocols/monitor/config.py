"""The monitor's settings: `[protocols.monitor]` in node.toml."""
from __future__ import annotations

import ipaddress
import shutil
from dataclasses import dataclass, field
from typing import Any

from fognode.node.errors import ConfigError
from fognode.protocols.monitor.alerts import AlertRule, parse_rules
from fognode.protocols.monitor.sampled import BY_NAME
from fognode.protocols.monitor.series import Tier


@dataclass(frozen=True)
class MonitorConfig:
    host: str = "127.0.0.1"        # address of the /metrics and /health endpoint
    port: int = 9464               # TCP port of the endpoint; 0 disables it
    status_interval: float = 10.0  # seconds between this node's status announcements on gossip
    history: bool = True           # record the sampled series in <datadir>/monitor/series
    sample_interval: float = 10.0  # seconds between samples of the node's metrics
    tiers: list[str] = field(default_factory=lambda: ["10s:1d", "5m:30d"])  # STEP:SPAN per tier
    detectors: bool = True         # run the anomaly detectors on every sample
    anomaly_cooldown: float = 600.0  # seconds between two AnomalyDetected of one series
    alerts: list[dict[str, Any]] = field(default_factory=list)  # [[protocols.monitor.alerts]] rules
    alert_hook: list[str] = field(default_factory=list)  # program + args run on an alert (no shell)
    alert_hook_timeout: float = 10.0  # seconds the hook may run before it is killed
    events_kept: int = 1000        # recent events monitor.events shows
    loop_lag_degraded: float = 0.5  # p99 loop lag (s) over which the node reports degraded

    def tier_list(self) -> list[Tier]:
        return sorted((Tier.parse(t) for t in self.tiers), key=lambda t: t.step)

    def rules(self) -> list[AlertRule]:
        return parse_rules(self.alerts, BY_NAME)

    def validate(self, source: str) -> None:
        if self.host != "localhost":
            try:
                ipaddress.ip_address(self.host)
            except ValueError:
                raise ConfigError(f"must be an IP address to listen on (127.0.0.1, 0.0.0.0, ::) or "
                                  f"localhost, got {self.host!r}", source=source,
                                  key="protocols.monitor.host") from None
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range 0-65535", source=source,
                              key="protocols.monitor.port")
        if not 0.1 <= self.status_interval <= 3600:
            raise ConfigError("must be between 0.1 and 3600 seconds", source=source,
                              key="protocols.monitor.status_interval")
        if not 0.1 <= self.sample_interval <= 3600:
            raise ConfigError("must be between 0.1 and 3600 seconds", source=source,
                              key="protocols.monitor.sample_interval")
        if not self.tiers:
            raise ConfigError("needs at least one STEP:SPAN tier such as 10s:1d", source=source,
                              key="protocols.monitor.tiers")
        for t in self.tiers:
            try:
                Tier.parse(t)
            except ValueError as e:
                raise ConfigError(str(e), source=source, key="protocols.monitor.tiers") from None
        if len({t.step for t in self.tier_list()}) != len(self.tiers):
            raise ConfigError("two tiers have the same step", source=source, key="protocols.monitor.tiers")
        if not 0 <= self.anomaly_cooldown <= 86400:
            raise ConfigError("must be between 0 and 86400 seconds", source=source,
                              key="protocols.monitor.anomaly_cooldown")
        if self.alert_hook and shutil.which(self.alert_hook[0]) is None:
            raise ConfigError(f"program {self.alert_hook[0]!r} is not an executable file, nor one on PATH "
                              f"(the hook runs it directly, with no shell)", source=source,
                              key="protocols.monitor.alert_hook")
        if not 0.1 <= self.alert_hook_timeout <= 3600:
            raise ConfigError("must be between 0.1 and 3600 seconds", source=source,
                              key="protocols.monitor.alert_hook_timeout")
        if not 0 <= self.events_kept <= 100_000:
            raise ConfigError("must be between 0 and 100000", source=source, key="protocols.monitor.events_kept")
        if not self.loop_lag_degraded > 0:
            raise ConfigError("must be > 0 seconds", source=source, key="protocols.monitor.loop_lag_degraded")
        parse_rules(self.alerts, BY_NAME, source=source)
