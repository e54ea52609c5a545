"""Escrow on a real single-node devnet (`fognode run`, RPC over the unix socket): open, two
payouts against debit notes, refund after the deadline; the balances are exactly what the
orders say and `ledger.verify` (replay of the whole history) passes."""
from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest

from fognode.ledger.errors import LEDGER_BAD_DEBIT_NOTE, LEDGER_ESCROW_DEADLINE, LEDGER_NOT_ESCROW_PARTY
from fognode.node.errors import RpcError
from fognode.tools.devnet import Devnet, DevnetNode, wait_until

pytestmark = pytest.mark.slow

FEE = Decimal("0.001")
SECONDS = 12        # the escrow's deadline from now: payouts stop 5 s (the wallet's margin) before


@pytest.fixture
def node(short_tmp: Path) -> Iterator[DevnetNode]:
    net = Devnet(short_tmp / "net", 1)
    try:
        net.create()
        net.start_all(timeout=90)
        yield net.nodes[0]
    finally:
        net.stop_all()


def balance(n: DevnetNode, address: str) -> Decimal:
    return Decimal(n.rpc("wallet.balance", {"address": address})["balance"])


def refund_when_open(n: DevnetNode, escrow: str) -> Any:
    """Ask for the refund until the wallet's clock (with its margin) allows it."""
    def attempt() -> Any:
        try:
            return n.rpc("escrow.refund", [escrow])
        except RpcError as e:
            if e.code != LEDGER_ESCROW_DEADLINE:
                raise
            return None
    return wait_until(attempt, timeout=SECONDS + 30, what="the refund to open", interval=0.5)


def test_open_pay_refund_on_a_real_daemon(node: DevnetNode) -> None:
    n = node
    customer = n.rpc("wallet.address")["address"]
    payee = n.rpc("wallet.new", {"label": "provider"})["address"]
    n.rpc("wallet.send", [payee, "5"])
    c0, p0 = balance(n, customer), balance(n, payee)
    t0 = time.time()
    opened = n.rpc("escrow.open", {"payee": payee, "amount": "100", "seconds": SECONDS, "grace": 600})
    escrow = opened["escrow"]
    assert opened["status"] == "final" and opened["kind"] == "escrow_open" and opened["amount"] == "100"
    note30 = n.rpc("escrow.note", [escrow, "30"])["note"]
    note45 = n.rpc("escrow.note", [escrow, "45"])["note"]
    # a note that could never be paid is refused when it is asked for, not when it is presented
    with pytest.raises(RpcError) as e:
        n.rpc("escrow.note", [escrow, "1000"])
    assert e.value.code == LEDGER_BAD_DEBIT_NOTE and "due 1000 is over the 100 the escrow holds" in str(e.value)
    with pytest.raises(RpcError) as e:
        n.rpc("escrow.note", {"escrow": escrow, "due": "1", "wallet": payee})
    assert e.value.code == LEDGER_BAD_DEBIT_NOTE and "not the escrow's customer" in str(e.value)
    paid = n.rpc("escrow.pay", {"note": note30, "wallet": payee})
    assert paid["status"] == "final" and paid["escrow_sequence"] == 1 and paid["due"] == "30"
    # the customer cannot collect, a paid note pays nothing twice, the refund waits for the deadline
    with pytest.raises(RpcError) as e:
        n.rpc("escrow.pay", {"note": note45})
    assert e.value.code == LEDGER_NOT_ESCROW_PARTY
    with pytest.raises(RpcError) as e:
        n.rpc("escrow.pay", {"note": note30, "wallet": payee})
    assert e.value.code == LEDGER_BAD_DEBIT_NOTE
    n.rpc("escrow.pay", {"note": note45, "wallet": payee})         # cumulative: 15 more
    if time.time() < t0 + SECONDS - 1:
        with pytest.raises(RpcError) as e:
            n.rpc("escrow.refund", [escrow])
        assert e.value.code == LEDGER_ESCROW_DEADLINE
    view = n.rpc("ledger.escrow", [escrow])
    assert (view["paid"], view["held"], view["closed"], view["next_sequence"]) == ("45", "55", False, 3)

    back = refund_when_open(n, escrow)
    assert back["status"] == "final" and back["kind"] == "escrow_refund"
    assert balance(n, customer) == c0 - 100 - FEE + 55 - FEE
    assert balance(n, payee) == p0 + 45 - 2 * FEE
    view = n.rpc("ledger.escrow", [escrow])
    assert view["closed"] and view["held"] == "0"
    assert [v["escrow"] for v in n.rpc("ledger.escrows", {"address": payee})] == [escrow]
    v = n.rpc("ledger.verify")
    assert v["ok"] and v["applied"] == 5, v
    with pytest.raises(RpcError) as e:
        n.rpc("escrow.refund", [escrow])
    assert e.value.code == 214       # closed
