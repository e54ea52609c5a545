"""vote_watch: a validator sees "no quorum" from its own votes (no order of its own needed), on a
real validator, lock table and replica state: a vote not followed by a certificate within the
bound makes the ledger degraded, the certificate arriving heals it, votes reloaded at start are
not watched, and a vote is forgotten after `forget`."""
from __future__ import annotations

from fognode.ledger.amounts import MICRO
from fognode.ledger.validator import LockTable
from fognode.ledger.vote_watch import VoteWatch

from .helpers import NOW, Node, certify, key, make_genesis, pk, transfer, validator_keys


def test_votes_without_certificates_are_seen_and_healed() -> None:
    vals = validator_keys()
    node = Node(vals[0], make_genesis())
    watch = VoteWatch(after=10, forget=600)
    assert watch.check(node.locks, node.state, NOW) == ""
    so = transfer(key(0), pk(key(1)), 5 * MICRO, 0)
    vote = node.ask(so)                                     # this validator signs; the others do not (yet)
    assert watch.check(node.locks, node.state, NOW + 1) == ""
    assert watch.check(node.locks, node.state, NOW + 5) == ""   # within the bound
    said = watch.check(node.locks, node.state, NOW + 11)
    assert said.startswith("1 order(s) this validator signed have no certificate after 10 s") and "quorum" in said
    # the certificate arrives (the committee recovered): healthy again
    cert = certify(so, vals[:3])
    assert vote.tx_id == cert.tx_id
    node.replica.receive("peer", cert)
    assert node.state.account(pk(key(0))).next_sequence == 1
    assert watch.check(node.locks, node.state, NOW + 12) == ""

    # another vote that nothing follows is forgotten after `forget` (its sender may be gone)
    node.ask(transfer(key(1), pk(key(0)), MICRO, 0))
    assert watch.check(node.locks, node.state, NOW + 20) == ""
    assert watch.check(node.locks, node.state, NOW + 31).startswith("1 order(s)")
    assert watch.check(node.locks, node.state, NOW + 621) == ""

    # a restarted ledger (a new lock table reloaded from disk): its old votes are not watched
    reloaded = LockTable()
    for order in node.persisted:
        reloaded.add(order)
    assert watch.check(reloaded, node.state, NOW + 700) == ""
    assert watch.check(reloaded, node.state, NOW + 800) == ""
