"""Certificates: verification, apply, pending, supply, staking, fees, mints, state root."""
from __future__ import annotations

import pytest

from fognode.ledger.actions import CertificateRefused, Commit, ConflictingCertificates, Queued
from fognode.ledger.amounts import MICRO
from fognode.ledger.errors import Reason
from fognode.ledger.messages import (BondOrder, Certificate, MintOrder, SignedOrder, UnbondOrder, Vote)
from fognode.ledger.pending import PendingPool
from fognode.ledger.receipts import Receipt, uptime_claim
from fognode.ledger.replica import MemoryHistory, Replica
from fognode.ledger.state import LedgerState
from fognode.ledger.validator import mint_limit

from .helpers import CHAIN, NOW, T0, Node, certify, key, make_genesis, pk, transfer, validator_keys

V = validator_keys()
A, B, C = key(0), key(1), key(2)


def replica(**kw: object) -> Replica:
    return Replica(LedgerState(make_genesis(**kw)), MemoryHistory())  # type: ignore[arg-type]


def _refused(r: Replica, cert: Certificate, reason: Reason) -> None:
    root, applied = r.state.root(), r.state.applied
    acts = r.receive("peer", cert)
    assert len(acts) == 1 and isinstance(acts[0], CertificateRefused) and acts[0].reason is reason, acts
    assert (r.state.root(), r.state.applied) == (root, applied)


def test_quorum_certificate_applies() -> None:
    r = replica()
    supply = r.state.supply.total
    acts = r.receive("peer", certify(transfer(A, pk(B), 5 * MICRO, 0), V[:3]))
    assert [type(a) for a in acts] == [Commit]
    assert r.state.account(pk(A)).balance == 995 * MICRO - 1000
    assert r.state.account(pk(B)).balance == 1005 * MICRO
    assert r.state.supply.total == supply - 1000   # fee burned
    assert r.state.invariant_problems() == []


def test_certificate_short_of_quorum() -> None:
    _refused(replica(), certify(transfer(A, pk(B), 5, 0), V[:2]), Reason.NO_QUORUM)


def test_certificate_with_non_committee_signer() -> None:
    _refused(replica(), certify(transfer(A, pk(B), 5, 0), V[:2] + [key(55)]), Reason.NON_COMMITTEE_SIGNER)


def test_certificate_with_duplicate_signer() -> None:
    so = transfer(A, pk(B), 5, 0)
    v = Vote.sign(V[0], so.tx_id)
    cert = Certificate(so, ((v.validator, v.signature),) * 3)
    _refused(replica(), cert, Reason.DUPLICATE_SIGNER)


def test_certificate_with_a_bad_vote() -> None:
    so = transfer(A, pk(B), 5, 0)
    good = certify(so, V[:3])
    bad = Certificate(so, good.votes[:2] + ((good.votes[2][0], bytes(64)),))
    _refused(replica(), bad, Reason.BAD_SIGNATURE)


def test_certificate_votes_for_another_order() -> None:
    so = transfer(A, pk(B), 5, 0)
    other = transfer(A, pk(B), 6, 0)
    cert = Certificate(so, certify(other, V[:3]).votes)
    _refused(replica(), cert, Reason.BAD_SIGNATURE)


def test_certificate_with_forged_sender_signature() -> None:
    so = transfer(A, pk(B), 5, 0)
    forged = SignedOrder(so.order, bytes(64))
    _refused(replica(), certify(forged, V[:3]), Reason.BAD_SIGNATURE)


def test_certificate_for_another_chain() -> None:
    _refused(replica(), certify(transfer(A, pk(B), 5, 0, chain="x"), V[:3]), Reason.WRONG_CHAIN)


def test_duplicate_is_ignored_without_verification() -> None:
    r = replica()
    cert = certify(transfer(A, pk(B), 5, 0), V[:3])
    r.receive("p", cert)
    root = r.state.root()
    assert r.receive("p", cert) == [] and r.duplicates == 1 and r.state.root() == root


def test_out_of_order_waits_then_applies() -> None:
    r = replica()
    c0 = certify(transfer(A, pk(B), 5, 0), V[:3])
    c1 = certify(transfer(A, pk(B), 6, 1), V[1:])
    acts = r.receive("p", c1)
    assert acts == [Queued(c1.tx_id, "sequence")] and len(r.pending) == 1
    acts = r.receive("p", c0)
    assert [a.delta.cert.tx_id for a in acts if isinstance(a, Commit)] == [c0.tx_id, c1.tx_id]
    assert len(r.pending) == 0 and r.state.account(pk(A)).next_sequence == 2


def test_waits_for_incoming_funds() -> None:
    r = replica()
    d = key(9)   # unfunded at genesis
    fund = certify(transfer(A, pk(d), 10 * MICRO, 0), V[:3])
    spend = certify(transfer(d, pk(C), 5 * MICRO, 0), V[:3])
    assert r.receive("p", spend) == [Queued(spend.tx_id, "funds")]
    acts = r.receive("p", fund)
    assert [a.delta.cert.tx_id for a in acts if isinstance(a, Commit)] == [fund.tx_id, spend.tx_id]
    assert r.state.account(pk(d)).balance == 5 * MICRO - 1000


def test_conflicting_certificates_are_reported() -> None:
    r = replica()
    c0 = certify(transfer(A, pk(B), 5, 0), V[:3])
    c0x = certify(transfer(A, pk(C), 5, 0), V[1:])
    r.receive("p", c0)
    root = r.state.root()
    acts = r.receive("p", c0x)
    assert isinstance(acts[0], ConflictingCertificates) and acts[0].applied_tx == c0.tx_id
    assert r.state.root() == root


def test_pending_pool_is_bounded() -> None:
    r = Replica(LedgerState(make_genesis()), MemoryHistory(), PendingPool(max_entries=3))
    certs = [certify(transfer(A, pk(B), 1, s), V[:3]) for s in range(6)]
    for c in certs[2:]:
        r.receive("p", c)
    assert len(r.pending) == 3 and r.pending.refused == 1
    r.receive("p", certs[1])   # next-but-one: refused, the pool is full of later ones
    r.receive("p", certs[0])
    assert r.state.account(pk(A)).next_sequence == 1


def test_fees_to_validators_split_by_stake() -> None:
    r = replica(fee_destination="validators", stakes=[1 * MICRO, 1 * MICRO, 1 * MICRO, 2 * MICRO])
    supply = r.state.supply.total
    r.receive("p", certify(transfer(A, pk(B), 5, 0, fee=1001), V[:4]))
    assert r.state.supply.total == supply
    shares = [r.state.account(pk(v)).balance for v in V]
    assert sum(shares) == 1001 and shares[3] in (400, 401) and r.state.invariant_problems() == []


def test_bond_unbond_and_release_after_the_unbonding_period() -> None:
    r = replica()
    bond = SignedOrder.sign(A, BondOrder(chain=CHAIN, epoch=0, sender=pk(A), sequence=0, fee=1000, amount=100 * MICRO))
    unbond = SignedOrder.sign(A, UnbondOrder(chain=CHAIN, epoch=1, sender=pk(A), sequence=1, fee=1000, amount=40 * MICRO))
    r.receive("p", certify(bond, V[:3]))
    a = r.state.account(pk(A))
    assert a.bonded == 100 * MICRO and a.balance == 900 * MICRO - 1000
    r.receive("p", certify(unbond, V[:3]))
    a = r.state.account(pk(A))
    assert a.bonded == 60 * MICRO and a.unbonding == ((3, 40 * MICRO),)
    assert a.spendable(2) == a.balance and a.spendable(3) == a.balance + 40 * MICRO
    # spending the matured stake at epoch 3 releases it first
    big = transfer(A, pk(B), 930 * MICRO, 2, epoch=3)
    assert r.state.order_problem(big.order) is None
    r.receive("p", certify(big, V[:3]))
    a = r.state.account(pk(A))
    assert a.unbonding == () and a.balance == 940 * MICRO - 3000 - 930 * MICRO
    assert r.state.total_staked() == 60 * MICRO + 4 * 1000 * MICRO
    assert r.state.invariant_problems() == []


def _uptime(issuer: object, beneficiary: bytes, seconds: int, epoch: int = 0) -> Receipt:
    return Receipt.issue(issuer, "uptime", beneficiary, epoch,  # type: ignore[arg-type]
                         {"seconds": seconds, "claim": uptime_claim(epoch)})


def _mint(sender: object, receipt: Receipt, amount: int, seq: int, epoch: int = 0) -> SignedOrder:
    return SignedOrder.sign(sender, MintOrder(chain=CHAIN, epoch=epoch, sender=pk(sender), sequence=seq,  # type: ignore[arg-type]
                                              fee=1000, recipient=receipt.beneficiary, amount=amount, receipt=receipt))


def test_mint_with_an_uptime_receipt() -> None:
    g = make_genesis()
    nodes = [Node(v, g) for v in V]
    rc = _uptime(V[1], pk(A), 3600)
    so = _mint(A, rc, 10 * MICRO, 0)
    votes = [n.ask(so) for n in nodes]
    assert all(isinstance(v, Vote) for v in votes)
    r = nodes[0].replica
    supply = r.state.supply.total
    r.receive("p", Certificate.from_votes(so, votes[:3]))  # type: ignore[arg-type]
    assert r.state.supply.minted == 10 * MICRO and r.state.supply.total == supply + 10 * MICRO - 1000
    assert r.state.minted_by_epoch == {0: 10 * MICRO} and r.state.invariant_problems() == []
    # the same receipt cannot pay twice, nor another validator's receipt for the same node and epoch
    again = _mint(A, rc, 1, 1)
    rej = nodes[0].ask(again)
    assert not isinstance(rej, Vote) and rej.rejection.reason is Reason.RECEIPT_USED
    other = _mint(A, _uptime(V[2], pk(A), 1800), 1, 1)
    assert other.order.receipt.receipt_id != rc.receipt_id                 # type: ignore[attr-defined]
    rej = nodes[0].ask(other)
    assert not isinstance(rej, Vote) and rej.rejection.reason is Reason.RECEIPT_USED
    assert isinstance(nodes[0].ask(_mint(A, _uptime(V[2], pk(A), 1800, epoch=1), 1, 1, epoch=1),
                                   now=T0 + 3600 + 5), Vote)          # the next epoch is another claim


@pytest.mark.parametrize("case,reason", [
    ("over_worth", Reason.BAD_EVIDENCE),
    ("self_attested", Reason.BAD_EVIDENCE),
    ("non_validator_issuer", Reason.BAD_EVIDENCE),
    ("forged", Reason.BAD_EVIDENCE),
    ("unknown_kind", Reason.BAD_EVIDENCE),
    ("old_epoch", Reason.BAD_EVIDENCE),
    ("no_claim", Reason.BAD_EVIDENCE),
    ("other_epochs_claim", Reason.BAD_EVIDENCE),
    ("budget", Reason.BUDGET_EXCEEDED),
])
def test_bad_mints(case: str, reason: Reason) -> None:
    g = make_genesis(budget=12 * MICRO)
    n = Node(V[0], g)
    rc = _uptime(V[1], pk(A), 3600)
    amount = 10 * MICRO
    if case == "over_worth":
        amount = 10 * MICRO + 1
    elif case == "self_attested":
        rc = _uptime(V[1], pk(V[1]), 3600)
    elif case == "non_validator_issuer":
        rc = _uptime(B, pk(A), 3600)
    elif case == "forged":
        rc = Receipt(rc.kind, rc.issuer, rc.beneficiary, rc.epoch, rc.body, bytes(64))
    elif case == "no_claim":
        rc = Receipt.issue(V[1], "uptime", pk(A), 0, {"seconds": 3600})
    elif case == "other_epochs_claim":
        rc = Receipt.issue(V[1], "uptime", pk(A), 0, {"seconds": 3600, "claim": uptime_claim(7)})
    elif case == "unknown_kind":
        rc = Receipt.issue(V[1], "fl_round", pk(A), 0, {"round": 1})
    elif case == "old_epoch":
        rc = _uptime(V[1], pk(A), 3600, epoch=0)
    if case == "budget":   # 4 equal validators: each may vote for about half the budget
        assert mint_limit(g, 0) < 10 * MICRO
    so = _mint(A, rc, amount, 0, epoch=2 if case == "old_epoch" else 0)
    now = T0 + 2 * 3600 + 5 if case == "old_epoch" else NOW
    root = n.state.root()
    res = n.ask(so, now)
    assert not isinstance(res, Vote) and res.rejection.reason is reason, res
    assert n.state.root() == root and len(n.locks) == 0


def test_single_validator_is_its_own_committee_and_may_attest_itself() -> None:
    g = make_genesis(n_validators=1)
    n = Node(V[0], g)
    so = _mint(V[0], _uptime(V[0], pk(V[0]), 1800), 5 * MICRO, 0)
    # the validator's balance is 0: it cannot pay the fee of its own mint
    res = n.ask(so)
    assert not isinstance(res, Vote) and res.rejection.reason is Reason.OVERSPEND
    so = _mint(A, _uptime(V[0], pk(A), 1800), 5 * MICRO, 0)
    vote = n.ask(so)
    assert isinstance(vote, Vote)
    acts = n.replica.receive("self", Certificate.from_votes(so, [vote]))
    assert isinstance(acts[0], Commit) and n.state.supply.minted == 5 * MICRO


def test_state_root_is_incremental_and_matches_a_recomputation() -> None:
    r = replica()
    for s in range(20):
        r.receive("p", certify(transfer(A, pk(key(10 + s % 4)), 1000 + s, s), V[:3]))
    assert r.state.recompute_accumulator() == r.state.accumulator
    fresh = LedgerState(make_genesis())
    assert fresh.recompute_accumulator() == fresh.accumulator and fresh.root() != r.state.root()
