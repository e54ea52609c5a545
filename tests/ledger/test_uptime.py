"""Node-uptime rewards: measuring (UptimeTracker), choosing the median receipt, and the claim
end to end on a real cluster (validators attest, each node is paid once per epoch)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from fognode.ledger.amounts import MICRO
from fognode.ledger.errors import Reason
from fognode.ledger.genesis import Genesis
from fognode.ledger.receipts import Receipt, VerifyContext, default_registry, EvidenceError
from fognode.ledger.uptime import UptimeTracker, median_receipt, uptime_claim

from .helpers import T0, genesis_dict, key, pk, validator_keys


def gen(epoch_length: int = 100) -> Genesis:
    d = genesis_dict()
    d["ledger"]["epoch_length"] = epoch_length
    return Genesis.from_node_genesis(d)


def test_tracker_credits_connected_time_per_epoch_capped_and_split_at_boundaries() -> None:
    g = gen()
    t = UptimeTracker(g, interval=10.0)
    t.sample(T0 + 5, ["a", "b"])                 # first sample: nothing to credit yet
    assert t.observed("a", 0) == 0
    t.sample(T0 + 15, ["a", "b"])
    t.sample(T0 + 25, ["a"])
    assert t.observed("a", 0) == 20 and t.observed("b", 0) == 10
    t.sample(T0 + 125, ["a"])                    # a 100 s gap (this node was down): 2 intervals at most
    assert t.observed("a", 0) == 20 + 0 and t.observed("a", 1) == 20
    t.sample(T0 + 195, ["a"])
    t.sample(T0 + 205, ["a"])                    # straddles the boundary at T0 + 200: 5 s each side
    assert t.observed("a", 1) == 20 + 20 + 5 and t.observed("a", 2) == 5
    t.sample(T0 + 505, ["a"])                    # old epochs are forgotten
    assert 0 not in t.seconds and 1 not in t.seconds and t.observed("a", 5) == 5
    full = UptimeTracker(g, interval=60.0)
    for s in range(0, 101, 1):
        full.sample(T0 + s, ["x"])
    assert full.observed("x", 0) == 100 and full.observed("x", 1) == 0     # the whole epoch, no more


def test_the_median_receipt_resists_one_lying_validator() -> None:
    vals = validator_keys(4)
    who = pk(key(1))
    rs = [Receipt.issue(v, "uptime", who, 0, {"seconds": s, "claim": uptime_claim(0)})
          for v, s in zip(vals, (90, 3600, 95, 1))]
    assert median_receipt(rs).body["seconds"] == 90          # type: ignore[union-attr]
    assert median_receipt(rs[:3]).body["seconds"] == 95       # type: ignore[union-attr]
    assert median_receipt([]) is None
