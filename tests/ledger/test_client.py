"""The order client's sans-IO vote collector (client.py): which validators to ask, and the
retry policy `decide` (certificate, definitive refusal, deadline, ask again)."""
from __future__ import annotations

import pytest

from fognode.ledger.client import HUNG_WAITING, Decision, OrderStatus, VoteCollector
from fognode.ledger.errors import Reason
from fognode.ledger.messages import Rejection, Vote
from fognode.ledger.quorum import Committee
from tests.ledger.helpers import key, pk, transfer, validator_keys

VALIDATORS = validator_keys(4)          # equal stake: a quorum is 3 of 4, 2 refusals make one impossible
COMMITTEE = Committee.of({pk(v): 10 for v in VALIDATORS})


def collector() -> VoteCollector:
    return VoteCollector(transfer(key(50), pk(key(51)), 5, 0), COMMITTEE)


def refuse(c: VoteCollector, i: int, reason: Reason) -> None:
    c.add_rejection(pk(VALIDATORS[i]), Rejection(c.order.tx_id, reason, f"validator {i} says no"))


def test_quorum_of_votes_is_certified_whatever_the_time() -> None:
    c = collector()
    for v in VALIDATORS[:2]:
        assert c.add_vote(Vote.sign(v, c.order.tx_id)) is None
    assert c.decide(now=0.0, deadline=10.0) is Decision.RETRY
    cert = c.add_vote(Vote.sign(VALIDATORS[2], c.order.tx_id))
    assert cert is not None and c.certificate is cert
    assert c.decide(now=99.0, deadline=10.0) is Decision.CERTIFIED     # past the deadline too
    assert c.unasked(pk(VALIDATORS[3]), set()) == []                  # nobody left to ask


@pytest.mark.parametrize("reason", [Reason.BAD_SIGNATURE, Reason.CONFLICT, Reason.MALFORMED])
def test_more_than_a_third_refusing_for_good_is_a_rejection(reason: Reason) -> None:
    c = collector()
    refuse(c, 0, reason)
    assert c.decide(now=0.0, deadline=10.0) is Decision.RETRY          # 1 of 4: a quorum is still possible
    refuse(c, 1, reason)
    assert c.status is OrderStatus.FAILED and c.main_reason() is reason
    assert c.decide(now=0.0, deadline=10.0) is Decision.REJECTED


@pytest.mark.parametrize("reason", [Reason.WRONG_SEQUENCE, Reason.OVERSPEND, Reason.NOT_YET])
def test_lagging_validators_are_asked_again_until_the_deadline(reason: Reason) -> None:
    c = collector()
    for i in range(4):
        refuse(c, i, reason)
    assert c.status is OrderStatus.COLLECTING and c.refused_for_good() == 0   # waiting cures them
    assert c.decide(now=9.9, deadline=10.0) is Decision.RETRY
    assert c.decide(now=10.0, deadline=10.0) is Decision.EXPIRED
    # they are asked again (a rejection is not an answer for good)
    assert set(c.unasked(pk(VALIDATORS[0]), set())) == {pk(v) for v in VALIDATORS[1:]}


def test_the_main_reason_weighs_stake() -> None:
    c = collector()
    refuse(c, 0, Reason.WRONG_SEQUENCE)
    refuse(c, 1, Reason.CONFLICT)
    refuse(c, 2, Reason.CONFLICT)
    assert c.main_reason() is Reason.CONFLICT
    assert c.decide(now=0.0, deadline=10.0) is Decision.REJECTED


def test_a_vote_replaces_an_earlier_rejection() -> None:
    c = collector()
    refuse(c, 0, Reason.BAD_SIGNATURE)
    refuse(c, 1, Reason.BAD_SIGNATURE)
    c.add_vote(Vote.sign(VALIDATORS[1], c.order.tx_id))      # validator 1 changed its mind (caught up)
    assert c.status is OrderStatus.COLLECTING
    assert c.decide(now=0.0, deadline=10.0) is Decision.RETRY


def test_unasked_skips_self_voters_and_those_being_asked() -> None:
    c = collector()
    me, busy = pk(VALIDATORS[0]), pk(VALIDATORS[1])
    c.add_vote(Vote.sign(VALIDATORS[2], c.order.tx_id))
    assert c.unasked(me, {busy}) == [pk(VALIDATORS[3])]


def test_a_split_with_lagging_refusers_is_asked_again_not_rejected() -> None:
    """Two votes, one final refusal and one lagging one: a quorum is still possible once the
    lagging validator catches up, so the same order is asked again (before, the lagging
    refusal counted toward "no quorum possible" and the order could be given up as stuck)."""
    c = collector()
    for v in VALIDATORS[:2]:
        c.add_vote(Vote.sign(v, c.order.tx_id))
    refuse(c, 2, Reason.WRONG_SEQUENCE)
    refuse(c, 3, Reason.CONFLICT)
    assert c.status is OrderStatus.COLLECTING and c.main_reason() is Reason.CONFLICT
    assert c.decide(now=0.0, deadline=10.0) is Decision.RETRY
    assert set(c.unasked(pk(VALIDATORS[0]), set())) == {pk(VALIDATORS[2]), pk(VALIDATORS[3])}
    assert c.add_vote(Vote.sign(VALIDATORS[2], c.order.tx_id)) is not None      # it caught up
    assert c.decide(now=0.0, deadline=10.0) is Decision.CERTIFIED


@pytest.mark.parametrize("stakes,refusers,never", [
    ((10, 10, 10, 10), 2, False),       # T=40, q=27: 20 refused for good > T-q=13, but < q
    ((10, 10, 10, 10), 3, True),        # 30 >= q: even with f=13 of them faulty, 17 honest > T-q
    ((2, 2, 2, 2), 3, True),            # the FL partition's split: 6 of 8 refused, q = 6
    ((30, 10, 10, 10), 1, False),       # one big refuser: 30 of 60 > T-q=19, < q=41
])
def test_never_certifiable_needs_a_quorum_of_final_refusals(stakes: tuple[int, ...], refusers: int,
                                                           never: bool) -> None:
    keys = validator_keys(len(stakes))
    c = VoteCollector(transfer(key(50), pk(key(51)), 5, 0), Committee.of({pk(k): s for k, s in zip(keys, stakes)}))
    for i in range(refusers):
        c.add_rejection(pk(keys[i]), Rejection(c.order.tx_id, Reason.BAD_EVIDENCE, "another split"))
    c.add_rejection(pk(keys[-1]), Rejection(c.order.tx_id, Reason.WRONG_SEQUENCE, "behind"))   # never counts
    t, q, f = c.committee.total, c.committee.quorum_stake, c.committee.max_faulty_stake
    assert t + f < 2 * q          # the arithmetic of client.py's docstring
    assert c.status is OrderStatus.FAILED and c.never_certifiable() is never
    if never:                     # honest refusers alone leave too little stake for a quorum of votes
        assert t - (c.refused_for_good() - f) < q


def test_first_asks_are_the_fewest_a_quorum_needs_spread_by_order() -> None:
    me = pk(VALIDATORS[0])
    c = collector()
    c.add_vote(Vote.sign(VALIDATORS[0], c.order.tx_id))                 # this node's own vote
    others = c.unasked(me, set())
    first = c.first_asks(others, set(), c.order.tx_id)
    assert len(first) == 2 and set(first) <= set(others)                 # 1 + 2 of 4 is a quorum
    assert c.first_asks(others, set(), c.order.tx_id) == first            # the same for one order
    picks = {tuple(sorted(c.first_asks(others, set(), bytes([i]) * 32))) for i in range(64)}
    assert len(picks) == 3                                                # every pair serves some orders
    # one of the first is being asked already: one more makes the quorum
    left = [v for v in others if v != first[0]]
    assert len(c.first_asks(left, {first[0]}, c.order.tx_id)) == 1
    # a validator with requests piling up (slow, or hung) is asked first by no order
    hung = first[0]
    assert all(hung not in c.first_asks(others, set(), bytes([i]) * 32, {hung: 2}) for i in range(32))
    # the signers of the sender's previous certificate come first, unless one of them is hung
    prev = frozenset({me, others[2], others[0]})
    for i in range(16):
        assert set(c.first_asks(others, set(), bytes([i]) * 32, {}, prev)) == {others[0], others[2]}
        assert set(c.first_asks(others, set(), bytes([i]) * 32, {others[2]: HUNG_WAITING}, prev)) == {others[0],
                                                                                                      others[1]}
    # without this node's vote a quorum needs all three others
    c2 = collector()
    assert set(c2.first_asks(c2.unasked(me, set()), set(), c2.order.tx_id)) == set(c2.unasked(me, set()))
    # short of a quorum even if every target votes: ask them all
    assert c2.first_asks(others[:1], set(), c2.order.tx_id) == others[:1]
    # unequal stakes: the largest first
    big = Committee.of({pk(VALIDATORS[0]): 10, pk(VALIDATORS[1]): 50, pk(VALIDATORS[2]): 10, pk(VALIDATORS[3]): 10})
    c3 = VoteCollector(transfer(key(50), pk(key(51)), 5, 0), big)
    c3.add_vote(Vote.sign(VALIDATORS[0], c3.order.tx_id))
    assert c3.first_asks(c3.unasked(me, set()), set(), c3.order.tx_id) == [pk(VALIDATORS[1])]
