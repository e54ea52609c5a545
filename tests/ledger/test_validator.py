"""Every bad order of the issue: rejected with its reason, nothing locked, nothing applied."""
from __future__ import annotations

import dataclasses

import pytest

from fognode.ledger.actions import PersistLock, ReportFork, SendRejection, SendVote
from fognode.ledger.amounts import MAX_AMOUNT, MICRO
from fognode.ledger.errors import Reason
from fognode.ledger.messages import (BondOrder, SignedOrder, TransferOrder, UnbondOrder,
                                     decode_signed_order)
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import unpack
from fognode.node.wire import pack

from .helpers import CHAIN, NOW, Node, certify, key, make_genesis, pk, transfer, validator_keys


@pytest.fixture
def node() -> Node:
    return Node(validator_keys()[0], make_genesis())


def _rejected(node: Node, so: SignedOrder, reason: Reason, match: str = "") -> None:
    root, locks, applied = node.state.root(), len(node.locks), node.state.applied
    acts = node.validator.receive("client", so, NOW)
    rej = [a for a in acts if isinstance(a, SendRejection)]
    assert rej and rej[0].rejection.reason is reason, acts
    assert match in rej[0].rejection.message
    assert not any(isinstance(a, (PersistLock, SendVote)) for a in acts)
    assert (node.state.root(), len(node.locks), node.state.applied) == (root, locks, applied)


def test_valid_order_locks_before_voting(node: Node) -> None:
    so = transfer(key(0), pk(key(1)), 5 * MICRO, 0)
    acts = node.validator.receive("client", so, NOW)
    assert isinstance(acts[0], PersistLock) and acts[0].order == so
    assert isinstance(acts[1], SendVote) and acts[1].vote.tx_id == so.tx_id and acts[1].vote.signature_ok()
    # asked again: the same vote, nothing new to persist
    again = node.validator.receive("client", so, NOW)
    assert [type(a) for a in again] == [SendVote]


def test_bad_signature(node: Node) -> None:
    so = transfer(key(0), pk(key(1)), 5 * MICRO, 0)
    forged = SignedOrder(so.order, bytes(64))
    _rejected(node, forged, Reason.BAD_SIGNATURE)
    other = SignedOrder(so.order, key(1).sign(so.body_bytes).signature)
    _rejected(node, other, Reason.BAD_SIGNATURE)


def test_wrong_chain(node: Node) -> None:
    _rejected(node, transfer(key(0), pk(key(1)), 5, 0, chain="other-chain"), Reason.WRONG_CHAIN, "other-chain")


def test_future_sequence(node: Node) -> None:
    _rejected(node, transfer(key(0), pk(key(1)), 5, 1), Reason.WRONG_SEQUENCE, "next (0)")


def test_replayed_sequence(node: Node) -> None:
    so = transfer(key(0), pk(key(1)), 5, 0)
    cert = certify(so, validator_keys()[:3])
    node.replica.receive("gossip", cert)
    assert node.state.account(pk(key(0))).next_sequence == 1
    replay = transfer(key(0), pk(key(1)), 6, 0)
    _rejected(node, replay, Reason.WRONG_SEQUENCE, "next (1)")


def test_overspend(node: Node) -> None:
    _rejected(node, transfer(key(0), pk(key(1)), 1000 * MICRO, 0), Reason.OVERSPEND, "needs")


def test_unfunded_sender(node: Node) -> None:
    _rejected(node, transfer(key(50), pk(key(1)), 1, 0), Reason.OVERSPEND)


@pytest.mark.parametrize("amount", [0, -5])
def test_non_positive_amount(node: Node, amount: int) -> None:
    _rejected(node, transfer(key(0), pk(key(1)), amount, 0), Reason.BAD_AMOUNT)


def test_overflowing_amount(node: Node) -> None:
    _rejected(node, transfer(key(0), pk(key(1)), MAX_AMOUNT + 1, 0), Reason.BAD_AMOUNT)
    _rejected(node, transfer(key(0), pk(key(1)), MAX_AMOUNT, 0), Reason.BAD_AMOUNT, "overflows")


def test_negative_fee(node: Node) -> None:
    _rejected(node, transfer(key(0), pk(key(1)), 5, 0, fee=-1), Reason.BAD_AMOUNT)


def test_fee_too_low(node: Node) -> None:
    _rejected(node, transfer(key(0), pk(key(1)), 5, 0, fee=999), Reason.FEE_TOO_LOW)


@pytest.mark.parametrize("recipient", [b"", b"\x01" * 31, b"\x01" * 33])
def test_unknown_recipient_format(node: Node, recipient: bytes) -> None:
    _rejected(node, transfer(key(0), recipient, 5, 0), Reason.BAD_ADDRESS, "recipient")


def test_oversize_memo(node: Node) -> None:
    _rejected(node, transfer(key(0), pk(key(1)), 5, 0, memo="é" * 129), Reason.MEMO_TOO_LONG, "258 bytes")
    vote = node.ask(transfer(key(0), pk(key(1)), 5, 0, memo="x" * 256))
    assert not isinstance(vote, SendRejection)


def test_wrong_epoch(node: Node) -> None:
    _rejected(node, transfer(key(0), pk(key(1)), 5, 0, epoch=7), Reason.WRONG_EPOCH)


def test_second_order_for_one_sequence_is_refused_and_reported(node: Node) -> None:
    first = transfer(key(0), pk(key(1)), 5, 0)
    assert not isinstance(node.ask(first), SendRejection)
    second = transfer(key(0), pk(key(2)), 5, 0)
    root = node.state.root()
    acts = node.validator.receive("client", second, NOW)
    forks = [a for a in acts if isinstance(a, ReportFork)]
    rej = [a for a in acts if isinstance(a, SendRejection)]
    assert rej[0].rejection.reason is Reason.CONFLICT
    assert forks and forks[0].proof.valid() and forks[0].proof.first == first and forks[0].proof.second == second
    assert not any(isinstance(a, (SendVote, PersistLock)) for a in acts)
    assert node.locks.get(pk(key(0)), 0) == first and node.state.root() == root


def test_non_member_does_not_vote() -> None:
    outsider = Node(key(77), make_genesis())
    _rejected(outsider, transfer(key(0), pk(key(1)), 5, 0), Reason.NON_COMMITTEE_SIGNER)


def test_unbond_more_than_bonded(node: Node) -> None:
    so = SignedOrder.sign(key(0), UnbondOrder(chain=CHAIN, epoch=0, sender=pk(key(0)), sequence=0, fee=1000,
                                              amount=5))
    _rejected(node, so, Reason.INSUFFICIENT_STAKE)


def test_bond_overspend(node: Node) -> None:
    so = SignedOrder.sign(key(0), BondOrder(chain=CHAIN, epoch=0, sender=pk(key(0)), sequence=0, fee=1000,
                                            amount=1000 * MICRO))
    _rejected(node, so, Reason.OVERSPEND)


def test_decoder_round_trip_and_structural_errors() -> None:
    so = transfer(key(0), pk(key(1)), 5, 0, memo="hi")
    assert decode_signed_order(unpack(pack(so.to_wire()))) == so
    wire = so.to_wire()
    for mutate, why in [
        (lambda w: w["order"].update(amount="5"), "amount"),
        (lambda w: w["order"].update(kind="steal"), "unknown kind"),
        (lambda w: w["order"].update(extra=1), "unknown field"),
        (lambda w: w["order"].update(v=9), "version"),
        (lambda w: w.update(sig=b"x"), "sig"),
        (lambda w: w["order"].pop("sequence"), "sequence"),
        (lambda w: w["order"].update(memo="m" * 5000), "memo"),
    ]:
        w = unpack(pack(wire))
        mutate(w)
        with pytest.raises(RemoteProtocolError, match=why):
            decode_signed_order(w)


def test_order_dataclasses_are_frozen() -> None:
    so = transfer(key(0), pk(key(1)), 5, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        so.order.amount = 6  # type: ignore[misc]
    assert isinstance(so.order, TransferOrder)
