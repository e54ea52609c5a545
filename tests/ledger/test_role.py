"""The ledger role end to end in one process: real libp2p overlays on 127.0.0.1, real LevelDB,
the RPC handlers called directly."""
from __future__ import annotations

from pathlib import Path

import pytest
import trio

from fognode.ledger.address import encode_address
from fognode.ledger.errors import LEDGER_BAD_ADDRESS, LEDGER_INSUFFICIENT_FUNDS, LEDGER_NOT_CERTIFIED
from fognode.ledger.events import PaymentProcessed
from fognode.node.errors import RpcError

from .cluster import ledger_cluster, wait_until


@pytest.fixture(autouse=True)
def dev_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOGNODE_PASSPHRASE", "")


def roots(c) -> set[str]:  # type: ignore[no-untyped-def]
    return {n.svc.state.root().hex() for n in c.nodes if n.up}


async def test_single_node_is_its_own_committee(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with ledger_cluster(tmp_path, 1) as c:
            role = c.nodes[0].role
            assert role is not None
            me = (await role.wallet_address())["address"]
            assert (await role.wallet_balance())["balance"] == "1000"
            other = encode_address(bytes(32))
            res = await role.wallet_send(other, "12.5", "hi")
            assert res["status"] == "final" and res["amount"] == "12.5"
            assert (await role.wallet_balance())["balance"] == "987.499"
            assert (await role.wallet_balance(other))["balance"] == "12.5"
            tx = await role.ledger_tx(res["tx"])
            assert tx["sender"] == me and tx["memo"] == "hi"
            hist = await role.wallet_history()
            assert hist[0]["tx"] == res["tx"]
            v = await role.ledger_verify()
            assert v["ok"] and v["burned"] == "0.001"
            with pytest.raises(RpcError) as e:
                await role.wallet_send(other[:-1] + ("q" if other[-1] != "q" else "p"), "1")
            assert e.value.code == LEDGER_BAD_ADDRESS
            with pytest.raises(RpcError) as e:
                await role.wallet_send(other, "5000")
            assert e.value.code == LEDGER_INSUFFICIENT_FUNDS
            b = await role.stake_bond("100")
            st = await role.stake_status()
            assert b["status"] == "final" and st["bonded"] == "100"


@pytest.mark.slow
async def test_four_validators_replicate_and_tolerate_one_down(tmp_path: Path) -> None:
    with trio.fail_after(150):
        async with ledger_cluster(tmp_path, 4) as c:
            n0, n1 = c.nodes[0], c.nodes[1]
            await wait_until(lambda: all(len(n.ctx.overlay.peers()) == 3 for n in c.nodes))
            sub = n1.ctx.events.subscribe("test", [PaymentProcessed])
            to = encode_address(n1.wallet)
            res = await n0.role.wallet_send(to, "10")
            await wait_until(lambda: all(n.svc.state.applied == 1 for n in c.nodes))
            assert len(roots(c)) == 1
            ev = await sub.receive()
            assert isinstance(ev, PaymentProcessed) and ev.tx == res["tx"]
            # one of four down: still certifies
            await c.stop(3)
            res2 = await n1.role.wallet_send(encode_address(n0.wallet), "3")
            assert res2["status"] == "final"
            await wait_until(lambda: all(n.svc.state.applied == 2 for n in c.nodes if n.up))
            # it comes back and catches up through sync
            await c.start(3)
            await wait_until(lambda: c.nodes[3].svc.state.applied == 2, timeout=60)
            assert len(roots(c)) == 1
            for n in c.nodes:
                assert (await n.role.ledger_verify())["ok"]


@pytest.mark.slow
async def test_two_of_four_down_waits_then_completes(tmp_path: Path) -> None:
    with trio.fail_after(150):
        async with ledger_cluster(tmp_path, 4) as c:
            n0 = c.nodes[0]
            await wait_until(lambda: all(len(n.ctx.overlay.peers()) == 3 for n in c.nodes))
            await c.stop(2)
            await c.stop(3)
            to = encode_address(c.nodes[1].wallet)
            with pytest.raises(RpcError) as e:
                await n0.role.wallet_send(to, "7", timeout=1.5)
            assert e.value.code == LEDGER_NOT_CERTIFIED and e.value.data["status"] == "in_flight"
            tx = e.value.data["tx"]
            assert n0.svc.state.applied == 0
            await c.start(2)
            back = c.nodes[2].ctx.peer_id
            await wait_until(lambda: back in {p.peer_id for p in n0.ctx.overlay.peers() if p.connected}, timeout=60)
            # the next send finishes the in-flight order first (same order, not a new one)
            res = await n0.role.wallet_send(to, "1", timeout=40)
            assert res["sequence"] == 1
            assert (await n0.role.ledger_tx(tx))["amount"] == "7"
            await wait_until(lambda: all(n.svc.state.applied == 2 for n in c.nodes if n.up))
            assert len(roots(c)) == 1
