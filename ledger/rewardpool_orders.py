"""Reward-pool orders: fund a pool of rewards from one wallet, pay receipts out of it, close it
and refund the rest (rewardpool.py has the rules, state.py applies them).

A reward pool pays the many earners of one *scope of work* (an FL session: every accepted
participant of every round) from funds its funder locked beforehand, instead of minting. Each
order is an ordinary ledger order (sender, sender's sequence, epoch, fee: the sender pays the
fee and its sequence lock keeps it from spending twice):

- `PoolOpenOrder` (sender: the funder) locks `amount` into pool `pool_id(chain, funder,
  session)` for receipts of kind `kind` whose verifier says they are funded by (funder,
  session). Payouts until `deadline` (unix seconds); the funder may close it from the
  deadline on, anyone from `deadline + grace` on.
- `PoolPayOrder` (sender: anyone, the FL aggregator in practice) pays `amount` of the pool to
  the beneficiary of `receipt`, the same evidence a mint carries (ledger/receipts.py): a
  claim paid once, a scope with one commit, a worth the kind's verifier prices.
- `PoolCloseOrder` (sender: the funder, or anyone after the grace period) closes the pool and
  refunds `amount - paid` to the funder. It states what it closes on: the number of payouts,
  their total and `payouts_digest` (an order-independent hash of the payouts' transaction ids,
  `payout_leaf`), so that validators sign it only for the set of payouts they have applied.

No new signed sub-structure: a payout carries the receipt decoded by receipts.py. Decoders
check structure and raise RemoteProtocolError; the reasoned checks are in rewardpool.py.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Union

from fognode.ledger.order_base import OrderBase, OrderKind, owned_id, wire_int
from fognode.ledger.receipts import MAX_KIND, Receipt, decode_receipt
from fognode.node.wire import Fields

POOL_DIGEST_LEN = 64           # bytes of a payouts digest (a sum of BLAKE2b-512 leaves mod 2^512)
POOL_MOD = 1 << 512
_POOL_TAG = b"fognode-pool/1"
_PAYOUT_TAG = b"fognode-pool-payout/1"


def pool_id(chain: str, funder: bytes, session: bytes) -> bytes:
    """The id of the pool `funder` opens for `session` on `chain`: BLAKE2b-256(tag ||
    len(chain) || chain || funder || session). Nobody else can open (or pre-empt) it."""
    return owned_id(_POOL_TAG, chain, funder, session)


def payout_leaf(tx_id: bytes) -> int:
    """One payout's term in a pool's payouts digest: BLAKE2b-512(tag || tx id) as an integer.
    The digest of a set of payouts is the sum of their leaves mod 2^512 (the state root's
    homomorphic multiset hash, state.py): the same whatever order they were applied in."""
    return int.from_bytes(hashlib.blake2b(_PAYOUT_TAG + tx_id, digest_size=64).digest(), "big")


def digest_bytes(acc: int) -> bytes:
    return (acc % POOL_MOD).to_bytes(POOL_DIGEST_LEN, "big")


@dataclass(frozen=True)
class PoolOpenOrder(OrderBase):
    """The funder (sender) locks `amount` for receipts of `kind` funded by (sender, `session`)."""

    session: bytes
    receipt_kind: str
    amount: int
    deadline: int
    grace: int
    kind: ClassVar[OrderKind] = OrderKind.POOL_OPEN

    @property
    def pool(self) -> bytes:
        return pool_id(self.chain, self.sender, self.session)

    def body(self) -> dict[str, Any]:
        return {**self._common(), "session": self.session, "rkind": self.receipt_kind, "amount": self.amount,
                "deadline": self.deadline, "grace": self.grace}

    def debit(self) -> int:
        return self.amount + self.fee


@dataclass(frozen=True)
class PoolPayOrder(OrderBase):
    """Pay `amount` of `pool` to `receipt.beneficiary`; the sender pays the fee."""

    pool: bytes
    amount: int
    receipt: Receipt
    kind: ClassVar[OrderKind] = OrderKind.POOL_PAY

    def body(self) -> dict[str, Any]:
        return {**self._common(), "pool": self.pool, "amount": self.amount, "receipt": self.receipt.to_wire()}


@dataclass(frozen=True)
class PoolCloseOrder(OrderBase):
    """Close `pool` after `payouts` payouts of `paid` micro-units in all, whose digest is
    `payouts_digest`; the rest goes back to the funder."""

    pool: bytes
    payouts: int
    paid: int
    payouts_digest: bytes
    kind: ClassVar[OrderKind] = OrderKind.POOL_CLOSE

    def body(self) -> dict[str, Any]:
        return {**self._common(), "pool": self.pool, "payouts": self.payouts, "paid": self.paid,
                "digest": self.payouts_digest}


PoolOrder = Union[PoolOpenOrder, PoolPayOrder, PoolCloseOrder]
POOL_ORDERS = (PoolOpenOrder, PoolPayOrder, PoolCloseOrder)


# -- decoders (structure only; rewardpool.py gives the reasoned rejections) ------------------------

def decode_pool_open(f: Fields, common: dict[str, Any], peer: str | None) -> PoolOpenOrder:
    return PoolOpenOrder(**common, session=f.bytes("session", max_len=64), receipt_kind=f.str("rkind", max_len=64),
                         amount=wire_int(f, "amount"), deadline=wire_int(f, "deadline"), grace=wire_int(f, "grace"))


def decode_pool_pay(f: Fields, common: dict[str, Any], peer: str | None) -> PoolPayOrder:
    return PoolPayOrder(**common, pool=f.bytes("pool", size=32), amount=wire_int(f, "amount"),
                        receipt=decode_receipt(f.map("receipt", max_len=16), peer=peer))


def decode_pool_close(f: Fields, common: dict[str, Any], peer: str | None) -> PoolCloseOrder:
    return PoolCloseOrder(**common, pool=f.bytes("pool", size=32), payouts=wire_int(f, "payouts"),
                          paid=wire_int(f, "paid"), payouts_digest=f.bytes("digest", size=POOL_DIGEST_LEN))


POOL_DECODERS: dict[OrderKind, Callable[[Fields, dict[str, Any], str | None], PoolOrder]] = {
    OrderKind.POOL_OPEN: decode_pool_open,
    OrderKind.POOL_PAY: decode_pool_pay,
    OrderKind.POOL_CLOSE: decode_pool_close,
}

MAX_RECEIPT_KIND = MAX_KIND
