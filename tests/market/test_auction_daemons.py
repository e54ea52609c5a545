"""The reverse auction and dynamic pricing on a real 3-node devnet (`fognode run` processes).

Node 0 is the customer; nodes 1 and 2 offer `compute.wasm`, node 2 cheaper. Node 1 prices
dynamically. The test checks, through the RPC an operator uses:

1. `market.request --auction`: the demand goes out on gossip, both providers bid within
   `auction_window`, the cheaper bid wins, the job runs on the winner and its result is
   wasmtime's own; the escrow pays exactly the winner's price; `ledger.verify` passes;
2. an auction whose budget is under every bid fails with an error naming the auction;
3. `market.stats` on a dynamic provider shows its base price, the price it asks and the
   suggestion, and the ask seen in the customer's book is that price, not the base.
"""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fognode.node.errors import RpcError
from fognode.protocols.harvest.wasm_engine import execute
from fognode.protocols.market.jobwire import task_cost
from fognode.tools.devnet import Devnet, wait_until
from tests.market.wat import WORK_WAT, work_module

pytestmark = pytest.mark.slow

SECONDS = 20
SETTINGS = ["--set", "protocols.harvest.market_nice=0", "--set", "protocols.market.debit_interval=1",
            "--set", "protocols.market.auction_window=2", "--set", "protocols.market.escrow_wait=20"]


def micro(text: str) -> int:
    return int(Decimal(text) * 1_000_000)


def test_reverse_auction_picks_the_cheaper_bid_and_dynamic_prices_are_offered(
        node_factory: Any, tmp_path: Path) -> None:
    net: Devnet = node_factory(3, extra_args=SETTINGS, start=False)
    net.nodes[1].args = ["--set", "protocols.market.pricing=dynamic",
                         "--set", "protocols.market.price_elasticity=0",
                         "--set", "protocols.market.price_min_factor=0.9"]
    net.start_all(timeout=90)
    c, dear, cheap = net.nodes
    wat = tmp_path / "work.wat"
    wat.write_text(WORK_WAT)
    cheap.rpc("market.offer", {"price": "0.3", "cores": 1, "memory_mib": 256})
    wait_until(lambda: len(dear.rpc("market.offers", {"filter": f"(provider={cheap.peer_id})"}))
               or None, timeout=90, what="the cheap offer in the dynamic provider's book")
    dear.rpc("market.offer", {"price": "0.6", "cores": 1, "memory_mib": 256})

    # 3. dynamic pricing, no pressure (elasticity 0): the reference is the others' median,
    # 0.3, kept at or above price_min_factor x base = 0.54
    stats = dear.rpc("market.stats")
    assert stats["pricing"] == "dynamic" and stats["unit"] == "fuel"
    own = stats["own_offers"]
    assert [(o["base"], o["offered"]) for o in own] == [("0.6", "0.54")], own
    asks = wait_until(lambda: (r if len(r := c.rpc("market.offers")) == 2 else None),
                      timeout=60, what="both offers in the customer's book")
    assert sorted(o["prices"]["fuel"] for o in asks) == ["0.3", "0.54"], asks

    # 1. the auction: both bid; the cheaper bid wins
    n_rounds = 50_000
    local = execute(work_module(), "work", args=(n_rounds,), fuel=10_000_000,
                    memory_bytes=2**20, max_output=1024)
    r = c.rpc("market.request", {"module": str(wat), "export": "work", "args": [n_rounds],
                                 "fuel": 10_000_000, "budget": "5", "seconds": SECONDS,
                                 "auction": True}, timeout=90)
    assert r["status"] == "ok" and r["results"] == list(local.results), r
    assert r["providers"] == [cheap.peer_id], r
    assert r["seconds"]["negotiation"] >= 2.0       # the bidding window was waited out

    # 2. a budget under every bid: no bid is admitted, the error says so
    with pytest.raises(RpcError) as e:
        c.rpc("market.request", {"module": str(wat), "export": "work", "args": [1],
                                 "fuel": 10_000_000, "budget": "0.000001", "seconds": SECONDS,
                                 "auction": True}, timeout=60)
    assert "auction" in e.value.message, e.value.message

    # settlement: the winner was paid exactly its price for the fuel used, the ledger checks out
    view = wait_until(lambda: (v if (v := c.rpc("market.contract", [r["contracts"][0]]))["state"]
                               == "settled" else None),
                      timeout=SECONDS + 60, what="the auction's contract settled", interval=0.5)
    assert micro(view["paid"]) == task_cost(local.fuel_consumed, 300_000), view   # 0.3 / Mfuel
    for n in net.nodes:
        assert n.rpc("ledger.verify")["ok"]
