"""The ledger's shortcut encodings are byte-identical to node.wire.pack (the canonical form)."""
from __future__ import annotations

import dataclasses

from hypothesis import given, strategies as st

from fognode.ledger.events import PaymentProcessed
from fognode.ledger.messages import (BondOrder, Certificate, MintOrder, SignedOrder, TransferOrder,
                                     UnbondOrder, Vote, cert_batch, decode_certificate, order_request, vote_message,
                                     vote_reply)
from fognode.ledger.receipts import Receipt
from fognode.ledger.rewards import Allocation, calculate_rewards, distribute_rewards
from fognode.ledger.state import Account
from fognode.node.wire import pack, unpack

from .helpers import CHAIN, key, pk, validator_keys

ints = st.integers(min_value=-2**63, max_value=2**64 - 1)


@given(st.binary(min_size=32, max_size=32))
def test_vote_message(tx: bytes) -> None:
    assert vote_message(tx) == pack({"v": 1, "kind": "ledger.vote", "tx": tx})


@given(ints, st.integers(0, 2**40), ints, ints, st.text(max_size=300), st.binary(max_size=40), st.integers(0, 3))
def test_order_and_certificate_encodings(amount: int, epoch: int, seq: int, fee: int, memo: str,
                                         recipient: bytes, kind: int) -> None:
    common = dict(chain=CHAIN, epoch=epoch, sender=pk(key(0)), sequence=seq, fee=fee)
    if kind == 0:
        o = TransferOrder(**common, recipient=recipient, amount=amount, memo=memo)  # type: ignore[arg-type]
    elif kind == 1:
        o = BondOrder(**common, amount=amount)  # type: ignore[arg-type,assignment]
    elif kind == 2:
        o = UnbondOrder(**common, amount=amount)  # type: ignore[arg-type,assignment]
    else:
        recipient = recipient.ljust(32, b"\0")[:32]   # a receipt's beneficiary is structurally 32 bytes
        rc = Receipt.issue(key(3), "uptime", recipient, epoch, {"z": 1, "a": [memo]})
        o = MintOrder(**common, recipient=recipient, amount=amount, receipt=rc)  # type: ignore[arg-type,assignment]
    so = SignedOrder(o, bytes(64))
    assert so.body_bytes == pack(o.body())
    assert so.encoded() == pack(so.to_wire())
    cert = Certificate.from_votes(so, [Vote.sign(v, so.tx_id) for v in validator_keys()[:2]])
    assert cert.encoded() == pack(cert.to_wire())
    assert decode_certificate(unpack(cert.encoded())) == cert
    # the order stream's request, with and without the previous certificate (submit.py)
    assert order_request(so, None) == pack({"v": 1, "order": so.to_wire()})
    assert order_request(so, cert.encoded()) == pack({"v": 1, "order": so.to_wire(), "prev": cert.to_wire()})
    vote = Vote.sign(validator_keys()[0], so.tx_id)
    assert vote_reply(vote) == pack({"v": 1, "vote": vote.to_wire()})
    for n in (0, 1, 15, 16, 70):
        assert cert_batch([cert] * n) == pack({"v": 1, "certs": [cert.to_wire()] * n})


@given(st.integers(0, 2**63 - 1), st.integers(0, 2**40), st.integers(0, 2**63 - 1),
       st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 2**63 - 1)), max_size=4), st.binary(min_size=32, max_size=32))
def test_account_encoding(b: int, n: int, s: int, u: list[tuple[int, int]], h: bytes) -> None:
    a = Account(b, n, s, tuple(u), h)
    assert a.encode() == pack([b, n, s, [list(x) for x in u], h])
    assert Account.decode(a.encode()) == a


def test_calculate_rewards_is_exact_and_deterministic() -> None:
    a, b, c = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    assert calculate_rewards({a: 1, b: 1, c: 1}, 100) == {a: 34, b: 33, c: 33}
    assert calculate_rewards({a: 0, b: 0}, 100) == {}
    assert calculate_rewards({a: 2.5, b: 7.5}, 1000) == {a: 250, b: 750}
    assert sum(calculate_rewards({a: 3, b: 7, c: 11}, 10**6 + 7).values()) == 10**6 + 7


@given(st.dictionaries(st.binary(min_size=32, max_size=32), st.integers(0, 10**9), max_size=20),
       st.integers(0, 10**12))
def test_calculate_rewards_sums_to_budget(contrib: dict[bytes, int], budget: int) -> None:
    shares = calculate_rewards(contrib, budget)
    if any(contrib.values()):
        assert sum(shares.values()) == budget
    assert all(v > 0 for v in shares.values())


def test_distribute_rewards_numbers_the_orders() -> None:
    rc1 = Receipt.issue(key(101), "uptime", pk(key(1)), 0, {"seconds": 10})
    rc2 = Receipt.issue(key(101), "uptime", pk(key(2)), 0, {"seconds": 20})
    orders = distribute_rewards([Allocation(rc1, 5), Allocation(rc2, 0), Allocation(rc2, 7)], chain=CHAIN,
                                epoch=0, sender=pk(key(0)), first_sequence=4, fee=1000)
    assert [(o.sequence, o.recipient, o.amount) for o in orders] == [(4, pk(key(1)), 5), (5, pk(key(2)), 7)]


@given(st.text(max_size=70), st.integers(0, 2**63), st.integers(0, 2**63), st.text(max_size=300))
def test_payment_event_view_equals_the_generic_one(addr: str, amount: int, fee: int, memo: str) -> None:
    ev = PaymentProcessed(tx="ab" * 32, sender=addr, recipient=addr[::-1], amount=amount, fee=fee, memo=memo)
    assert ev.to_dict() == {"event": ev.kind(), **dataclasses.asdict(ev)}
