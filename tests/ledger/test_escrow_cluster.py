"""Escrow across four in-process validators (real libp2p on 127.0.0.1, real LevelDB), driven
through the typed `LedgerApi` the market role uses: the customer on one node, the provider on
another, each acting once the other's last escrow order reached its replica. Time is a clock
the test moves (the nodes' `ctx.clock`), so "after the deadline" costs no waiting."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from fognode.ledger.amounts import MICRO
from fognode.ledger.api import LedgerApi, ledger_api
from fognode.ledger.errors import OrderRejected, Reason

from .cluster import ledger_cluster, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def dev_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOGNODE_PASSPHRASE", "")


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_escrow_across_four_validators(tmp_path: Path) -> None:
    clock = Clock()
    with trio.fail_after(120):
        async with ledger_cluster(tmp_path, 4, clock=clock) as c:
            await wait_until(lambda: all(n.ctx is not None and len(n.ctx.overlay.peers()) == 3 for n in c.nodes),
                             timeout=60)
            apis: list[LedgerApi] = []
            for n in c.nodes:
                assert n.ctx is not None
                api = ledger_api(n.ctx.services)
                assert api is not None
                apis.append(api)
            customer, provider = apis[0], apis[1]
            cw, pw = c.nodes[0].wallet, c.nodes[1].wallet
            c0, p0 = customer.balance(cw), provider.balance(pw)
            fee = c.nodes[0].svc.genesis.fee
            deadline = int(clock()) + 120
            agreement = b"\x42" * 32

            opened = await customer.open_escrow(agreement, pw, 100 * MICRO, deadline, 60, wallet=cw)
            escrow = opened.order.order.escrow
            assert escrow == customer.escrow_id(cw, agreement)
            assert await provider.wait_applied(opened.tx_id, 20)
            collat = await provider.lock_collateral(escrow, 10 * MICRO, wallet=pw)
            note = await customer.sign_debit_note(escrow, 40 * MICRO, wallet=cw)
            paid = await provider.pay_debit_note(note, wallet=pw)
            e = provider.escrow(escrow)
            assert e is not None and (e.paid, e.collateral, e.next_sequence) == (40 * MICRO, 10 * MICRO, 3)
            # too late for payouts within the wallet's clock margin; the refund opens after it
            clock.offset += deadline - clock() - 2
            with pytest.raises(OrderRejected) as err:
                await provider.pay_debit_note(await customer.sign_debit_note(escrow, 50 * MICRO, wallet=cw), wallet=pw)
            assert err.value.reason is Reason.ESCROW_TOO_LATE
            clock.offset += 10
            assert await customer.wait_applied(paid.tx_id, 20)
            back = await customer.refund_escrow(escrow, wallet=cw)
            txs = [opened.tx_id, collat.tx_id, paid.tx_id, back.tx_id]
            for api in apis:
                for tx in txs:
                    assert await api.wait_applied(tx, 20)
            await wait_until(lambda: len({n.svc.state.root() for n in c.nodes}) == 1)
            assert customer.balance(cw) == c0 - 100 * MICRO - fee + 60 * MICRO - fee
            assert provider.balance(pw) == p0 - 10 * MICRO + 40 * MICRO + 10 * MICRO - 2 * fee
            for n in c.nodes:
                assert n.role is not None
                v = await n.role.ledger_verify()
                assert v["ok"], v
                view = await n.role.ledger_escrow(escrow.hex())
                assert view["closed"] and view["paid"] == "40" and view["held"] == "0"
