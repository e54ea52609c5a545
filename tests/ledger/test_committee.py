"""Committee change at epoch boundaries: computation, certification by the old committee,
agreement between replicas, and certificates checked against the new committee."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fognode.ledger.amounts import MICRO
from fognode.ledger.committee import (CommitteeBody, CommitteeCertificate, CommitteeVote, committee_hash,
                                      compute_members, decode_committee_certificate, signing_time)
from fognode.ledger.errors import CertificateRejected, GenesisError, Reason
from fognode.ledger.genesis import Genesis
from fognode.ledger.messages import BondOrder, Certificate, SignedOrder, TransferOrder, UnbondOrder, Vote
from fognode.ledger.replica import MemoryHistory, Replica
from fognode.ledger.rotation import (CommitteeCollector, CommitteeSigner, PersistCommitteeLock,
                                     SendCommitteeRefusal, SendCommitteeVote, proposal)
from fognode.ledger.state import LedgerState
from fognode.ledger.store import LedgerStore
from fognode.ledger.actions import CertificateRefused, Commit, Queued, SendRejection
from fognode.node.wire import pack, unpack

from .helpers import CHAIN, T0, Node, certify, genesis_dict, key, pk, transfer, validator_keys

L = 100                       # a short epoch (seconds)
V = validator_keys(4)
A, B, C = key(0), key(1), key(2)


def gdict(**kw: Any) -> dict[str, Any]:
    d = genesis_dict(stakes=[1000 * MICRO, 1000 * MICRO, 1000 * MICRO, 500 * MICRO])
    d["ledger"]["epoch_length"] = L
    d["ledger"]["max_validators"] = 4
    d["ledger"].update(kw)
    return d


def gen(**kw: Any) -> Genesis:
    return Genesis.from_node_genesis(gdict(**kw))


def at(epoch: int, frac: float = 0.0) -> float:
    return T0 + epoch * L + frac * L


def bond(k: Any, amount: int, seq: int, epoch: int) -> SignedOrder:
    return SignedOrder.sign(k, BondOrder(chain=CHAIN, epoch=epoch, sender=pk(k), sequence=seq, fee=1000,
                                         amount=amount))


def unbond(k: Any, amount: int, seq: int, epoch: int) -> SignedOrder:
    return SignedOrder.sign(k, UnbondOrder(chain=CHAIN, epoch=epoch, sender=pk(k), sequence=seq, fee=1000,
                                           amount=amount))


def apply(node: Node, cert: Certificate) -> None:
    acts = node.replica.receive("p", cert)
    assert acts and all(isinstance(a, Commit) for a in acts), acts


def certify_committee(nodes: list[Node], proposer: Node, now: float) -> CommitteeCertificate:
    """Run the real signing round: the proposer's body, every node's signer, one collector."""
    body = proposal(proposer.state, now)
    assert body is not None
    coll = CommitteeCollector(body, proposer.state.committee_for(body.epoch - 1))
    for n in nodes:
        for a in CommitteeSigner(n.key, n.state, n.committee_locks).receive("proposer", body, now):
            if isinstance(a, SendCommitteeVote):
                coll.add_vote(a.vote)
            elif isinstance(a, SendCommitteeRefusal):
                coll.add_refusal(n.key.verify_key.encode(), a.reason, a.message)
    assert coll.certificate is not None, coll.refusals
    return coll.certificate


def mknode(k: Any, g: Genesis) -> Node:
    return Node(k, g)


# -- computation --------------------------------------------------------------------------------

def test_compute_members_min_stake_max_size_and_order() -> None:
    g = gen(min_validator_stake=10, max_validators=3)
    k = [bytes([i]) * 32 for i in range(6)]
    stakes = {k[5]: 50, k[0]: 50, k[3]: 9, k[1]: 70, k[2]: 10, k[4]: 50}
    got = compute_members(g, stakes)
    # 9 is under the minimum; of 70, 50, 50, 50, 10 the three largest, ties by address
    assert got == ((k[0], 50), (k[1], 70), (k[4], 50))
    assert compute_members(g, dict(reversed(list(stakes.items())))) == got
    assert compute_members(g, {k[0]: 9}) == ()


def test_committee_lags_two_epochs_behind_the_stake_orders() -> None:
    g = gen()
    s = LedgerState(g)
    genesis_members = tuple(sorted(g.validators))
    assert s.computed_members(2) == genesis_members
    s.apply(certify(bond(A, 900 * MICRO, 0, epoch=0), V[:3]))
    s.apply(certify(bond(B, 800 * MICRO, 0, epoch=1), V[:3]))
    # epoch 2 counts stake orders of epoch 0: A (900) replaces the 500 validator
    m2 = dict(s.computed_members(2))
    assert pk(A) in m2 and pk(V[3]) not in m2 and pk(B) not in m2 and len(m2) == 4
    # epoch 3 counts epoch 1 too: B (800) is fifth of five, cut by max_validators = 4
    m3 = dict(s.computed_members(3))
    assert pk(B) not in m3 and pk(A) in m3
    s.apply(certify(unbond(A, 850 * MICRO, 1, epoch=2), V[:3]))
    m4 = dict(s.computed_members(4))
    assert pk(A) not in m4 and pk(B) in m4 and m4[pk(B)] == 800 * MICRO
    assert s.computed_members(3) == tuple(sorted(m3.items()))   # later orders do not rewrite the past


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 2]), st.booleans(), st.integers(1, 300), st.integers(0, 3)),
                min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_replicas_with_the_same_stake_certificates_compute_the_same_committees(
        steps: list[tuple[int, bool, int, int]], rnd: random.Random) -> None:
    g = gen(min_validator_stake=100 * MICRO)
    ref = LedgerState(g)
    users, certs, seq = [A, B, C], [], [0, 0, 0]
    for who, is_bond, amount, epoch in steps:
        u = users[who]
        bonded = ref.account(pk(u)).bonded
        if is_bond or bonded < amount * MICRO:
            so = bond(u, amount * MICRO, seq[who], epoch)
        else:
            so = unbond(u, amount * MICRO, seq[who], epoch)
        if ref.order_problem(so.order) is not None:
            continue
        c = certify(so, V[:3])
        ref.apply(c)
        certs.append(c)
        seq[who] += 1
    shuffled = certs[:]
    rnd.shuffle(shuffled)
    other = Replica(LedgerState(g), MemoryHistory())
    for c in shuffled:      # any delivery order: the pending pool reorders per sender
        other.receive("p", c)
    for e in range(2, 7):
        assert other.state.computed_members(e) == ref.computed_members(e)
        assert other.state.stakes_upto(e) == ref.stakes_upto(e)


# -- certification --------------------------------------------------------------------------------

def rotated() -> tuple[Genesis, list[Node], CommitteeCertificate]:
    """Four validators and user A; A bonds 900 in epoch 0; the committee of epoch 2 is
    certified halfway through epoch 1."""
    g = gen()
    nodes = [mknode(k, g) for k in V]
    c = certify(bond(A, 900 * MICRO, 0, epoch=0), V[:3])
    for n in nodes:
        apply(n, c)
    cert = certify_committee(nodes, nodes[0], signing_time(g, 2))
    return g, nodes, cert


def test_old_committee_certifies_the_new_one_and_every_replica_switches() -> None:
    g, nodes, cert = rotated()
    assert cert.epoch == 2 and dict(cert.members)[pk(A)] == 900 * MICRO and pk(V[3]) not in dict(cert.members)
    assert cert.prev_hash == committee_hash(g.committee)
    wire = unpack(pack(cert.to_wire()))
    assert decode_committee_certificate(wire) == cert
    for n in nodes:
        assert n.state.committees.add(cert) == [cert]
        assert n.state.committee_for(1) == g.committee
        assert set(n.state.committee_for(2).members) == {pk(V[0]), pk(V[1]), pk(V[2]), pk(A)}
        assert n.state.committee_for(9) == n.state.committee_for(2)     # no later certificate: it stays
        assert n.state.committees.add(cert) == []                        # a duplicate changes nothing


def test_committee_certificate_short_of_quorum_or_signed_by_outsiders_is_refused() -> None:
    g, nodes, cert = rotated()
    state = LedgerState(g)
    body = cert.body
    # 2000 of 3500 stake is not more than 2/3
    short = CommitteeCertificate(body, tuple(sorted((pk(k), CommitteeVote.sign(k, body).signature)
                                                     for k in V[:2])))
    with pytest.raises(CertificateRejected) as e:
        state.committees.add(short)
    assert e.value.reason is Reason.NO_QUORUM
    # A is in the new committee but not in the old one, which must sign
    outsider = CommitteeCertificate(body, tuple(sorted((pk(k), CommitteeVote.sign(k, body).signature)
                                                        for k in [V[0], V[1], A])))
    with pytest.raises(CertificateRejected) as e:
        state.committees.add(outsider)
    assert e.value.reason is Reason.NON_COMMITTEE_SIGNER
    forged = CommitteeCertificate(body, tuple((k, bytes(64)) for k, _ in cert.votes))
    with pytest.raises(CertificateRejected) as e:
        state.committees.add(forged)
    assert e.value.reason is Reason.BAD_SIGNATURE
    assert state.committee_for(2) == g.committee and state.committees.certs == {}


def test_validator_refuses_a_member_list_it_does_not_compute_and_signs_after_catching_up() -> None:
    g = gen()
    ahead, behind = mknode(V[0], g), mknode(V[1], g)
    apply(ahead, certify(bond(A, 900 * MICRO, 0, epoch=0), V[:3]))
    now = signing_time(g, 2)
    body = proposal(ahead.state, now)
    assert body is not None
    signer = CommitteeSigner(V[1], behind.state, behind.committee_locks)
    [refusal] = signer.receive("p", body, now)
    assert isinstance(refusal, SendCommitteeRefusal) and refusal.reason is Reason.NOT_YET
    # a forged list (stakes changed) is refused the same way, by the replica that is up to date
    forged = CommitteeBody(body.chain, body.epoch, tuple((k, s + 1) for k, s in body.members), body.prev_hash)
    [r2] = CommitteeSigner(V[0], ahead.state, ahead.committee_locks).receive("p", forged, now)
    assert isinstance(r2, SendCommitteeRefusal) and r2.reason is Reason.NOT_YET
    # once the lagging replica has the bond certificate it signs, lock first
    apply(behind, certify(bond(A, 900 * MICRO, 0, epoch=0), V[:3]))
    lock, vote = signer.receive("p", body, now)
    assert isinstance(lock, PersistCommitteeLock) and lock.body == body and isinstance(vote, SendCommitteeVote)
    # one body per epoch: another one is a conflict, the same one the same vote
    other = CommitteeBody(body.chain, body.epoch, tuple(sorted(g.validators)), body.prev_hash)
    [r3] = signer.receive("p", other, now)
    assert isinstance(r3, SendCommitteeRefusal) and r3.reason is Reason.CONFLICT
    [again] = signer.receive("p", body, now)
    assert isinstance(again, SendCommitteeVote)


def test_signer_refuses_outside_the_signing_window_and_when_not_in_the_old_committee() -> None:
    g = gen()
    n = mknode(V[0], g)
    body = proposal(n.state, signing_time(g, 2))
    assert body is not None
    assert proposal(n.state, signing_time(g, 2) - 1) is None
    [r] = CommitteeSigner(V[0], n.state, {}).receive("p", body, signing_time(g, 2) - 1)
    assert isinstance(r, SendCommitteeRefusal) and r.reason is Reason.WRONG_EPOCH
    [r] = CommitteeSigner(A, n.state, {}).receive("p", body, signing_time(g, 2))
    assert isinstance(r, SendCommitteeRefusal) and r.reason is Reason.NON_COMMITTEE_SIGNER


def test_after_rotation_certificates_are_checked_against_the_new_committee() -> None:
    g, nodes, cert = rotated()
    r = nodes[1]
    r.state.committees.add(cert)
    old_quorum = [V[0], V[1], V[3]]                      # 2500 of 3500: a quorum of the old committee
    new_quorum = [V[0], V[1], A]                         # 2900 of 3900: a quorum of the new one
    late = transfer(B, pk(C), 5 * MICRO, 0, epoch=2)
    [refused] = r.replica.receive("p", certify(late, old_quorum))
    assert isinstance(refused, CertificateRefused) and refused.reason is Reason.NON_COMMITTEE_SIGNER
    [ok] = r.replica.receive("p", certify(late, new_quorum))
    assert isinstance(ok, Commit)
    # orders of epoch 1 still belong to the old committee
    early = transfer(C, pk(B), 5 * MICRO, 0, epoch=1)
    [refused] = r.replica.receive("p", certify(early, new_quorum))
    assert isinstance(refused, CertificateRefused) and refused.reason is Reason.NON_COMMITTEE_SIGNER
    [ok] = r.replica.receive("p", certify(early, old_quorum))
    assert isinstance(ok, Commit)
    # the validators follow: V3 no longer signs epoch-2 orders, A does
    order = transfer(B, pk(C), 1 * MICRO, 1, epoch=2)
    v3 = nodes[3]
    v3.state.committees.add(cert)
    got = v3.ask(order, now=at(2, 0.1))
    assert isinstance(got, SendRejection) and got.rejection.reason is Reason.NON_COMMITTEE_SIGNER
    a_node = mknode(A, g)
    apply(a_node, certify(bond(A, 900 * MICRO, 0, epoch=0), V[:3]))
    a_node.state.committees.add(cert)
    apply(a_node, certify(late, new_quorum))
    got = a_node.ask(order, now=at(2, 0.1))          # a new member waits for the old committee's locks
    assert isinstance(got, SendRejection) and got.rejection.reason is Reason.NOT_YET
    a_node.validator.handovers.add(2)                  # (test_handover.py: how it gets them)
    assert not isinstance(a_node.ask(order, now=at(2, 0.1)), SendRejection)
    # a previous-epoch order is closed once the old committee sealed; stake orders always are
    prev = transfer(C, pk(B), 1 * MICRO, 1, epoch=1)
    nodes[0].state.committees.add(cert)
    got = nodes[0].ask(prev, now=at(2, 0.1))
    assert isinstance(got, SendRejection) and got.rejection.reason is Reason.WRONG_EPOCH
    got = nodes[0].ask(bond(B, 1 * MICRO, 0, epoch=1), now=at(2, 0.1))
    assert isinstance(got, SendRejection) and got.rejection.reason is Reason.WRONG_EPOCH


def test_committee_certificates_chain_and_replicas_agree_whatever_the_arrival_order() -> None:
    g, nodes, cert2 = rotated()
    for n in nodes:
        n.state.committees.add(cert2)
    a_node = mknode(A, g)
    apply(a_node, certify(bond(A, 900 * MICRO, 0, epoch=0), V[:3]))
    a_node.state.committees.add(cert2)
    new = [nodes[0], nodes[1], nodes[2], a_node]
    # the committee of epoch 3 (stakes of epochs <= 1: unchanged) is certified by that of epoch 2
    cert3 = certify_committee(new, a_node, signing_time(g, 3))
    assert cert3.prev_hash == committee_hash(nodes[0].state.committee_for(2))
    assert {k for k, _ in cert3.votes} <= {pk(V[0]), pk(V[1]), pk(V[2]), pk(A)}
    fresh1, fresh2 = LedgerState(g), LedgerState(g)
    assert fresh1.committees.add(cert2) == [cert2]
    assert fresh1.committees.add(cert3) == [cert3]
    assert fresh2.committees.add(cert3) == []            # its certifying committee is not known yet
    assert fresh2.committee_for(3) == g.committee
    assert fresh2.committees.add(cert2) == [cert2, cert3]
    for epoch in range(0, 6):
        assert fresh1.committee_for(epoch) == fresh2.committee_for(epoch)
    # another certificate for a certified epoch is a conflict (more than f faulty)
    other2 = CommitteeCertificate(CommitteeBody(CHAIN, 2, tuple(sorted(g.validators)), cert2.prev_hash), cert2.votes)
    with pytest.raises(CertificateRejected) as e:
        fresh1.committees.add(other2)
    assert e.value.reason is Reason.CONFLICT
    # a certificate arriving after a later epoch was certified cannot rewrite history
    late = LedgerState(g)
    late.committees.load([cert3])
    with pytest.raises(CertificateRejected) as e:
        late.committees.add(cert2)
    assert e.value.reason is Reason.WRONG_EPOCH


def test_stake_and_committees_survive_a_restart(tmp_path: Path) -> None:
    g, nodes, cert = rotated()
    store = LedgerStore(tmp_path / "db", g)
    s = store.load_state()
    r = Replica(s, store)
    deltas = [a.delta for a in r.receive("p", certify(bond(A, 900 * MICRO, 0, epoch=0), V[:3]))
              if isinstance(a, Commit)]
    store.commit(deltas)
    store.put_committees(s.committees.add(cert))
    store.persist_committee_lock(cert.body)
    root, members = s.root(), s.computed_members(2)
    store.close()
    store = LedgerStore(tmp_path / "db", g)
    s2 = store.load_state()
    assert s2.root() == root and s2.computed_members(2) == members
    assert s2.committee_for(2) == s.committee_for(2) and s2.committees.certified(2) == cert
    assert store.committee_locks() == {2: cert.body}
    assert s2.invariant_problems() == []
    store.close()


def test_genesis_committee_fields_are_validated_and_optional() -> None:
    g = Genesis.from_node_genesis(genesis_dict())
    assert "max_validators" not in g.to_dict() and "min_validator_stake" not in g.to_dict()
    assert Genesis.from_dict(gen(max_validators=7).to_dict()).max_validators == 7
    for bad in ({"max_validators": 0}, {"max_validators": 1000}, {"min_validator_stake": -1},
                {"max_validators": True}):
        with pytest.raises(GenesisError):
            gen(**bad)


# -- end to end: four validator processes' worth of roles on real overlays ---------------------

class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.slow
async def test_cluster_certifies_the_next_committee_and_uses_it(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import trio

    from .cluster import ledger_cluster, wait_until

    monkeypatch.setenv("FOGNODE_PASSPHRASE", "")
    t0 = 1_800_000_000
    clock = FakeClock(t0 + 10.0)
    with trio.fail_after(60):
        async with ledger_cluster(tmp_path, 4, clock=clock, genesis_time=t0,
                                  ledger_overrides={"epoch_length": L, "max_validators": 5}) as c:
            roles = [n.role for n in c.nodes]
            assert all(r is not None for r in roles)
            r0 = roles[0]
            assert r0 is not None
            info = await r0.ledger_info()
            assert info["committees"]["next"]["certified"] is False and info["committees"]["current"]["source"] == "genesis"
            res = await r0.stake_bond("999")                          # node 0's wallet, order epoch 0
            assert res["epoch"] == 0
            await wait_until(lambda: all(n.svc.state.applied == 1 for n in c.nodes))
            wallet0 = c.nodes[0].wallet
            clock.t = signing_time(c.nodes[0].svc.genesis, 2)          # halfway through epoch 1
            await wait_until(lambda: all(n.svc.state.committees.certified(2) is not None for n in c.nodes), 30)
            for n in c.nodes:
                com = n.svc.state.committee_for(2)
                assert wallet0 in com and len(com.members) == 5 and n.svc.state.committee_for(1) == n.svc.genesis.committee
            st = await r0.stake_status()
            assert st["next_committee_certified"] is True and st["next_committee_stake"] == "999"
            assert st["committee_stake"] == "0"
            # an order of epoch 1 that only node 3 signs (the sender never finishes it): its lock
            # must reach every member of the new committee through the handover
            s2 = c.nodes[2].svc
            key2 = await s2.submitter.unlock_wallet(c.nodes[2].wallet)
            half = SignedOrder.sign(key2, TransferOrder(chain=s2.genesis.chain_id, epoch=1, sender=c.nodes[2].wallet,
                                                        sequence=0, fee=s2.genesis.fee, recipient=wallet0,
                                                        amount=MICRO, memo=""))
            [vote] = c.nodes[3].svc.validate("test", half)
            assert isinstance(vote, Vote)
            clock.t = t0 + 2 * L + 1                                   # epoch 2, in the old committee's grace
            assert all(n.svc.handover.due(clock.t) is None for n in c.nodes)
            info = await r0.ledger_info()
            assert info["committees"]["current"]["took_over_at"] == 2
            assert info["committees"]["current"]["handover"] == "not started"
            clock.t = t0 + 2 * L + 5                                   # sealed: the locks are handed over
            await wait_until(lambda: all(2 in n.svc.validator.handovers for n in c.nodes), 30)
            for n in c.nodes:
                assert n.svc.locks.get(c.nodes[2].wallet, 0) == half
                assert n.svc.store.handovers_done() == {2}
            assert (await r0.ledger_info())["committees"]["current"]["handover"] == "complete"
            r1 = roles[1]
            assert r1 is not None
            sent = await r1.wallet_send((await r0.wallet_address())["address"], "1")
            assert sent["epoch"] == 2 and sent["status"] == "final"
            info = await r1.ledger_info()
            cur = info["committees"]["current"]
            assert cur["certified"] is True and cur["epoch"] == 2 and len(cur["members"]) == 5
            await wait_until(lambda: len({n.svc.state.root() for n in c.nodes}) == 1)
            # restarts are covered by the store test; here: the same committee everywhere. Every
            # member of the old committee may assemble a certificate from the first quorum of
            # votes it gets and each node keeps the first it receives (committee_service.py), so
            # two nodes may hold certificates of one body with different quorums of votes
            for n in c.nodes:
                [held] = n.svc.store.committee_certificates()
                assert held == n.svc.state.committees.certified(2)
                assert held.body == c.nodes[0].svc.state.committees.certified(2).body


def test_a_certificate_of_the_new_committee_waits_for_the_committee_certificate() -> None:
    g, nodes, cert = rotated()
    r = nodes[2]                                         # has not received the committee certificate
    late = transfer(B, pk(C), 5 * MICRO, 0, epoch=2)
    [q] = r.replica.receive("p", certify(late, [V[0], V[1], A]))
    assert isinstance(q, Queued) and q.why == "committee" and r.state.applied == 1
    r.state.committees.add(cert)
    [done] = r.replica.committees_changed()
    assert isinstance(done, Commit) and done.delta.cert.tx_id == late.tx_id and not r.replica.awaiting
    # with the committee certified, outsiders are refused at once
    other = transfer(C, pk(B), 5 * MICRO, 0, epoch=2)
    [refused] = r.replica.receive("p", certify(other, [V[0], V[1], V[3]]))
    assert isinstance(refused, CertificateRefused) and refused.reason is Reason.NON_COMMITTEE_SIGNER
    # genesis epochs never wait
    early = transfer(C, pk(B), 5 * MICRO, 0, epoch=1)
    [refused] = r.replica.receive("p", certify(early, [V[0], A]))
    assert isinstance(refused, CertificateRefused)
