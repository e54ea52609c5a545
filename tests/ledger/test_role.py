"""The ledger role end to end in one process: real libp2p overlays on 127.0.0.1, real LevelDB,
the RPC handlers called directly."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import trio

from fognode.ledger.address import encode_address
from fognode.ledger.errors import LEDGER_BAD_ADDRESS, LEDGER_INSUFFICIENT_FUNDS, LEDGER_NOT_CERTIFIED
from fognode.ledger.events import PaymentProcessed
from fognode.ledger.submit import SLOW_ORDER
from fognode.ledger.wallet import Keystore
from fognode.node.errors import RpcError

from .cluster import ledger_cluster, wait_until


@pytest.fixture(autouse=True)
def dev_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOGNODE_PASSPHRASE", "")


def roots(c) -> set[str]:  # type: ignore[no-untyped-def]
    return {n.svc.state.root().hex() for n in c.nodes if n.up}


def shows_the_current_root(role) -> bool:  # type: ignore[no-untyped-def]
    """health_detail's root (memoised) is the root recomputed now (a staging copy has no memo)."""
    d = role.health_detail()
    return d["root"] == role.service.state.staging().root().hex()[:16] and d["applied"] == role.service.state.applied


async def test_single_node_is_its_own_committee(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with ledger_cluster(tmp_path, 1) as c:
            role = c.nodes[0].role
            assert role is not None
            me = (await role.wallet_address())["address"]
            assert (await role.wallet_balance())["balance"] == "1000"
            assert shows_the_current_root(role)
            other = encode_address(bytes(32))
            res = await role.wallet_send(other, "12.5", "hi")
            assert res["status"] == "final" and res["amount"] == "12.5"
            assert shows_the_current_root(role)
            assert (await role.wallet_balance())["balance"] == "987.499"
            assert (await role.wallet_balance(other))["balance"] == "12.5"
            tx = await role.ledger_tx(res["tx"])
            assert tx["sender"] == me and tx["memo"] == "hi"
            hist = await role.wallet_history(verbose=True)
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
            assert b["status"] == "final" and st["bonded"] == "100" and shows_the_current_root(role)
            reg = c.nodes[0].ctx.metrics
            assert reg.get_sample_value("fognode_ledger_certificates_applied_total") == 2
            assert reg.get_sample_value("fognode_ledger_staked_microtokens") == 1100 * 10**6
            assert reg.get_sample_value("fognode_ledger_supply_microtokens") == 2000 * 10**6 - 2000
            assert reg.get_sample_value("fognode_ledger_orders_rejected_total", {"reason": "overspend"}) is None
            assert reg.get_sample_value("fognode_ledger_apply_latency_seconds_count") == 2
            assert reg.get_sample_value("fognode_ledger_pending_certificates") == 0


@pytest.mark.slow
async def test_a_slow_order_is_logged_with_its_phases(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An order that waited over SLOW_ORDER for a quorum says where the time went."""
    with trio.fail_after(120), caplog.at_level(logging.INFO, logger="fognode.ledger"):
        async with ledger_cluster(tmp_path, 4) as c:
            await wait_until(lambda: all(len(n.ctx.overlay.peers()) == 3 for n in c.nodes))
            await c.stop(2)
            await c.stop(3)
            done: list[dict] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: _append(done, c.nodes[0].role.wallet_send(
                    encode_address(c.nodes[1].wallet), "2", timeout=60)))
                await trio.sleep(SLOW_ORDER + 0.2)
                await c.start(2)
            assert done[0]["status"] == "final"
            lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("slow order")]
            assert len(lines) == 1 and "in-flight record" in lines[0] and " rounds, 3 votes)" in lines[0], lines


async def test_wallets_are_unlocked_as_the_ledger_starts(tmp_path: Path) -> None:
    """No wallet's first send waits for its key derivation: the role unlocks the keystore as it
    starts; a key file made with another passphrase stays locked and its send says why."""
    with trio.fail_after(60):
        async with ledger_cluster(tmp_path, 1) as c:
            await c.stop(0)
            extra = Keystore(c.nodes[0].datadir).create("", "extra")
            other = Keystore(c.nodes[0].datadir).create("not the daemon's", "other")
            await c.start(0)
            role = c.nodes[0].role

            async def unlocked() -> dict[str, bool]:
                return {w["address"]: w["unlocked"] for w in await role.wallet_list()}
            want = {encode_address(c.nodes[0].wallet): True, encode_address(extra): True,
                    encode_address(other): False}
            with trio.fail_after(20):
                while await unlocked() != want:
                    await trio.sleep(0.05)
            late = Keystore(c.nodes[0].datadir).create("", "late")      # after the start: locked
            assert (await unlocked())[encode_address(late)] is False
            keys = []
            async with trio.open_nursery() as nursery:      # two sends at once: both get the key
                for _ in range(2):
                    nursery.start_soon(lambda: _append(keys, c.nodes[0].svc.submitter.unlock_wallet(late)))
            assert [bytes(k.verify_key) for k in keys] == [late, late]
            with pytest.raises(RpcError, match="wrong passphrase"):
                await role.wallet_send(encode_address(extra), "1", wallet=encode_address(other))


async def _append(out: list, aw) -> None:  # type: ignore[no-untyped-def]
    out.append(await aw)


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
            # an operator sees it: first in the wallet's history, and by its id
            top = (await n0.role.wallet_history())[0]
            assert top["status"] == "in flight" and top["tx"] == tx[:16] and top["amount"] == "-7", top
            assert (await n0.role.ledger_tx(tx))["status"] == "in flight"
            await c.start(2)
            back = c.nodes[2].ctx.peer_id
            await wait_until(lambda: back in {p.peer_id for p in n0.ctx.overlay.peers() if p.connected}, timeout=60)
            # the next send finishes the in-flight order first (same order, not a new one)
            res = await n0.role.wallet_send(to, "1", timeout=40)
            assert res["sequence"] == 1
            assert res["completed_earlier"] == {"tx": tx, "kind": "transfer", "sequence": 0, "recipient": to,
                                                "amount": "7"}, res
            assert (await n0.role.ledger_tx(tx))["amount"] == "7"
            # the history: direction, counterparty, signed amounts, the time this node applied each
            rows = await n0.role.wallet_history()
            assert [(r["dir"], r["amount"], r["status"]) for r in rows] == [("out", "-1", "final"), ("out", "-7", "final")]
            assert all(isinstance(r["time"], float) and abs(r["time"] - time.time()) < 120 for r in rows), rows
            await wait_until(lambda: all(n.svc.state.applied == 2 for n in c.nodes if n.up))
            theirs = await c.nodes[1].role.wallet_history()
            assert [(r["dir"], r["amount"]) for r in theirs] == [("in", "+1"), ("in", "+7")]
            assert len(roots(c)) == 1


async def test_services_api_for_other_roles(tmp_path: Path) -> None:
    from fognode.ledger.amounts import MICRO
    from fognode.ledger.api import LedgerApi, ledger_api
    from fognode.ledger.errors import OrderRejected, Reason
    from fognode.ledger.events import RewardsDistributed
    from fognode.ledger.receipts import EvidenceError, Receipt, VerifyContext, uptime_claim
    from fognode.ledger.rewards import Allocation, calculate_rewards

    class FlRoundVerifier:
        kind = "fl_round"

        def max_reward(self, receipt: Receipt, ctx: VerifyContext) -> int:
            if receipt.body.get("round") != 1:
                raise EvidenceError("unknown round")
            return 3 * MICRO

    with trio.fail_after(60):
        async with ledger_cluster(tmp_path, 1) as c:
            node = c.nodes[0]
            ledger = ledger_api(node.ctx.services)        # the typed API other roles get
            assert isinstance(ledger, LedgerApi)
            me = node.wallet
            assert ledger.verify_payment_capability(me, 999 * MICRO)
            assert ledger.verify_payment_capability(encode_address(me), 999 * MICRO)
            assert not ledger.verify_payment_capability(me, 1000 * MICRO)
            sub = node.ctx.events.subscribe("t", [RewardsDistributed])
            # uptime, attested by the (only) validator, paid to the node's wallet
            rc = ledger.issue_receipt("uptime", me, {"seconds": 1800, "claim": uptime_claim(
                ledger.epoch_at(node.ctx.clock()))})
            cert = await ledger.submit_reward(rc, rc_worth := 500_000)
            assert node.svc.state.supply.minted == rc_worth and cert.order.order.recipient == me
            with pytest.raises(OrderRejected) as e:   # a receipt pays once
                await ledger.submit_reward(rc, 1)
            assert e.value.reason is Reason.RECEIPT_USED
            # a later role's receipt kind
            ledger.register_receipt_verifier(FlRoundVerifier())
            others = [bytes([9]) * 32, bytes([8]) * 32]
            shares = calculate_rewards({others[0]: 2, others[1]: 1}, 3 * MICRO)
            allocs = [Allocation(ledger.issue_receipt("fl_round", k, {"round": 1}), v) for k, v in shares.items()]
            txs = await ledger.distribute_rewards(allocs)
            assert len(txs) == 2
            ev = await sub.receive()
            assert isinstance(ev, RewardsDistributed) and ev.total == 3 * MICRO and ev.count == 2
            assert ledger.balance(others[0]) == 2 * MICRO and ledger.balance(others[1]) == 1 * MICRO
            assert (await node.role.ledger_verify())["ok"]
            # a refused allocation is skipped (and logged); the others are paid
            bad = Allocation(ledger.issue_receipt("fl_round", others[0], {"round": 2}), 1)
            good = Allocation(ledger.issue_receipt("fl_round", others[1], {"round": 1, "part": 2}), 1)
            txs = await ledger.distribute_rewards([bad, good])
            assert len(txs) == 1 and ledger.balance(others[1]) == 1 * MICRO + 1
            ev = await sub.receive()
            assert isinstance(ev, RewardsDistributed) and ev.count == 1 and ev.total == 1
            with pytest.raises(OrderRejected) as e:    # the same refusal through submit_reward
                await ledger.submit_reward(bad.receipt, 1)
            assert e.value.reason is Reason.BAD_EVIDENCE and "unknown round" in e.value.message


async def test_double_spend_attempt_is_refused_and_reported(tmp_path: Path) -> None:
    from fognode.ledger.errors import Reason
    from fognode.ledger.events import ForkDetected
    from fognode.ledger.messages import Rejection, SignedOrder, TransferOrder, Vote
    from fognode.ledger.wallet import Keystore

    with trio.fail_after(60):
        async with ledger_cluster(tmp_path, 1) as c:
            node = c.nodes[0]
            svc = node.svc
            sub = node.ctx.events.subscribe("t", [ForkDetected])
            key = Keystore(node.datadir).unlock(node.wallet, "")

            def order(to: bytes) -> SignedOrder:
                return SignedOrder.sign(key, TransferOrder(chain="fog-test", epoch=0, sender=node.wallet, sequence=0,
                                                           fee=1000, recipient=to, amount=5, memo=""))
            first, second = order(bytes([1]) * 32), order(bytes([2]) * 32)
            assert isinstance(svc.validate("attacker", first)[0], Vote)
            replies = svc.validate("attacker", second)
            assert isinstance(replies[0], Rejection) and replies[0].reason is Reason.CONFLICT
            ev = await sub.receive()
            assert isinstance(ev, ForkDetected) and ev.sequence == 0 and not ev.certified
            assert ev.first_tx == first.tx_id.hex() and ev.second_tx == second.tx_id.hex()
            assert [p.second for p in svc.store.forks()] == [second]
            assert (await node.role.ledger_stats())["forks"] == 1
            # the lock survives a restart of the role: still no second vote
            await c.stop(0)
            await c.start(0)
            replies = c.nodes[0].svc.validate("attacker", second)
            assert isinstance(replies[0], Rejection) and replies[0].reason is Reason.CONFLICT


async def test_a_refused_order_that_has_votes_keeps_its_sequence(tmp_path: Path) -> None:
    """Validators 2 and 3 hold a lock on another order of node 0's wallet for sequence 0 (a
    test-made conflict), so node 0's own send gets votes from 0 and 1 and a definitive
    refusal from 2 and 3. The wallet must not sign a second order for sequence 0: validators
    0 and 1 would see it as a fork. The send stays in flight ("stuck") and the next send drives
    the same order again."""
    from fognode.ledger.messages import SignedOrder, TransferOrder, Vote
    from fognode.ledger.wallet import Keystore

    with trio.fail_after(90):
        async with ledger_cluster(tmp_path, 4) as c:
            n0 = c.nodes[0]
            await wait_until(lambda: all(len(n.ctx.overlay.peers()) == 3 for n in c.nodes))
            key = Keystore(n0.datadir).unlock(n0.wallet, "")
            other = SignedOrder.sign(key, TransferOrder(chain=n0.svc.genesis.chain_id, epoch=0, sender=n0.wallet,
                                                        sequence=0, fee=n0.svc.genesis.fee,
                                                        recipient=bytes([7]) * 32, amount=1, memo="elsewhere"))
            for n in c.nodes[2:]:
                assert isinstance(n.svc.validate("test", other)[0], Vote)
            to = encode_address(c.nodes[1].wallet)
            with pytest.raises(RpcError) as e:
                await n0.role.wallet_send(to, "3", timeout=10.0)
            assert e.value.code == LEDGER_NOT_CERTIFIED and e.value.data["status"] == "stuck", e.value
            assert "keeps its sequence" in str(e.value) and "conflict" in str(e.value)
            stuck = n0.svc.store.inflight(n0.wallet)
            assert stuck is not None and stuck.order.sequence == 0 and stuck.tx_id.hex() == e.value.data["tx"]
            # the next send drives the same order again (never a second order for sequence 0)
            with pytest.raises(RpcError) as again:
                await n0.role.wallet_send(to, "4", timeout=10.0)
            assert again.value.data["status"] == "stuck" and again.value.data["tx"] == e.value.data["tx"]
            assert n0.svc.store.inflight(n0.wallet) == stuck
            # the validators that voted for it saw no other order of the wallet: no fork there
            assert [(await n.role.ledger_stats())["forks"] for n in c.nodes[:2]] == [0, 0]
            assert all(n.svc.state.applied == 0 for n in c.nodes)


async def test_a_refused_order_no_validator_could_lock_is_dropped(tmp_path: Path) -> None:
    """Every reachable validator refuses the order and the fourth is down (its order stream
    never opens, so it cannot hold a lock): the refusal is final and the sequence is free."""
    from fognode.ledger.errors import LEDGER_ORDER_REJECTED
    from fognode.ledger.messages import SignedOrder, TransferOrder, Vote
    from fognode.ledger.wallet import Keystore

    with trio.fail_after(90):
        async with ledger_cluster(tmp_path, 4) as c:
            n0 = c.nodes[0]
            await wait_until(lambda: all(len(n.ctx.overlay.peers()) == 3 for n in c.nodes))
            await c.stop(3)
            key = Keystore(n0.datadir).unlock(n0.wallet, "")
            other = SignedOrder.sign(key, TransferOrder(chain=n0.svc.genesis.chain_id, epoch=0, sender=n0.wallet,
                                                        sequence=0, fee=n0.svc.genesis.fee,
                                                        recipient=bytes([7]) * 32, amount=1, memo="elsewhere"))
            for n in c.nodes[:3]:
                assert isinstance(n.svc.validate("test", other)[0], Vote)
            with pytest.raises(RpcError) as e:
                await n0.role.wallet_send(encode_address(c.nodes[1].wallet), "3", timeout=10.0)
            assert e.value.code == LEDGER_ORDER_REJECTED and e.value.data["reason"] == "conflict", e.value
            assert n0.svc.store.inflight(n0.wallet) is None


@pytest.mark.slow
async def test_sync_from_a_lying_peer_applies_nothing(tmp_path: Path) -> None:
    """A peer answering sync with forged certificates (short of quorum, foreign signers, bad
    votes, malformed) gets them refused with their reasons; nothing is applied."""
    from nacl.signing import SigningKey

    from fognode.ledger.messages import Certificate, SignedOrder, TransferOrder, Vote
    from fognode.ledger.sync import SYNC_STREAM
    from fognode.ledger.wallet import Keystore

    with trio.fail_after(90):
        async with ledger_cluster(tmp_path, 2, sync_interval=3600.0) as c:   # no anti-entropy rounds
            honest, liar = c.nodes[0], c.nodes[1]
            await wait_until(lambda: len(honest.ctx.overlay.peers()) == 1)
            key = Keystore(liar.datadir).unlock(liar.wallet, "")
            so = SignedOrder.sign(key, TransferOrder(chain="fog-test", epoch=0, sender=liar.wallet, sequence=0,
                                                     fee=1000, recipient=honest.wallet, amount=500 * 10**6, memo=""))
            liar_vote = Vote.sign(liar.identity, so.tx_id)
            outsider = Vote.sign(SigningKey(b"\x05" * 32), so.tx_id)
            forged = [
                Certificate(so, ((liar_vote.validator, liar_vote.signature),)),                     # 1 of 2: no quorum
                Certificate(so, tuple(sorted([(liar_vote.validator, liar_vote.signature),
                                              (outsider.validator, outsider.signature)]))),       # foreign signer
                Certificate(so, tuple(sorted([(liar_vote.validator, liar_vote.signature),
                                              (bytes(honest.identity.verify_key), bytes(64))]))),  # forged vote
            ]

            async def lying_sync(stream) -> None:  # type: ignore[no-untyped-def]
                await stream.recv()
                await stream.send({"v": 1, "certs": [[i + 1, fc.to_wire()] for i, fc in enumerate(forged)], "end": 3})
                await stream.recv()   # the client asks for more only if there is more; it stops

            liar.ctx.overlay.set_stream_handler(SYNC_STREAM, lying_sync)
            await wait_until(lambda: not honest.svc.sync.is_syncing(liar.ctx.peer_id))   # the on-connect sync
            honest.svc.sync.reset_cursor(liar.ctx.peer_id)
            root = honest.svc.state.root()
            await honest.svc.sync_with(liar.ctx.peer_id)   # (or the on-connect sync reads the lie)
            # (the on-connect sync may have read the lie too: each forged certificate is refused
            # once per reading, the same number of times for each)
            reasons = {"no_quorum", "non_committee_signer", "bad_signature"}

            def refusals() -> dict[str, int]:
                return {r.value: n for r, n in honest.svc.replica.refused.items()}

            await wait_until(lambda: set(refusals()) == reasons and len(set(refusals().values())) == 1)
            times = refusals()["no_quorum"]
            refused = (await honest.role.ledger_stats())["certificates_refused"]
            assert refused == {r: times for r in reasons}
            assert honest.svc.state.root() == root and honest.svc.state.applied == 0
            assert honest.ctx.metrics.get_sample_value("fognode_ledger_certificates_refused_total",
                                                       {"reason": "no_quorum"}) == times
            # the liar was charged: 2 violations per reading (no quorum, bad signature; a
            # foreign signer may be a committee-view difference and is not held against it)
            charged = honest.ctx.overlay.violations.value(liar.ctx.peer_id, time.monotonic())
            assert charged == pytest.approx(2.0 * times, abs=0.01)

            async def garbage_sync(stream) -> None:  # type: ignore[no-untyped-def]
                await stream.recv()
                await stream.send({"v": 1, "certs": [[1, {"v": 1, "order": "nope"}]], "end": 1})

            liar.ctx.overlay.set_stream_handler(SYNC_STREAM, garbage_sync)
            honest.svc.sync.reset_cursor(liar.ctx.peer_id)
            assert await honest.svc.sync_with(liar.ctx.peer_id) == 0
            assert honest.svc.state.applied == 0
