"""Contracts survive a SIGKILL: a real 4-node devnet where both parties of a WASM job are killed
and started again.

Node 0 (customer) runs one job on node 1 (provider). Once the provider is running it, nodes 2
and 3 are frozen (SIGSTOP): with half the stake away the ledger certifies nothing, so the
provider holds the customer's co-signed debit note (saved to its contract store) but cannot pay
it out. The provider is then SIGKILLed, the validators thawed, and the provider started again:
it pays out the stored note and marks the contract stopped. The customer is SIGKILLed before the
agreement's deadline and started again: it refunds the unspent escrow after the deadline. Every
balance moves exactly by the payout, the refund and the fees, and `ledger.verify` passes on
every node.
"""
from __future__ import annotations

import os
import signal
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fognode.node.rpc.client import RpcClient
from fognode.protocols.market.jobwire import task_cost
from fognode.tools.devnet import Devnet, DevnetNode, wait_until
from tests.market.wat import WORK_WAT

pytestmark = pytest.mark.slow

FEE = 1000                  # micro-units (genesis fee 0.001)
PRICE = 10_000              # micro-units per million fuel (0.01 token)
SECONDS = 75
ROUNDS = 2_000_000          # xorshift rounds: long enough to freeze the validators before the result
SETTINGS = ["--set", "protocols.harvest.market_nice=0", "--set", "protocols.market.debit_interval=1",
            "--set", "protocols.market.debit_deadline=60", "--set", "protocols.market.escrow_wait=20"]


def micro(text: str) -> int:
    return int(Decimal(text) * 1_000_000)


def balance(n: DevnetNode, address: str) -> int:
    return micro(n.rpc("wallet.balance", {"address": address})["balance"])


def provider_contract(p: DevnetNode) -> dict[str, Any] | None:
    rows = [r for r in p.rpc("market.contracts") if r["role"] == "provider"]
    return p.rpc("market.contract", [rows[0]["id"]]) if rows else None


def test_a_killed_provider_pays_its_stored_note_and_a_killed_customer_refunds(node_factory: Any,
                                                                             tmp_path: Path) -> None:
    net: Devnet = node_factory(4, extra_args=SETTINGS, timeout=90)
    c, p, v2, v3 = net.nodes
    wat = tmp_path / "work.wat"
    wat.write_text(WORK_WAT)
    p.rpc("market.offer", {"price": "0.01", "cores": 1, "memory_mib": 256})
    wait_until(lambda: c.rpc("market.offers", {"filter": "(service=compute.wasm)"}) or None,
               timeout=90, what="the offer in the customer's book")
    wallet = {n.index: n.rpc("wallet.address")["address"] for n in (c, p)}
    before = {i: balance(c, a) for i, a in wallet.items()}

    box: dict[str, Any] = {}

    def request() -> None:
        try:
            with RpcClient(c.socket, timeout=150) as client:
                box["out"] = client.call("market.request", {
                    "module": str(wat), "export": "work", "args": [ROUNDS], "fuel": 200_000_000,
                    "budget": "5", "seconds": SECONDS})
        except BaseException as ex:      # noqa: BLE001 - handed to the test thread
            box["error"] = ex

    t = threading.Thread(target=request)
    t.start()
    frozen = False
    try:
        wait_until(lambda: (v if (v := provider_contract(p)) and v["state"] == "running" else None),
                   timeout=60, what="the provider running the job", interval=0.05)
        for v in (v2, v3):
            assert v.proc is not None
            os.kill(v.proc.pid, signal.SIGSTOP)
        frozen = True
        held = wait_until(lambda: (v if (v := provider_contract(p)) and micro(v["noted"]) > 0 else None),
                          timeout=60, what="the provider holding a co-signed note", interval=0.1)
        assert held["paid"] == "0", held              # no quorum: the payout cannot be certified
        cid = held["id"]
        net.kill(1)
    finally:
        if frozen:
            for v in (v2, v3):
                assert v.proc is not None
                os.kill(v.proc.pid, signal.SIGCONT)
    t.join(150)
    assert "error" not in box, box.get("error")
    out = box["out"]
    assert out["status"] == "ok" and out["contracts"] == [cid], out
    noted = micro(held["noted"])
    assert noted == task_cost(out["fuel"], PRICE)

    # the provider comes back and pays out the note it stored before it was killed
    net.start(1, timeout=60)
    after = wait_until(lambda: (v if micro((v := p.rpc("market.contract", [cid]))["paid"]) == noted else None),
                       timeout=60, what="the stored note paid out after the restart", interval=0.5)
    assert after["state"] == "stopped" and "restarted" in after["detail"], after
    wait_until(lambda: micro(c.rpc("market.contract", [cid])["paid"]) == noted or
               micro(c.rpc("ledger.escrow", [after["escrow"]])["paid"]) == noted or None,
               timeout=30, what="the payout on the customer's replica")

    # the customer is killed before the deadline and refunds after it, from its contract store
    view = c.rpc("market.contract", [cid])
    assert view["state"] in ("done", "stopped") and view["refunded"] is None, view
    net.kill(0)
    net.start(0, timeout=60)
    settled = wait_until(lambda: (v if (v := c.rpc("market.contract", [cid]))["state"] == "settled" else None),
                         timeout=SECONDS + 60, what="the customer's refund after its restart", interval=0.5)
    assert micro(settled["paid"]) == noted and micro(settled["refunded"]) == 5_000_000 - noted, settled
    esc = c.rpc("ledger.escrow", [settled["escrow"]])
    assert esc["closed"] and micro(esc["paid"]) == noted
    payouts = esc["next_sequence"] - 2                  # open is 0, then payouts, then the refund
    expect = {0: before[0] - noted - 2 * FEE, 1: before[1] + noted - payouts * FEE}
    wait_until(lambda: all(balance(n, wallet[i]) == expect[i] for n in (c, p) for i in (0, 1)) or None,
               timeout=30, what="exact balances")
    for n in net.nodes:
        v = n.rpc("ledger.verify")
        assert v["ok"], v
