"""`[protocols.market]`: defaults validate; each bad value names its key."""
from __future__ import annotations

import dataclasses

import pytest

from fognode.node.errors import ConfigError
from fognode.protocols.market.config import MarketConfig


def test_defaults_validate() -> None:
    MarketConfig().validate("node.toml")


@pytest.mark.parametrize("change, key", [
    (dict(max_offers=0), "max_offers"),
    (dict(max_offers_per_provider=20_000), "max_offers_per_provider"),
    (dict(max_clock_skew=-1.0), "max_clock_skew"),
    (dict(negotiation_timeout=0.0), "negotiation_timeout"),
    (dict(max_rounds=0), "max_rounds"),
    (dict(max_negotiations_per_peer=5000), "max_negotiations_per_peer"),
    (dict(auction_window=0.0), "auction_window"),
    (dict(max_bids=0), "max_bids"),
    (dict(reputation_floor=1.5), "reputation_floor"),
    (dict(weight_latency=-0.1), "weight_latency"),
    (dict(weight_price=0.0, weight_reputation=0.0, weight_region=0.0, weight_latency=0.0),
     "weight_price"),
    (dict(match_snapshot_age=61.0), "match_snapshot_age"),
    (dict(pricing="surge"), "pricing"),
    (dict(price_ewma_alpha=0.0), "price_ewma_alpha"),
    (dict(price_elasticity=5.0), "price_elasticity"),
    (dict(price_min_factor=1.5), "price_min_factor"),
    (dict(price_max_factor=0.5), "price_max_factor"),
    (dict(stats_window=0.0), "stats_window"),
])
def test_bad_values_name_the_key(change, key) -> None:
    with pytest.raises(ConfigError) as ei:
        dataclasses.replace(MarketConfig(), **change).validate("node.toml")
    assert ei.value.key == f"protocols.market.{key}"
    assert str(ei.value).startswith(f"node.toml: protocols.market.{key}: ")
