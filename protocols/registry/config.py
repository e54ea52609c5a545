"""The registry role's settings (`[protocols.registry]` in node.toml)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RegistryConfig:
    region: str = ""                      # empty: the node's region (NodeContext.region)
    device_type: str = "server"           # free text: server, laptop, phone, sbc, ...
    roles_offered: list[str] = field(default_factory=list)   # e.g. ["fl", "harvest", "relay"]
    price_items: list[str] = field(default_factory=list)     # price hint names, e.g. ["cpu_hour"]
    price_values: list[float] = field(default_factory=list)  # price hints, same order
    record_ttl: float = 3600.0            # seconds a device record stays valid
    republish_interval: float = 1200.0    # seconds between republishing our record
    probe_interval: float = 60.0          # seconds between capability probes
    heartbeat_interval: float = 10.0      # seconds between our liveness heartbeats on gossip
    offline_after: float = 30.0           # seconds of silence before a device counts as offline
    observation_rate_per_minute: float = 60.0  # accepted observations per observer per minute
    observation_burst: int = 120          # token-bucket burst for the above
    observation_max_age: float = 86400.0  # older observations are refused
    eigentrust_alpha: float = 0.15        # EigenTrust damping a (weight of pre-trusted peers)
    eigentrust_interval: float = 30.0     # seconds between reputation recomputes (if changed)
    dht_timeout: float = 10.0             # seconds for one DHT look-up or put
    max_clock_skew: float = 300.0         # seconds a record may be issued ahead of our clock

    def prices(self) -> dict[str, float]:
        if len(self.price_items) != len(self.price_values):
            raise ValueError("protocols.registry: price_items and price_values differ in length")
        return dict(zip(self.price_items, self.price_values))
