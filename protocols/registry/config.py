"""The registry role's settings (`[protocols.registry]` in node.toml) and the pre-trusted peers
its genesis names (`pretrusted_from_genesis`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fognode.node.errors import ConfigError, LocalProtocolError
from fognode.protocols.registry.peerid import pubkey_from_peer_id


@dataclass(frozen=True)
class RegistryConfig:
    region: str = ""                      # empty: the node's region (NodeContext.region)
    device_type: str = "server"           # free text: server, laptop, phone, sbc, ...
    roles_offered: list[str] = field(default_factory=list)   # advertised besides the roles that run here
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
        return dict(zip(self.price_items, self.price_values))

    def validate(self, source: str) -> None:
        """Raise ConfigError naming the first bad key."""
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(msg, source=source, key=f"protocols.registry.{key}")

        for key in ("region", "device_type"):
            if len(getattr(self, key)) > 64:
                raise bad(key, "must be at most 64 characters")
        if len(self.roles_offered) > 32 or any(not r or len(r) > 64 for r in self.roles_offered):
            raise bad("roles_offered", "at most 32 non-empty names of at most 64 characters")
        if len(self.price_items) != len(self.price_values):
            raise bad("price_values", f"has {len(self.price_values)} values for "
                                      f"{len(self.price_items)} price_items")
        if len(self.price_items) > 32 or any(not 0 <= v < 1e18 for v in self.price_values):
            raise bad("price_values", "at most 32 non-negative price hints")
        if not 60 <= self.record_ttl <= 7 * 24 * 3600:
            raise bad("record_ttl", "must be between 60 s and 7 days")
        if not 1 <= self.republish_interval < self.record_ttl:
            raise bad("republish_interval", "must be at least 1 s and below record_ttl")
        if not 0.1 <= self.heartbeat_interval < self.offline_after:
            raise bad("heartbeat_interval", "must be at least 0.1 s and below offline_after")
        if self.offline_after > 3600:
            raise bad("offline_after", "must be at most 3600 s")
        if not 1 <= self.probe_interval <= 86400:
            raise bad("probe_interval", "must be between 1 s and 1 day")
        if self.observation_rate_per_minute <= 0 or self.observation_burst < 1:
            raise bad("observation_rate_per_minute", "rate and burst must be positive")
        if self.observation_max_age <= 0:
            raise bad("observation_max_age", "must be positive")
        if not 0 < self.eigentrust_alpha <= 1:
            raise bad("eigentrust_alpha", "must be in (0, 1]")
        if self.eigentrust_interval < 0.1:
            raise bad("eigentrust_interval", "must be at least 0.1 s")
        if self.dht_timeout <= 0 or self.max_clock_skew < 0:
            raise bad("dht_timeout", "dht_timeout must be positive and max_clock_skew non-negative")


def pretrusted_from_genesis(genesis: dict[str, Any]) -> list[str]:
    """`genesis["registry"]["pretrusted"]`: a list of peer ids (LocalProtocolError if malformed)."""
    reg = genesis.get("registry", {})
    pre = reg.get("pretrusted", []) if isinstance(reg, dict) else None
    if not isinstance(pre, list) or not all(isinstance(p, str) for p in pre):
        raise LocalProtocolError("genesis registry.pretrusted must be a list of peer ids")
    for p in pre:
        try:
            pubkey_from_peer_id(p)
        except ValueError as e:
            raise LocalProtocolError(f"genesis registry.pretrusted: {e}") from None
    return pre
