"""FL reward evidence: the signed round header in plans, "fl_update" ledger receipts anchored
in the starter's announcement, and what the verifier refuses (each forgery with its reason)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import msgpack
import pytest
from nacl.signing import SigningKey

from fognode.ledger.receipts import EvidenceError, Receipt
from fognode.node.peerid import peer_id_from_pubkey
from fognode.node.wire import digest, pack
from fognode.protocols.fl.messages import (
    DeviceFacts, OptIn, RoundPlan, SessionAnnouncement, SessionSpec, coordinators_of,
    decode_gossip, encode_gossip, plan_problem)
from fognode.protocols.fl.rewards.merkle import leaf_hash, merkle_proof, merkle_root, merkle_verify
from fognode.protocols.fl.rewards.receipts import (
    PPM, AcceptedUpdate, FlUpdateVerifier, RoundReceipt, issue_ledger_receipts, round_reward_of)
from fognode.protocols.fl.rewards.round_header import RoundHeader, claim_of
from fognode.protocols.fl.session.election import aggregator_order

STARTER = SigningKey(bytes([60]) * 32)
FUNDER = SigningKey(bytes([61]) * 32)      # the ledger wallet that funds the session's reward pool
BUDGET = 3_000_000
ROUNDS = 3
FALLBACKS = 2


@functools.lru_cache(maxsize=None)
def fkey(i: int) -> SigningKey:
    return SigningKey(digest(b"fl-evidence-peer" + i.to_bytes(2, "big")))


@functools.lru_cache(maxsize=None)
def fpid(i: int) -> str:
    return peer_id_from_pubkey(bytes(fkey(i).verify_key))


@functools.lru_cache(maxsize=None)
def wallet(i: int) -> bytes:
    return bytes(SigningKey(digest(b"fl-evidence-wallet" + i.to_bytes(2, "big"))).verify_key)


def pid_of(key: SigningKey) -> str:
    return peer_id_from_pubkey(bytes(key.verify_key))


def wire(b: bytes) -> Any:
    return msgpack.unpackb(b, raw=False, strict_map_key=True)


def announcement(starter: SigningKey = STARTER, budget: int = BUDGET) -> SessionAnnouncement:
    spec = SessionSpec(task="synthetic", rounds=ROUNDS, min_participants=2, participants=8,
                       reward_budget=budget, fallbacks=FALLBACKS)
    return SessionAnnouncement(spec, pid_of(starter), bytes(starter.verify_key), 1.0, b"n" * 16,
                               b"a" * 32, b"b" * 32, funder=bytes(FUNDER.verify_key)).signed(starter)


def plan_for(ann: SessionAnnouncement, round_no: int = 1, n: int = 5, *, signer: SigningKey = STARTER,
             wallets: bool = True) -> RoundPlan:
    parts = tuple((fpid(i), min(0.1 + i / 10, 1.0)) for i in range(n))
    ws = tuple(wallet(i) if i % 2 == 0 else b"" for i in range(n)) if wallets else ()
    return RoundPlan(ann.session_id, round_no, 0, bytes([round_no]) * 32, parts, b"m" * 32, round_no - 1,
                     (ann.starter,), (), ws).with_header(signer, pid_of(signer), 1 + FALLBACKS)


def key_of(peer: str) -> SigningKey:
    return next(fkey(i) for i in range(300) if fpid(i) == peer)


def round_receipt(ann: SessionAnnouncement, plan: RoundPlan, aggregator: str,
                  reward: int | None = None) -> RoundReceipt:
    peers = plan.peers
    w = 1.0 / len(peers)
    acc = tuple(AcceptedUpdate(p, w, 10) for p in peers)
    k = key_of(aggregator)
    return RoundReceipt(ann.session_id, plan.round, plan.try_no, aggregator, bytes(k.verify_key),
                        plan.base_model_hash, b"n" * 32, acc,
                        round_reward_of(ann.spec) if reward is None else reward, 5.0).signed(k)


def issued(ann: SessionAnnouncement, plan: RoundPlan, slot: int = 0) -> tuple[SigningKey, list[Receipt]]:
    assert plan.header is not None
    agg = plan.header.order[slot]
    k = key_of(agg)
    return k, issue_ledger_receipts(k, round_receipt(ann, plan, agg), ann, plan, epoch=0)


V = FlUpdateVerifier()


def reissue(k: SigningKey, r: Receipt, beneficiary: bytes | None = None, **body: Any) -> Receipt:
    return Receipt.issue(k, r.kind, r.beneficiary if beneficiary is None else beneficiary, r.epoch,
                         {**r.body, **body})


# -- merkle ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 256])
def test_merkle_proofs_verify_for_every_leaf_and_only_there(n: int) -> None:
    leaves = [leaf_hash(f"p{i}", bytes([i % 256]) * 32) for i in range(n)]
    root = merkle_root(leaves)
    for i in range(n):
        path = merkle_proof(leaves, i)
        assert len(path) <= 8
        assert merkle_verify(leaves[i], i, n, path, root)
        assert not merkle_verify(leaves[i], (i + 1) % n, n, path, root) or n == 1
        assert not merkle_verify(leaf_hash("x", b""), i, n, path, root)
    other = merkle_root(leaves[:-1] + [leaf_hash("x", b"")])
    assert not merkle_verify(leaves[0], 0, n, merkle_proof(leaves, 0), other)
    assert not merkle_verify(leaves[0], 0, n, merkle_proof(leaves, 0) + [root], root)


# -- the plan's header ------------------------------------------------------------------------

def test_plan_header_round_trips_and_matches_the_election() -> None:
    ann = announcement()
    plan = plan_for(ann)
    got = decode_gossip(wire(encode_gossip(plan)), peer=ann.starter)
    assert got == plan
    assert isinstance(got, RoundPlan) and got.header is not None
    assert got.header.order == aggregator_order(plan.seed, plan.participants, 1 + FALLBACKS)
    assert plan_problem(ann, got, 1 + FALLBACKS) is None
    assert coordinators_of(ann) == (ann.starter,)
    assert got.wallet_of(fpid(0)) == wallet(0) and got.wallet_of(fpid(1)) == bytes(fkey(1).verify_key)


def test_participants_refuse_plans_whose_header_does_not_match() -> None:
    ann = announcement()
    plan = plan_for(ann)
    count = 1 + FALLBACKS
    assert "no signed round header" in (plan_problem(ann, dataclasses.replace(plan, header=None), count) or "")
    outsider = plan_for(ann, signer=fkey(0))
    assert "not the session's coordinator of rank 0" in (plan_problem(ann, outsider, count) or "")
    assert plan.header is not None
    h = plan.header
    forged = RoundHeader(h.session_id, h.round, h.try_no, h.seed, tuple(reversed(h.order)),
                         h.participants_root, h.participants, h.signer, h.signer_key).signed(STARTER)
    assert "aggregator order" in (plan_problem(ann, dataclasses.replace(plan, header=forged), count) or "")
    more = dataclasses.replace(plan, participants=plan.participants[:-1])
    assert "participant digest" in (plan_problem(ann, more, count) or "") \
        or "aggregator order" in (plan_problem(ann, more, count) or "")
    other_wallet = dataclasses.replace(plan, wallets=(wallet(9),) + plan.wallets[1:])
    assert "participant digest" in (plan_problem(ann, other_wallet, count) or "")
    later = dataclasses.replace(plan, round=2)
    assert "another session, round" in (plan_problem(ann, later, count) or "")
    raw = wire(encode_gossip(plan))
    raw["body"]["header"]["order"] = list(reversed(raw["body"]["header"]["order"]))
    with pytest.raises(Exception, match="bad signature"):
        decode_gossip(raw)


def test_opt_in_carries_the_reward_wallet() -> None:
    m = OptIn(b"s" * 32, DeviceFacts(region="eu", wallet=wallet(1)))
    got = decode_gossip(wire(encode_gossip(m)))
    assert isinstance(got, OptIn) and got.facts.wallet == wallet(1)
    plain = OptIn(b"s" * 32, DeviceFacts(region="eu"))
    assert "wallet" not in plain.to_wire()["facts"]


# -- ledger receipts ----------------------------------------------------------------------------

def test_valid_receipts_pay_the_planned_wallets_by_weight() -> None:
    ann = announcement()
    plan = plan_for(ann)
    k, receipts = issued(ann, plan)
    assert plan.header is not None
    agg = plan.header.order[0]
    others = [p for p in plan.peers if p != agg]
    assert [r.beneficiary for r in receipts] == [plan.wallet_of(p) for p in others]
    per = round_reward_of(ann.spec) * int(round(PPM / len(plan.peers))) // PPM
    assert [V.max_reward(r, None) for r in receipts] == [per] * len(others)
    assert all(r.signature_ok() and r.claim_id != r.receipt_id for r in receipts)
    assert all(r.body["claim"] == claim_of(ann.session_id, 1, r.body["peer"]) for r in receipts)
    # a fallback aggregator's receipt for the same participant claims the same thing
    _, fb = issued(ann, plan, slot=1)
    same = {r.beneficiary: r.claim_id for r in receipts}
    assert any(same.get(r.beneficiary) == r.claim_id for r in fb)
    assert all(r.receipt_id not in {x.receipt_id for x in receipts} for r in fb)
    assert issue_ledger_receipts(k, round_receipt(ann, plan, agg, reward=0), ann, plan, 0) == []


def test_receipts_stay_compact_for_a_256_participant_plan() -> None:
    ann = announcement()
    plan = plan_for(ann, n=256)
    _, receipts = issued(ann, plan)
    assert len(receipts) == 255
    assert max(len(pack(r.to_wire())) for r in receipts) < 3000
    assert V.max_reward(receipts[-1], None) > 0


def test_forgeries_are_refused_with_their_reason() -> None:
    ann = announcement()
    plan = plan_for(ann)
    k, receipts = issued(ann, plan)
    r = receipts[0]
    assert plan.header is not None
    outsider = next(p for p in plan.peers if p not in plan.header.order)
    ko = key_of(outsider)

    def refused(receipt: Receipt, match: str) -> None:
        with pytest.raises(EvidenceError, match=match):
            V.max_reward(receipt, None)

    # the issuer is a participant, not the elected aggregator or a fallback
    refused(Receipt.issue(ko, r.kind, r.beneficiary, r.epoch, r.body), "not in round 1's aggregator order")
    # the header is signed by someone who does not coordinate the session
    rogue = plan_for(ann, signer=fkey(0))
    assert rogue.header is not None
    refused(reissue(k, r, header=rogue.header.to_wire()), "not a coordinator")
    # the announcement was changed after the starter signed it (a bigger budget)
    tampered = ann.to_wire()
    tampered["spec"] = {**tampered["spec"], "budget": BUDGET * 100}
    refused(reissue(k, r, ann=tampered), "bad signature")
    # a session the forger announced itself: the starter's header is for another session
    mine = announcement(starter=fkey(9), budget=BUDGET * 100)
    refused(reissue(k, r, ann=mine.to_wire()), "round header is for session")
    # a round reward above (or below) the budget split per round
    refused(reissue(k, r, round_reward=round_reward_of(ann.spec) + 1), "budget per round")
    refused(reissue(k, r, round_reward=BUDGET), "budget per round")
    # a round past the session's rounds, with a header the coordinator did sign
    late = plan_for(ann, round_no=ROUNDS + 1)
    assert late.header is not None
    kl, late_receipts = issued(ann, late)
    refused(late_receipts[0], f"round {ROUNDS + 1} is past the session's {ROUNDS} rounds")
    # the claim is not this (session, round), or missing
    refused(reissue(k, r, claim=b"c" * 32), "claim is not")
    refused(reissue(k, r, claim=claim_of(ann.session_id, 1, plan.header.order[0])), "claim is not")
    refused(reissue(k, r, claim=claim_of(ann.session_id, 2, r.body["peer"])), "claim is not")
    body = dict(r.body)
    del body["claim"]
    refused(Receipt.issue(k, r.kind, r.beneficiary, r.epoch, body), "missing field 'claim'")
    # self-attestation: the aggregator names itself (its own peer and key)
    agg = plan.header.order[0]
    i = plan.peers.index(agg)
    proof = merkle_proof(plan.leaves(), i)
    refused(reissue(k, r, beneficiary=plan.wallet_of(agg), peer=agg, index=i, proof=proof,
                    claim=claim_of(ann.session_id, 1, agg)), "own")
    refused(reissue(k, r, beneficiary=bytes(k.verify_key)), "own")
    # a beneficiary that is not the participant's planned wallet
    refused(reissue(k, r, beneficiary=wallet(50)), "not the reward wallet")
    refused(reissue(k, r, index=(r.body["index"] + 1) % len(plan.peers)), "not the reward wallet")
    # weight bounds
    refused(reissue(k, r, weight_ppm=0), "weight_ppm")
    refused(reissue(k, r, weight_ppm=PPM + 1), "weight_ppm")
    # a session without a reward budget pays nothing
    free = announcement(budget=0)
    free_plan = plan_for(free)
    assert issued(free, free_plan)[1] == []


def test_core_refuses_to_train_for_a_plan_with_a_bad_header() -> None:
    from fognode.protocols.fl.actions import FetchModel, Train
    from fognode.protocols.fl.session.selection import round_seed
    from tests.fl.harness import Sim

    sim = Sim(3)
    spec = SessionSpec(task="synthetic", rounds=1, min_participants=2, participants=3, deadline=5.0,
                       optin_seconds=600.0, task_params={"max_samples": 60}, reward_budget=300)
    sid = sim.start(spec)
    sim.step(0.25)
    starter = sim.nodes[0]
    nd = sim.nodes[1]
    ann = nd.core.sessions[sid].ann
    parts = tuple((x.peer, 0.5) for x in sim.nodes)
    plan = RoundPlan(sid, 1, 0, round_seed(sid, 1, 0), parts, ann.initial_model_hash, 0, (starter.peer,))

    def deliver(p: RoundPlan) -> list[Any]:
        got = decode_gossip(wire(encode_gossip(p)), peer=starter.peer)
        return nd.core.receive(starter.peer, got, sim.now)

    # signed by a peer that does not coordinate the session: refused, nothing to train
    acts = deliver(plan.with_header(fkey(0), fpid(0), 1 + spec.fallbacks))
    assert not [a for a in acts if isinstance(a, (FetchModel, Train))]
    assert "not the session's coordinator of rank 0" in nd.core.status(sid)["reason"]
    assert nd.core.sessions[sid].plan is None
    # no header at all: refused too
    assert deliver(plan) == [] and "no signed round header" in nd.core.status(sid)["reason"]
    # the starter's header: the participant takes part
    acts = deliver(plan.with_header(starter.key, starter.peer, 1 + spec.fallbacks))
    assert [a for a in acts if isinstance(a, (FetchModel, Train))]
    assert nd.core.status(sid)["reason"] == ""


# -- through the ledger's validators and replicas ---------------------------------------------

def _ledger_nodes(funded: int = 3) -> list[Any]:
    """Four validators with their replicas, which hold the default announcement's reward pool
    (funded by FUNDER with the session's budget: "fl_update" receipts are paid from it)."""
    from fognode.ledger.address import encode_address
    from fognode.ledger.genesis import Genesis
    from tests.ledger.helpers import Node, genesis_dict, validator_keys

    gd = genesis_dict(funded=funded)
    gd["ledger"]["balances"][encode_address(bytes(FUNDER.verify_key))] = 10 * BUDGET
    g = Genesis.from_node_genesis(gd)
    nodes = [Node(v, g) for v in validator_keys()]
    opened = _pool_open()
    for n in nodes:
        n.validator.receipts.register(V)
        n.replica.receive("t", opened)
    return nodes


def _pool_open() -> Any:
    """The certificate that opens the default announcement's pool (deterministic)."""
    from fognode.ledger.messages import SignedOrder
    from fognode.ledger.rewardpool_orders import PoolOpenOrder
    from tests.ledger.helpers import CHAIN, NOW, certify, validator_keys

    so = SignedOrder.sign(FUNDER, PoolOpenOrder(chain=CHAIN, epoch=0, sender=bytes(FUNDER.verify_key), sequence=0,
                                                fee=1000, session=announcement().session_id,
                                                receipt_kind="fl_update", amount=BUDGET, deadline=int(NOW) + 1000,
                                                grace=600))
    return certify(so, validator_keys()[:3])


def _mint(sender: int, seq: int, r: Receipt) -> Any:
    """A payout of the receipt's worth from the default announcement's pool ("fl_update"
    receipts are never minted: the session's funder paid for them in advance)."""
    from fognode.ledger.messages import SignedOrder
    from fognode.ledger.rewardpool_orders import PoolPayOrder, pool_id
    from fognode.protocols.fl.rewards.receipts import reward_of
    from tests.ledger.helpers import CHAIN, key, pk

    u = key(sender)
    pool = pool_id(CHAIN, bytes(FUNDER.verify_key), announcement().session_id)
    return SignedOrder.sign(u, PoolPayOrder(chain=CHAIN, epoch=0, sender=pk(u), sequence=seq, fee=1000,
                                            pool=pool, amount=reward_of(r), receipt=r))


def test_validators_pay_a_valid_receipt_and_refuse_forged_ones() -> None:
    from fognode.ledger.errors import Reason
    from fognode.ledger.messages import Certificate, Vote

    nodes = _ledger_nodes()
    ann = announcement()
    plan = plan_for(ann)
    k, receipts = issued(ann, plan)
    r = receipts[0]
    so = _mint(0, 0, r)
    votes = [n.ask(so) for n in nodes]
    assert all(isinstance(v, Vote) for v in votes)
    cert = Certificate.from_votes(so, votes[:3])
    for n in nodes:
        n.replica.receive("client", cert)
    assert nodes[0].state.account(r.beneficiary).balance == V.max_reward(r, None) > 0
    # a receipt from a participant outside the aggregator order: refused with the reason
    assert plan.header is not None
    outsider = key_of(next(p for p in plan.peers if p not in plan.header.order))
    forged = Receipt.issue(outsider, r.kind, receipts[1].beneficiary, 0, receipts[1].body)
    rej = nodes[0].ask(_mint(1, 0, forged))
    assert not isinstance(rej, Vote) and rej.rejection.reason == Reason.BAD_EVIDENCE
    assert "aggregator order" in rej.rejection.message
    # a payout above the receipt's worth
    import dataclasses as dc

    from fognode.ledger.messages import SignedOrder
    from tests.ledger.helpers import key

    greedy = SignedOrder.sign(key(1), dc.replace(_mint(1, 0, receipts[1]).order, amount=round_reward_of(ann.spec)))
    rej = nodes[0].ask(greedy)
    assert not isinstance(rej, Vote) and "exceeds the receipt's worth" in rej.rejection.message


def test_two_fallback_aggregators_receipts_pay_once() -> None:
    """The elected aggregator was only slow: it and its first fallback both completed round 1
    and issued receipts for the same participant. Validators sign one mint for the claim; a
    replica given certificates of both (a faulty quorum) applies one."""
    from fognode.ledger.actions import CertificateRefused
    from fognode.ledger.errors import Reason
    from fognode.ledger.messages import Vote
    from fognode.ledger.replica import MemoryHistory, Replica
    from fognode.ledger.state import LedgerState
    from tests.ledger.helpers import certify, validator_keys

    ann = announcement()
    plan = plan_for(ann)
    _, first = issued(ann, plan, slot=0)
    _, second = issued(ann, plan, slot=1)
    assert plan.header is not None
    both = set(plan.peers) - set(plan.header.order[:2])
    ben = plan.wallet_of(sorted(both)[0])
    a = next(r for r in first if r.beneficiary == ben)
    b = next(r for r in second if r.beneficiary == ben)
    assert a.claim_id == b.claim_id and a.receipt_id != b.receipt_id
    assert V.max_reward(a, None) > 0 and V.max_reward(b, None) > 0
    nodes = _ledger_nodes()
    so_a, so_b = _mint(0, 0, a), _mint(1, 0, b)
    for n in nodes:
        assert isinstance(n.ask(so_a), Vote)
        rej = n.ask(so_b)
        assert not isinstance(rej, Vote) and rej.rejection.reason == Reason.RECEIPT_USED
    vals = validator_keys()
    ca, cb = certify(so_a, vals[:3]), certify(so_b, vals[1:])
    roots = []
    for order in ([ca, cb], [cb, ca]):
        r = Replica(LedgerState(nodes[0].genesis), MemoryHistory())
        r.receive("t", _pool_open())
        acts = [x for c in order for x in r.receive("t", c)]
        assert [x.tx_id for x in acts if isinstance(x, CertificateRefused)] == [order[1].tx_id]
        assert r.state.account(ben).balance == order[0].order.order.amount
        assert [p.paid for p in r.state.pools.values()] == [order[0].order.order.amount]
        assert r.state.supply.minted == 0
        roots.append(r.state.root())
    # the same certificate set delivered in the same order twice gives the same root
    r = Replica(LedgerState(nodes[0].genesis), MemoryHistory())
    for c in [_pool_open(), ca, ca, cb, ca]:
        r.receive("t", c)
    assert r.state.root() == roots[0]


def test_only_the_adopted_aggregator_of_a_round_mints() -> None:
    """Each completed round yields exactly one PayRewards, from the aggregator whose model the
    coordinator built on (paid when the next plan, or the session's end, shows it). A result
    the coordinator did not adopt (a slow aggregator's, here planted before round 1) is never
    paid, so two aggregators of one round do not race for the same claims at the ledger."""
    from fognode.protocols.fl.actions import PayRewards
    from tests.fl.harness import Sim

    sim = Sim(4)
    spec = SessionSpec(task="synthetic", rounds=3, min_participants=3, participants=4, deadline=10.0,
                       optin_seconds=1.0, task_params={"max_samples": 100}, reward_budget=3_000_000)
    sid = sim.start(spec)
    sim.step(0.25)
    slow = sim.nodes[1]
    s = slow.core.sessions[sid]
    plan = dataclasses.replace(plan_for(announcement()), session_id=sid)
    bogus = RoundReceipt(sid, 1, 0, slow.peer, bytes(slow.key.verify_key), b"b" * 32, b"z" * 32,
                         (AcceptedUpdate(sim.nodes[2].peer, 1.0, 10),), 1_000_000, 1.0).signed(slow.key)
    s.rewards_due.append(PayRewards(bogus, s.ann, plan))
    sim.run_until(lambda: sim.ended(sid), 600)
    st = sim.status(sid)
    assert st["state"] == "completed", st
    paid = [(nd.peer, p.receipt) for nd in sim.nodes for p in nd.payments]
    assert sorted(r.round for _, r in paid) == [1, 2, 3]
    for peer, r in paid:
        h = st["history"][r.round - 1]
        assert peer == h["aggregator"] == r.aggregator and r.model_hash.hex() == h["model_hash"]
        assert r.round_reward == 1_000_000
    assert all(p.receipt.model_hash != b"z" * 32 for p in slow.payments)
    assert all(not nd.core.sessions[sid].rewards_due for nd in sim.nodes)


def test_the_last_round_is_paid_when_the_first_session_end_is_lost() -> None:
    """The last round's aggregator mints once it learns the coordinator adopted its model,
    which for the last round is the SessionEnded message. The coordinator republishes it, so
    losing the first copy (for every node) costs nothing."""
    from tests.fl.harness import Sim

    sim = Sim(4)
    sim.lose_ends = 1
    spec = SessionSpec(task="synthetic", rounds=2, min_participants=3, participants=4, deadline=10.0,
                       optin_seconds=1.0, task_params={"max_samples": 100}, reward_budget=2_000_000)
    sid = sim.start(spec)
    sim.run_until(lambda: sim.ended(sid), 600)
    assert sim.lose_ends == 0                   # the first end was published, and lost
    last = sim.status(sid)["history"][-1]
    # within one republish interval (2 s), well before a fallback coordinator would take
    # over from the silent coordinator (deadline + 2 republish intervals) and end it again
    sim.run_until(lambda: all(sim.ended(sid, k) for k in range(4)), 4)
    paid = [(nd.peer, p.receipt) for nd in sim.nodes for p in nd.payments]
    assert sorted(r.round for _, r in paid) == [1, 2]
    assert [peer for peer, r in paid if r.round == 2] == [last["aggregator"]]


def test_two_participants_sharing_one_wallet_are_both_paid() -> None:
    from fognode.ledger.messages import Vote

    ann = announcement()
    plan = plan_for(ann)
    shared = tuple(wallet(0) for _ in plan.peers)
    plan = dataclasses.replace(plan, wallets=shared, header=None).with_header(STARTER, ann.starter, 1 + FALLBACKS)
    _, receipts = issued(ann, plan)
    assert len(receipts) == len(plan.peers) - 1 and {r.beneficiary for r in receipts} == {wallet(0)}
    assert len({r.claim_id for r in receipts}) == len(receipts)
    n = _ledger_nodes(funded=len(receipts))[0]
    assert all(isinstance(n.ask(_mint(i, 0, r)), Vote) for i, r in enumerate(receipts))
