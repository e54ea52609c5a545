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
from fognode.ledger.receipts import Receipt
from fognode.ledger.receipts import uptime_claim
from fognode.ledger.uptime import UptimeTracker, median_receipt

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


@pytest.mark.slow
async def test_nodes_claim_their_uptime_once_per_epoch_from_the_validators(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Three validators on real overlays, 20-second epochs: after epoch 0 each node asks the
    two others for uptime receipts, mints the median once; a second receipt for the same
    epoch is refused; every replica ends with the same state."""
    from fognode.ledger.errors import OrderRejected
    from fognode.node.wire import Fields

    from .cluster import ledger_cluster, wait_until

    monkeypatch.setenv("FOGNODE_PASSPHRASE", "")
    length = 20
    start = int(time.time()) - (length - 8)         # epoch 0 ends 8 s from now
    with trio.fail_after(60):
        async with ledger_cluster(tmp_path, 3, genesis_time=start, uptime_claims=True, uptime_interval=0.2,
                                  ledger_overrides={"epoch_length": length,
                                                    "uptime_reward_per_hour": 3600 * MICRO}) as c:
            svcs = [n.svc for n in c.nodes]
            await wait_until(lambda: all(s.uptime.claimed.get(0, "").startswith("paid") for s in svcs), 30)
            for s in svcs:
                paid = s.uptime.claimed[0]
                assert "for " in paid
            await wait_until(lambda: all(s.state.supply.minted == svcs[0].state.supply.minted for s in svcs)
                             and len({s.state.root() for s in svcs}) == 1)
            for n in c.nodes:
                me = bytes(n.identity.verify_key)
                got = svcs[0].state.account(me).balance
                assert 1 * MICRO <= got <= length * MICRO           # a few seconds of uptime at 1 token/s
            # another validator's receipt for node 0's epoch 0: the claim is paid already
            s0, s1 = svcs[0], svcs[1]
            raw = s1.uptime.serve(c.nodes[0].ctx.peer_id, Fields({"v": 1, "uptime": 0}, "req"))
            assert "uptime_receipt" in raw, raw
            from fognode.ledger.receipts import decode_receipt
            again = decode_receipt(raw["uptime_receipt"])
            with pytest.raises(OrderRejected) as e:
                await s0.submit_reward(again, 1, timeout=10)
            assert e.value.reason is Reason.RECEIPT_USED
            assert (await c.nodes[0].role.ledger_stats())["uptime_rewards"]["0"].startswith("paid")
            refused = s1.uptime.serve(c.nodes[0].ctx.peer_id, Fields({"v": 1, "uptime": 5}, "req"))
            assert "uptime_refusal" in refused
