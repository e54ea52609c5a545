"""Lock handover at a committee change (ledger/handover.py): a sender that withholds a
certificate of the old committee cannot get a conflicting order certified by the new one."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fognode.ledger.actions import PersistLock, ReportFork, SendRejection
from fognode.ledger.amounts import MICRO
from fognode.ledger.committee import CommitteeCertificate, grace, seal_time, signing_time
from fognode.ledger.errors import Reason
from fognode.ledger.genesis import Genesis
from fognode.ledger.handover import HandoverIntake, HandoverPage, HandoverRefused, handover_page
from fognode.ledger.messages import Certificate, SignedOrder, Vote
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import pack, unpack

from .helpers import T0, Node, certify, genesis_dict, key, pk, transfer, validator_keys
from .test_committee import bond, certify_committee

L = 100
OLD = validator_keys(4)                 # 100 stake each: the genesis committee
NEW = [key(0), key(1), key(2)]          # bond 900 each in epoch 0: with OLD[0] the committee of epoch 2
S = key(3)                              # the sender


def at(epoch: int, frac: float = 0.0) -> float:
    return T0 + epoch * L + frac * L


def gen() -> Genesis:
    d = genesis_dict(stakes=[100 * MICRO] * 4, funded=4)
    d["ledger"]["epoch_length"] = L
    d["ledger"]["max_validators"] = 4
    return Genesis.from_node_genesis(d)


def setup() -> tuple[Genesis, list[Node], list[Node], CommitteeCertificate]:
    """Old committee OLD (400 stake); NEW bond 2700 in epoch 0, so the committee of epoch 2 is
    NEW + one old member (2800 stake): NEW alone is a quorum of it, with no old member."""
    g = gen()
    old = [Node(k, g) for k in OLD]
    bonds = [certify(bond(k, 900 * MICRO, 0, epoch=0), OLD[:3]) for k in NEW]
    for n in old:
        for c in bonds:
            assert n.replica.receive("p", c)
    cert = certify_committee(old, old[0], signing_time(g, 2))
    new = [Node(k, g) for k in NEW]
    for n in old + new:
        if n in new:
            for c in bonds:
                n.replica.receive("p", c)
        n.state.committees.add(cert)
    members = set(new[0].state.committee_for(2).members)
    assert {pk(k) for k in NEW} < members and len(members - {pk(k) for k in NEW} - {pk(k) for k in OLD}) == 0
    assert new[0].state.committees.era_start(2) == 2 and new[0].state.committees.era_start(1) == 0
    return g, old, new, cert


def votes_of(nodes: list[Node], so: SignedOrder, now: float) -> list[Vote]:
    out = []
    for n in nodes:
        r = n.ask(so, now)
        if isinstance(r, Vote):
            out.append(r)
    return out


def hand_over(giver: Node, to: Node, intake: HandoverIntake, now: float) -> list[Any]:
    """Every page of `giver`'s handover merged into `to`; its log counts as synced (the
    adapter syncs it; here both replicas hold the same certificates unless a test says so)."""
    acts: list[Any] = []
    after = None
    while True:
        page = handover_page(giver.validator, intake.epoch, after, now, giver.state.applied, limit=2)
        page = HandoverPage.decode(unpack(pack(page.to_wire())), epoch=intake.epoch, after=after)
        acts += intake.merge(to.validator, pk(giver.key), page, "giver")
        if not page.more:
            break
        after = page.locks[-1].key
    intake.pages_done(pk(giver.key), page.position)
    intake.log_synced(pk(giver.key), giver.state.applied)
    return acts


def intake_for(node: Node, epoch: int = 2) -> HandoverIntake:
    return HandoverIntake(epoch, node.state.committee_for(epoch - 1), pk(node.key))


def test_a_withheld_certificate_of_the_old_committee_blocks_a_conflicting_order_of_the_new() -> None:
    g, old, new, _ = setup()
    x = transfer(S, pk(NEW[0]), 5 * MICRO, 0, epoch=1)
    cert_x = Certificate.from_votes(x, votes_of(old[:3], x, at(1, 0.9)))   # certified, then withheld
    y = transfer(S, pk(NEW[1]), 7 * MICRO, 0, epoch=2)
    # before the handover the new members do not sign at all
    for n in new:
        r = n.ask(y, at(2, 0.2))
        assert isinstance(r, SendRejection) and r.rejection.reason is Reason.NOT_YET
    # the handover from a quorum of the old committee, one of which (OLD[0]) lies and sends nothing
    for n in new:
        intake = intake_for(n)
        for giver in (old[3], old[1]):
            acts = hand_over(giver, n, intake, at(2, 0.2))
            assert all(isinstance(a, PersistLock) for a in acts)
        assert not intake.complete()           # 200 of 400 is not more than 2/3
        intake.pages_done(pk(OLD[0]), 0)
        intake.log_synced(pk(OLD[0]), 0)       # the liar's empty handover counts as an answer
        assert intake.complete() and n.locks.get(pk(S), 0) == x
        n.validator.handovers.add(2)
        acts = n.validator.receive("client", y, at(2, 0.2))
        assert isinstance(acts[-1], SendRejection) and acts[-1].rejection.reason is Reason.CONFLICT
        assert any(isinstance(a, ReportFork) for a in acts)
    # the withheld certificate still applies everywhere; the sender's next order is fine
    for n in new:
        n.replica.receive("p", cert_x)
        assert n.state.account(pk(S)).next_sequence == 1
    nxt = transfer(S, pk(NEW[1]), 7 * MICRO, 1, epoch=2)
    assert len(votes_of(new, nxt, at(2, 0.3))) == 3


def test_without_the_handover_the_new_committee_would_certify_a_double_spend() -> None:
    """What the handover exists for: new members that skip it sign the conflicting order."""
    g, old, new, _ = setup()
    x = transfer(S, pk(NEW[0]), 5 * MICRO, 0, epoch=1)
    cert_x = Certificate.from_votes(x, votes_of(old[:3], x, at(1, 0.9)))
    y = transfer(S, pk(NEW[1]), 7 * MICRO, 0, epoch=2)
    for n in new:
        n.validator.handovers.add(2)           # pretend the handover happened
    cert_y = Certificate.from_votes(y, votes_of(new, y, at(2, 0.2)))
    assert cert_x.order.key == cert_y.order.key and cert_x.tx_id != cert_y.tx_id


def test_a_certificate_the_giver_applied_reaches_the_new_member_through_its_log() -> None:
    g, old, new, _ = setup()
    x = transfer(S, pk(NEW[0]), 5 * MICRO, 0, epoch=1)
    cert_x = Certificate.from_votes(x, votes_of(old[:3], x, at(1, 0.9)))
    old[2].replica.receive("p", cert_x)        # OLD[2] applied it: its handover omits the lock
    page = handover_page(old[2].validator, 2, None, at(2, 0.2), old[2].state.applied)
    assert page.locks == () and page.position == old[2].state.applied
    n = new[0]
    intake = intake_for(n)
    intake.pages_done(pk(OLD[2]), page.position)
    assert not intake.log_synced(pk(OLD[2]), page.position - 1)   # not synced far enough: not counted
    n.replica.receive("p", cert_x)                                # the adapter's sync of OLD[2]'s log
    assert intake.log_synced(pk(OLD[2]), page.position)
    n.validator.handovers.add(2)
    r = n.ask(transfer(S, pk(NEW[1]), 7 * MICRO, 0, epoch=2), at(2, 0.2))
    assert isinstance(r, SendRejection) and r.rejection.reason is Reason.WRONG_SEQUENCE


def test_old_members_sign_through_the_grace_period_then_seal() -> None:
    g, old, new, _ = setup()
    assert grace(g) == 5.0 and seal_time(g, 2) == at(2) + 5.0
    late = transfer(S, pk(NEW[0]), 1 * MICRO, 0, epoch=1)
    assert isinstance(old[3].ask(late, at(2) + 1.0), Vote)          # in the grace period
    with pytest.raises(HandoverRefused) as e:
        handover_page(old[3].validator, 2, None, at(2) + 1.0, 0)
    assert e.value.reason is Reason.NOT_YET
    other = transfer(NEW[0], pk(S), 1 * MICRO, 0, epoch=1)
    r = old[3].ask(other, at(2) + 6.0)
    assert isinstance(r, SendRejection) and r.rejection.reason is Reason.WRONG_EPOCH
    page = handover_page(old[3].validator, 2, None, at(2) + 6.0, 0)
    assert page.locks == (late,)
    # sealed: even with a clock set back, no new order of epoch 1; the locked one is re-voted
    r = old[3].ask(other, at(2) + 1.0)
    assert isinstance(r, SendRejection) and r.rejection.reason is Reason.WRONG_EPOCH
    assert isinstance(old[3].ask(late, at(2) + 7.0), Vote)
    # the committee did not change for members who are not old: they have nothing to give
    with pytest.raises(HandoverRefused) as e:
        handover_page(new[0].validator, 2, None, at(2) + 6.0, 0)
    assert e.value.reason is Reason.NON_COMMITTEE_SIGNER


def test_handover_pages_are_validated() -> None:
    g, old, new, _ = setup()
    a = transfer(S, pk(NEW[0]), 1 * MICRO, 0, epoch=1)
    b = transfer(NEW[0], pk(S), 1 * MICRO, 0, epoch=1)
    good = HandoverPage(2, 3, tuple(sorted((a, b), key=lambda so: so.key)), False)
    assert HandoverPage.decode(unpack(pack(good.to_wire())), epoch=2, after=None) == good
    cases = [
        (HandoverPage(2, 3, tuple(sorted((a, b), key=lambda so: so.key, reverse=True)), False), "increasing"),
        (HandoverPage(2, 3, (transfer(S, pk(NEW[0]), 1, 0, epoch=2),), False), "not from before"),
        (HandoverPage(2, 3, (), True), "empty page"),
        (HandoverPage(3, 3, (), False), "asked for 2"),
    ]
    for page, words in cases:
        with pytest.raises(RemoteProtocolError, match=words):
            HandoverPage.decode(unpack(pack(page.to_wire())), epoch=2, after=None)
    # a giver outside the old committee, or a lock with a forged signature, is ignored
    n = new[0]
    intake = intake_for(n)
    assert intake.merge(n.validator, pk(NEW[1]), good, "x") == []
    forged = SignedOrder(a.order, b"\0" * 64)
    assert intake.merge(n.validator, pk(OLD[1]), HandoverPage(2, 0, (forged,), False), "x") == []
    assert n.locks.get(pk(S), 0) is None


@settings(max_examples=60, deadline=None)
@given(voters=st.sets(st.integers(0, 3), min_size=0, max_size=4),
       givers=st.sets(st.integers(0, 3), min_size=3, max_size=4),
       faulty=st.integers(0, 3), applied_at=st.sets(st.integers(0, 3)))
def test_no_two_certified_orders_for_one_sequence_across_the_change(
        voters: set[int], givers: set[int], faulty: int, applied_at: set[int]) -> None:
    """Any set of old members votes for X (the faulty one votes for anything), some applied its
    certificate, any quorum of old members answers the handover (the faulty one hides its
    locks): if X was certified, the new committee never certifies a conflicting Y."""
    g, old, new, _ = setup()
    x = transfer(S, pk(NEW[0]), 5 * MICRO, 0, epoch=1)
    votes = votes_of([old[i] for i in sorted(voters | {faulty})], x, at(1, 0.9))
    certified = old[0].state.committee_for(1).is_quorum(sum(100 * MICRO for _ in votes))
    cert_x = Certificate.from_votes(x, votes) if certified else None
    y = transfer(S, pk(NEW[1]), 7 * MICRO, 0, epoch=2)
    y_votes = []
    for n in new:
        intake = intake_for(n)
        for i in sorted(givers):
            giver = old[i]
            if i == faulty:
                intake.pages_done(pk(giver.key), 0)
                intake.log_synced(pk(giver.key), 0)
                continue
            if cert_x is not None and i in applied_at:
                giver.replica.receive("p", cert_x)
                n.replica.receive("p", cert_x)          # synced from the giver's log
            hand_over(giver, n, intake, at(2, 0.2))
        assert intake.complete()
        n.validator.handovers.add(2)
        r = n.ask(y, at(2, 0.2))
        if isinstance(r, Vote):
            y_votes.append(r)
    y_certified = new[0].state.committee_for(2).is_quorum(
        sum(new[0].state.committee_for(2).stake_of(v.validator) for v in y_votes))
    assert not (certified and y_certified)
