"""The order client's sans-IO vote collector (client.py): which validators to ask, and the
retry policy `decide` (certificate, definitive refusal, deadline, ask again)."""
from __future__ import annotations

import pytest

from fognode.ledger.client import Decision, OrderStatus, VoteCollector
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
    assert c.status is OrderStatus.FAILED
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
