"""Builders of reward-pool orders for the ledger tests (rewardpool_orders.py), over real FL
"fl_update" receipts (the pooled receipt kind): a funded session announcement, round plans
with signed headers, and the receipts an aggregator of the round issues."""
from __future__ import annotations

from nacl.signing import SigningKey

from fognode.ledger.receipts import Receipt, ReceiptRegistry
from fognode.ledger.rewardpool_orders import PoolCloseOrder, PoolOpenOrder, PoolPayOrder, pool_id
from fognode.protocols.fl.messages import SessionAnnouncement, SessionSpec
from fognode.protocols.fl.rewards.receipts import VERIFIER, reward_of
from tests.fl.test_evidence import FALLBACKS, STARTER, issued, pid_of, plan_for

from .helpers import CHAIN, pk

FEE = 1000
KIND = "fl_update"


def funded_announcement(funder: bytes, budget: int, rounds: int = 3) -> SessionAnnouncement:
    spec = SessionSpec(task="synthetic", rounds=rounds, min_participants=2, participants=8,
                       reward_budget=budget, fallbacks=FALLBACKS)
    return SessionAnnouncement(spec, pid_of(STARTER), bytes(STARTER.verify_key), 1.0, b"n" * 16,
                               b"a" * 32, b"b" * 32, funder=funder).signed(STARTER)


def round_receipts(ann: SessionAnnouncement, round_no: int, slot: int = 0) -> list[Receipt]:
    """The receipts the `slot`-th aggregator of round `round_no`'s order issues."""
    return issued(ann, plan_for(ann, round_no), slot)[1]


def with_fl(registry: ReceiptRegistry) -> ReceiptRegistry:
    registry.register(VERIFIER)
    return registry


def pid(funder: SigningKey, ann: SessionAnnouncement) -> bytes:
    return pool_id(CHAIN, pk(funder), ann.session_id)


def open_pool(funder: SigningKey, ann: SessionAnnouncement, amount: int, seq: int, *, deadline: int,
              grace: int = 30, kind: str = KIND) -> PoolOpenOrder:
    return PoolOpenOrder(chain=CHAIN, epoch=0, sender=pk(funder), sequence=seq, fee=FEE, session=ann.session_id,
                         receipt_kind=kind, amount=amount, deadline=deadline, grace=grace)


def pay(payer: SigningKey, pool: bytes, receipt: Receipt, seq: int, amount: int | None = None) -> PoolPayOrder:
    return PoolPayOrder(chain=CHAIN, epoch=0, sender=pk(payer), sequence=seq, fee=FEE, pool=pool,
                        amount=reward_of(receipt) if amount is None else amount, receipt=receipt)


def close(sender: SigningKey, pool: bytes, payouts: int, paid: int, digest: bytes, seq: int) -> PoolCloseOrder:
    return PoolCloseOrder(chain=CHAIN, epoch=0, sender=pk(sender), sequence=seq, fee=FEE, pool=pool,
                          payouts=payouts, paid=paid, payouts_digest=digest)
