from __future__ import annotations

import copy
from typing import Any

import pytest

from fognode.ledger.amounts import MICRO
from fognode.ledger.errors import GenesisError
from fognode.ledger.genesis import FeeDestination, Genesis

from .helpers import T0, genesis_dict


def test_genesis_round_trip() -> None:
    g = Genesis.from_node_genesis(genesis_dict())
    assert g.fee_destination is FeeDestination.BURN
    assert Genesis.from_dict(g.to_dict()) == g
    assert g.initial_supply() == 3 * 1000 * MICRO + 4 * 1000 * MICRO
    assert len(g.committee.members) == 4
    assert g.epoch_at(T0 + 3599) == 0 and g.epoch_at(T0 + 3600) == 1 and g.epoch_at(0) == 0


def _mut(path: list[Any], value: Any) -> dict[str, Any]:
    d = copy.deepcopy(genesis_dict())
    cur = d["ledger"]
    for p in path[:-1]:
        cur = cur[p]
    if value is KeyError:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return d


@pytest.mark.parametrize("path,value,why", [
    (["chain_id"], "", "chain_id"),
    (["v"], 2, "version"),
    (["fee"], -1, "fee"),
    (["fee_destination"], "treasury", "fee_destination"),
    (["validators"], [], "validators"),
    (["validators", 0, "stake"], 0, "stake"),
    (["validators", 0, "address"], "fog1nope", "validators\\[0\\].address"),
    (["emission", "halving_epochs"], -1, "halving_epochs"),
    (["epoch_length"], 0, "epoch_length"),
    (["extra"], 1, "unknown field"),
    (["unbonding_epochs"], KeyError, "unbonding_epochs"),
])
def test_bad_genesis_is_refused_naming_the_field(path: list[Any], value: Any, why: str) -> None:
    with pytest.raises(GenesisError, match=why):
        Genesis.from_node_genesis(_mut(path, value))


def test_genesis_without_ledger_section() -> None:
    with pytest.raises(GenesisError, match="no 'ledger' section"):
        Genesis.from_node_genesis({"registry": {}})


def test_emission_schedule_halves_down_to_the_tail() -> None:
    d = genesis_dict()
    d["ledger"]["emission"] = {"initial_epoch_budget": 800, "halving_epochs": 10, "tail_epoch_budget": 150}
    g = Genesis.from_node_genesis(d)
    assert [g.emission.budget(e) for e in (0, 9, 10, 20, 30, 1000)] == [800, 800, 400, 200, 150, 150]
