"""The onion settings: defaults validate, bad values name their key."""
from __future__ import annotations

import dataclasses

import pytest

from fognode.node.errors import ConfigError
from fognode.protocols.onion.config import OnionConfig


def test_defaults_are_valid_and_frozen() -> None:
    cfg = OnionConfig()
    cfg.validate("node.toml")
    assert cfg.flow().circuit_window == 1024 and cfg.relay_params().max_circuits == 4096
    assert cfg.cbt_params().quantile == 0.8
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, "hops", 2)


@pytest.mark.parametrize("key, value", [("hops", 0), ("num_guards", 0), ("circuit_window", 0),
                                        ("circuit_sendme_increment", 1100), ("stream_sendme_increment", 0),
                                        ("build_timeout_quantile", 1.0), ("padding_rate", -1.0),
                                        ("extend_timeout", 0.0), ("guard_lifetime_days", 0.5)])
def test_bad_value_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"protocols.onion.{key}"):
        dataclasses.replace(OnionConfig(), **{key: value}).validate("node.toml")
