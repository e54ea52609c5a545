"""A funded FL session on three real daemons (`fognode run`, RPC over the unix socket): the
starter's wallet pays the reward budget into the session's reward pool when the session
starts, the accepted participants of both rounds are paid from the pool, the funder's node
closes the pool after its deadline and gets exactly the unpaid rest back, nothing is minted,
and `ledger.verify` passes on every node. A starter whose wallet cannot pay the budget is
refused with the shortfall, and no session starts."""
from __future__ import annotations

import math
import time
from typing import Any

import pytest

from fognode.ledger.amounts import parse_amount
from fognode.ledger.errors import LEDGER_INSUFFICIENT_FUNDS
from fognode.node.errors import RpcError
from fognode.tools.devnet import DevnetNode, wait_until

from tests.conftest import NodeFactory

pytestmark = pytest.mark.slow

BUDGET = 2_000_000            # micro-units: 1 token per round
ROUNDS = 2
FEE = 1000


def micro(n: DevnetNode, address: str) -> int:
    return parse_amount(n.rpc("wallet.balance", {"address": address})["balance"])


def history(n: DevnetNode, address: str) -> list[dict[str, Any]]:
    return [h for h in n.rpc("wallet.history", {"address": address, "limit": 1000, "verbose": True})
            if h["status"] == "final"]


def test_a_funded_session_pays_from_its_pool_and_refunds_the_rest(node_factory: NodeFactory) -> None:
    net = node_factory(3, extra_args=["--set", "protocols.fl.tick_interval=0.1",
                                      "--set", "protocols.fl.republish_interval=1.0"])
    ids = {n.peer_id for n in net.nodes}
    for i in range(3):
        wait_until(lambda i=i: {p["peer_id"] for p in net.nodes[i].rpc("node.peers")} >= ids - {net.nodes[i].peer_id},
                   timeout=60, what=f"node {i} to be connected to all others")
    starter = net.nodes[0]
    wallets = {n.peer_id: n.rpc("wallet.address")["address"] for n in net.nodes}
    funder = wallets[starter.peer_id]
    params = {"task": "synthetic", "rounds": ROUNDS, "min_participants": 2, "participants": 3,
              "deadline": 12.0, "max_retries": 1, "optin_seconds": 3.0, "lr": 0.05,
              "task_params": {"alpha": 0.5, "beta": 0.5, "max_samples": 200}}

    # a starter that cannot pay the budget: refused, the shortfall named, nothing locked
    poor = net.nodes[1]
    have = micro(poor, wallets[poor.peer_id])
    with pytest.raises(RpcError) as e:
        poor.rpc("fl.start", {**params, "reward_budget": have})
    assert e.value.code == LEDGER_INSUFFICIENT_FUNDS
    assert "0.001 short" in e.value.message and "holds" in e.value.message, e.value.message
    assert poor.rpc("fl.sessions") == [] and poor.rpc("ledger.pools") == []

    before = micro(starter, funder)
    sid = starter.rpc("fl.start", {**params, "reward_budget": BUDGET})["session_id"]
    # the budget left the wallet before the session was announced
    assert micro(starter, funder) == before - BUDGET - FEE
    [pool] = starter.rpc("ledger.pools")
    assert (pool["session"], pool["amount"], pool["paid"], pool["closed"]) == (sid, "2", "0", False)

    wait_until(lambda: starter.rpc("fl.status", [sid, True])["state"] != "running", timeout=120, interval=0.2,
               what="the session to end")
    st = starter.rpc("fl.status", [sid, True])
    assert st["state"] == "completed", (st["reason"], st["history"])
    assert [h["round"] for h in st["history"]] == [1, 2]
    # what the adopted rounds owe each wallet (the round's aggregator attests no update of its own)
    owed: dict[str, int] = {}
    shares = 0
    for h in st["history"]:
        for peer, w in h["weights"].items():
            share = (BUDGET // ROUNDS) * math.floor(w * 1e6) // 10**6
            if peer != h["aggregator"] and share > 0:
                owed[wallets[peer]] = owed.get(wallets[peer], 0) + share
                shares += 1
    assert owed and all(v > 0 for v in owed.values())

    def closed() -> dict[str, Any] | None:
        p = starter.rpc("ledger.pool", [pool["pool"]])
        return p if p["closed"] else None
    done = wait_until(closed, timeout=max(30.0, pool["deadline"] - time.time() + 45.0), interval=0.5,
                      what="the funder's node to close the pool after its deadline")
    paid = parse_amount(done["paid"])
    assert (paid, done["payouts"]) == (sum(owed.values()), shares)
    assert parse_amount(done["refunded"]) == BUDGET - paid           # refund + payouts == funded
    for n in net.nodes:
        wait_until(lambda n=n: n.rpc("ledger.pool", [pool["pool"]])["closed"], timeout=30, interval=0.25,
                   what=f"node {n.index} to apply the close")
        v = n.rpc("ledger.verify")
        assert v["ok"] is True and v["minted"] == "0", v
    # each participant was paid its share from the pool, by pool payouts only
    for w, v in owed.items():
        rows = [h for h in history(starter, w) if h["kind"] == "pool_pay" and h.get("recipient") == w]
        assert sum(parse_amount(h["amount"]) for h in rows) == v, (w, rows)
    # the funder's wallet: the budget out, the refund back, its own payouts in, its fees
    rows = history(starter, funder)
    fees = FEE * sum(1 for h in rows if h["sender"] == funder and h["kind"].startswith("pool"))
    assert micro(starter, funder) == before - BUDGET + (BUDGET - paid) + owed.get(funder, 0) - fees
    assert done["held"] == "0"
