"""Reward pools against the validator and state cores (rewardpool.py, no network): funding,
payouts against real FL "fl_update" receipts, the close and its refund, every refusal with its
reason, the close that waits for its payouts at a replica, and the record on disk."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from nacl.signing import SigningKey

from fognode.ledger.actions import Commit, Queued, SendRejection
from fognode.ledger.amounts import MICRO, format_amount
from fognode.ledger.errors import RPC_CODE_OF_REASON, Reason
from fognode.ledger.messages import Certificate, MintOrder, Order, SignedOrder, Vote, decode_signed_order
from fognode.ledger.replica import MemoryHistory, Replica
from fognode.ledger.rewardpool import RewardPool
from fognode.ledger.state import LedgerState
from fognode.ledger.store import LedgerStore
from fognode.node.wire import pack, unpack
from fognode.protocols.fl.rewards.receipts import reward_of

from .helpers import CHAIN, NOW, Node, certify, key, make_genesis, pk, validator_keys
from .rewardpool_helpers import FEE, close, funded_announcement, open_pool, pay, pid, round_receipts, with_fl

FUNDER, PAYER, OTHER = key(0), key(1), key(2)        # funded with 1000 MICRO each
BUDGET = 3_000_000
DEADLINE = int(NOW) + 1000
GRACE = 600
AFTER, LATE = DEADLINE + 1.0, DEADLINE + GRACE + 1.0
ANN = funded_announcement(pk(FUNDER), BUDGET)
P = pid(FUNDER, ANN)


class Cluster:
    """Four validators, each with its replica and the FL receipt verifier."""

    def __init__(self) -> None:
        self.genesis = make_genesis()
        self.keys = validator_keys()
        self.nodes = [Node(k, self.genesis) for k in self.keys]
        for n in self.nodes:
            with_fl(n.validator.receipts)
        self.seq: dict[bytes, int] = {}
        self.certs: list[Certificate] = []

    def signed(self, k: SigningKey, order_of: Callable[[int], Order]) -> SignedOrder:
        s = self.seq.get(pk(k), 0)
        return SignedOrder.sign(k, order_of(s))

    def ask(self, so: SignedOrder, now: float = NOW) -> tuple[list[Vote], list[SendRejection]]:
        out = [n.ask(so, now) for n in self.nodes]
        return [v for v in out if isinstance(v, Vote)], [r for r in out if not isinstance(r, Vote)]

    def certify(self, so: SignedOrder, now: float = NOW) -> Certificate:
        votes, rej = self.ask(so, now)
        assert len(votes) >= 3, [r.rejection for r in rej]
        cert = Certificate.from_votes(so, votes[:3])
        for n in self.nodes:
            n.replica.receive("t", cert)
        self.seq[so.order.sender] = so.order.sequence + 1
        self.certs.append(cert)
        return cert

    def refused(self, so: SignedOrder, reason: Reason, words: str, now: float = NOW) -> None:
        votes, rej = self.ask(so, now)
        assert not votes and rej, votes
        assert {r.rejection.reason for r in rej} == {reason}, [r.rejection for r in rej]
        assert words in rej[0].rejection.message, rej[0].rejection.message

    @property
    def state(self) -> LedgerState:
        return self.nodes[0].state


def opened(amount: int = BUDGET) -> Cluster:
    c = Cluster()
    c.certify(c.signed(FUNDER, lambda s: open_pool(FUNDER, ANN, amount, s, deadline=DEADLINE, grace=GRACE)))
    return c


def test_funding_locks_the_budget_and_payouts_pay_the_receipts() -> None:
    c = opened()
    assert c.state.account(pk(FUNDER)).balance == 1000 * MICRO - BUDGET - FEE
    assert c.state.pools[P].held == BUDGET and c.state.invariant_problems() == []
    paid = 0
    for r in round_receipts(ANN, 1) + round_receipts(ANN, 2):
        before = c.state.account(r.beneficiary).balance
        c.certify(c.signed(PAYER, lambda s: pay(PAYER, P, r, s)))
        assert c.state.account(r.beneficiary).balance == before + reward_of(r)
        paid += reward_of(r)
    pool = c.state.pools[P]
    assert (pool.paid, pool.held, pool.closed) == (paid, BUDGET - paid, False)
    assert c.state.invariant_problems() == []
    assert len({n.state.root() for n in c.nodes}) == 1
    # the close states what was paid; the rest goes back to the funder
    before = c.state.account(pk(FUNDER)).balance
    c.certify(c.signed(FUNDER, lambda s: close(FUNDER, P, pool.payouts, pool.paid, pool.digest, s)), AFTER)
    pool = c.state.pools[P]
    assert pool.closed and pool.held == 0
    assert c.state.account(pk(FUNDER)).balance == before + BUDGET - paid - FEE
    assert c.state.invariant_problems() == []
    # a later payout is refused, whoever asks and whenever
    r = round_receipts(ANN, 3)[0]
    c.refused(c.signed(PAYER, lambda s: pay(PAYER, P, r, s)), Reason.POOL_CLOSED, "closed", AFTER)


def test_refusals_name_the_reason() -> None:
    r1 = round_receipts(ANN, 1)
    c = opened()
    # FL rewards are never minted any more
    mint = SignedOrder.sign(PAYER, MintOrder(chain=CHAIN, epoch=0, sender=pk(PAYER), sequence=0, fee=FEE,
                                             recipient=r1[0].beneficiary, amount=reward_of(r1[0]), receipt=r1[0]))
    c.refused(mint, Reason.BAD_EVIDENCE, "never minted")
    # over the receipt's worth
    c.refused(c.signed(PAYER, lambda s: pay(PAYER, P, r1[0], s, reward_of(r1[0]) + 1)), Reason.BAD_EVIDENCE,
              "exceeds the receipt's worth")
    # from a pool the receipt's session was not funded by
    other_ann = funded_announcement(pk(OTHER), BUDGET)
    c.certify(c.signed(OTHER, lambda s: open_pool(OTHER, other_ann, BUDGET - 1, s, deadline=DEADLINE)))
    c.refused(c.signed(PAYER, lambda s: pay(PAYER, pid(OTHER, other_ann), r1[0], s)), Reason.BAD_EVIDENCE,
              "not by pool")
    # from a pool holding less than the session's budget (what its receipts may claim in all)
    c.refused(c.signed(PAYER, lambda s: pay(PAYER, pid(OTHER, other_ann), round_receipts(other_ann, 1)[0], s)),
              Reason.POOL_EXHAUSTED, "less than its session's receipts may claim")
    # a session that names no funder: nothing pays it
    bare = funded_announcement(b"", BUDGET)
    c.refused(c.signed(PAYER, lambda s: pay(PAYER, P, round_receipts(bare, 1)[0], s)), Reason.BAD_EVIDENCE,
              "names no funder")
    # an unknown pool
    c.refused(c.signed(PAYER, lambda s: pay(PAYER, b"\x07" * 32, r1[0], s)), Reason.POOL_UNKNOWN, "no reward pool")
    # paid once per claim
    c.certify(c.signed(PAYER, lambda s: pay(PAYER, P, r1[0], s)))
    c.refused(c.signed(OTHER, lambda s: pay(OTHER, P, r1[0], s)), Reason.RECEIPT_USED, "already been paid")
    r2 = round_receipts(ANN, 2)[0]
    # too late for payouts, too early for closes
    c.refused(c.signed(PAYER, lambda s: pay(PAYER, P, r2, s, 1)), Reason.POOL_TOO_LATE, "deadline", AFTER)
    pool = c.state.pools[P]
    ok = (pool.payouts, pool.paid, pool.digest)
    c.refused(c.signed(FUNDER, lambda s: close(FUNDER, P, *ok, s)), Reason.POOL_TOO_EARLY, "its funder")
    c.refused(c.signed(OTHER, lambda s: close(OTHER, P, *ok, s)), Reason.POOL_TOO_EARLY, "others", AFTER)
    # a close that states other payouts than the validator applied
    c.refused(c.signed(FUNDER, lambda s: close(FUNDER, P, ok[0] - 1, ok[1], ok[2], s)), Reason.POOL_UNSETTLED,
              f"payouts of {format_amount(ok[1])} from pool", AFTER)     # in tokens, as the CLI speaks
    # the funder cannot fund what it does not have: the shortfall is named
    poor = c.signed(FUNDER, lambda s: open_pool(FUNDER, funded_announcement(pk(FUNDER), 1), 2000 * MICRO, s,
                                                deadline=DEADLINE))
    c.refused(poor, Reason.OVERSPEND, "needs 2000.001 tokens")
    assert RPC_CODE_OF_REASON[Reason.POOL_EXHAUSTED] == 222 and RPC_CODE_OF_REASON[Reason.BAD_POOL] == 218
    assert c.state.invariant_problems() == []


def test_a_validator_signs_no_close_before_its_payouts_apply_and_no_payout_after_a_close() -> None:
    c = opened()
    r = round_receipts(ANN, 1)[0]
    so = c.signed(PAYER, lambda s: pay(PAYER, P, r, s))
    v1 = c.nodes[1].ask(so)                     # node 1 votes; the payout is not certified yet
    assert isinstance(v1, Vote)
    pool = c.state.pools[P]
    empty = c.signed(FUNDER, lambda s: close(FUNDER, P, 0, 0, pool.digest, s))
    rej = c.nodes[1].ask(empty, AFTER)
    assert isinstance(rej, SendRejection) and rej.rejection.reason is Reason.POOL_UNSETTLED
    assert "not applied here yet" in rej.rejection.message
    # node 2 signs the close (it voted for no payout): it then refuses the payout
    assert isinstance(c.nodes[2].ask(empty, AFTER), Vote)
    rej = c.nodes[2].ask(so, NOW)
    assert isinstance(rej, SendRejection) and rej.rejection.reason is Reason.POOL_CLOSED


def test_a_second_close_is_a_no_op_and_a_replica_waits_for_the_payouts_a_close_states() -> None:
    c = opened()
    certs = [c.certify(c.signed(PAYER, lambda s: pay(PAYER, P, r, s))) for r in round_receipts(ANN, 1)]
    pool = c.state.pools[P]
    ok = (pool.payouts, pool.paid, pool.digest)
    first = c.certify(c.signed(FUNDER, lambda s: close(FUNDER, P, *ok, s)), AFTER)
    funder = c.state.account(pk(FUNDER)).balance
    second = c.certify(c.signed(OTHER, lambda s: close(OTHER, P, *ok, s)), LATE)
    assert c.state.account(pk(FUNDER)).balance == funder and c.state.invariant_problems() == []
    # a fresh replica given the close first keeps it until the payouts it states are there
    fresh = Replica(LedgerState(c.genesis), MemoryHistory())
    open_cert = _certificate_of(c, pk(FUNDER), 0)
    acts = fresh.receive("t", open_cert) + fresh.receive("t", first)
    assert any(isinstance(a, Queued) for a in acts)
    assert not fresh.state.pools[P].closed
    for cert in reversed(certs):
        fresh.receive("t", cert)
    fresh.receive("t", second)
    assert fresh.state.pools[P].closed and fresh.state.root() == c.state.root()


def _certificate_of(c: Cluster, sender: bytes, seq: int) -> Certificate:
    return next(x for x in c.certs if x.order.key == (sender, seq))


def test_pool_orders_and_records_round_trip(tmp_path: Path) -> None:
    c = opened()
    r = round_receipts(ANN, 1)[0]
    certs = [c.certify(c.signed(PAYER, lambda s: pay(PAYER, P, r, s)))]
    pool = c.state.pools[P]
    certs.append(c.certify(c.signed(FUNDER, lambda s: close(FUNDER, P, pool.payouts, pool.paid, pool.digest, s)),
                           AFTER))
    for so in [*(x.order for x in certs),
               c.signed(FUNDER, lambda s: open_pool(FUNDER, ANN, 5, s, deadline=DEADLINE))]:
        back = decode_signed_order(unpack(pack(so.to_wire())))
        assert back == so and back.tx_id == so.tx_id
    assert RewardPool.decode(c.state.pools[P].encode()) == c.state.pools[P]
    # the store writes the record with the rest of the batch and reloads the same root
    g = make_genesis()
    store = LedgerStore(tmp_path / "db", g)
    rep = Replica(LedgerState(g), MemoryHistory())
    deltas = []
    for cert in [_certificate_of(c, pk(FUNDER), 0), *certs]:
        deltas += [a.delta for a in rep.receive("t", cert) if isinstance(a, Commit)]
    store.commit(deltas)
    loaded = store.load_state()
    assert loaded.pools == rep.state.pools and loaded.root() == rep.state.root() == c.state.root()
    assert loaded.invariant_problems() == []
    store.close()


@pytest.mark.parametrize("field, value, words", [
    ("session", b"short", "32-byte hash"), ("receipt_kind", "", "receipt kind"),
    ("deadline", 0, "deadline"), ("grace", 0, "grace"), ("amount", 0, "amount"),
])
def test_malformed_opens_are_refused_with_the_field(field: str, value: object, words: str) -> None:
    import dataclasses

    c = Cluster()
    order = dataclasses.replace(open_pool(FUNDER, ANN, BUDGET, 0, deadline=DEADLINE), **{field: value})
    c.refused(SignedOrder.sign(FUNDER, order), Reason.BAD_AMOUNT if field == "amount" else Reason.BAD_POOL, words)
