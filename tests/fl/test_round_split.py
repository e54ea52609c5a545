"""What one FL round can pay (from the session's funded pool; nothing is minted): the Merkle-sum split in every "fl_update" receipt, its bound
(10^6 ppm in all), and one split per round at the validators (also after a LevelDB reload),
with the forgeries of a Byzantine aggregator refused."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from fognode.ledger.errors import Reason
from fognode.ledger.messages import Certificate, Vote
from fognode.ledger.receipts import EvidenceError, Receipt
from fognode.ledger.store import LedgerStore
from fognode.ledger.validator import Validator
from fognode.node.wire import pack
from fognode.protocols.fl.messages import RoundPlan, SessionAnnouncement
from fognode.protocols.fl.rewards.merkle import (
    MAX_SUM, merkle_proof, sum_commit, sum_leaf, sum_proof, sum_root, sum_verify)
from fognode.protocols.fl.rewards.receipts import (
    LEDGER_KIND, PPM, AcceptedUpdate, RoundReceipt, issue_ledger_receipts, reward_of, round_reward_of,
    split_of, split_scope_of, weights_ppm)
from fognode.protocols.fl.rewards.round_header import claim_of

from .test_evidence import (
    FALLBACKS, STARTER, V, _ledger_nodes, _mint, announcement, issued, key_of, plan_for, reissue)


def receipt_with(ann: SessionAnnouncement, plan: RoundPlan, aggregator: str,
                 weights: dict[str, float]) -> RoundReceipt:
    k = key_of(aggregator)
    acc = tuple(AcceptedUpdate(p, w, 10) for p, w in weights.items())
    return RoundReceipt(ann.session_id, plan.round, plan.try_no, aggregator, bytes(k.verify_key),
                        plan.base_model_hash, b"n" * 32, acc, round_reward_of(ann.spec), 5.0).signed(k)


def forged_split(k: SigningKey, ann: SessionAnnouncement, plan: RoundPlan, ppm: dict[str, int],
                 template: Receipt) -> list[Receipt]:
    """What a Byzantine aggregator can sign: receipts for every non-aggregator participant of
    `ppm`, with a sum tree it built over those weights (well formed, whatever the weights)."""
    split = split_of(plan, ppm)
    commit = sum_commit(sum_root(split))
    out = []
    for i, p in enumerate(plan.peers):
        if p not in ppm or key_of(p) == k:
            continue
        out.append(Receipt.issue(k, LEDGER_KIND, plan.wallet_of(p), 0, {
            **template.body, "claim": claim_of(ann.session_id, plan.round, p), "peer": p, "index": i,
            "proof": merkle_proof(plan.leaves(), i),
            "weight_ppm": ppm[p], "commit": commit, "split": [[h, w] for h, w in sum_proof(split, i)]}))
    return out


def _paid(node: Any) -> int:
    """What the reward pools of `node`'s replica paid out."""
    return sum(p.paid for p in node.state.pools.values())


def certify_all(nodes: list[Any], so: Any) -> Certificate | None:
    votes = [v for v in (n.ask(so) for n in nodes) if isinstance(v, Vote)]
    if len(votes) < 3:
        return None
    cert = Certificate.from_votes(so, votes[:3])
    for n in nodes:
        n.replica.receive("client", cert)
    return cert


# -- the sum tree ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 256])
def test_sum_proofs_rebuild_the_root_and_its_total(n: int) -> None:
    leaves = [sum_leaf(f"p{i}", bytes([i % 256]) * 32, 1000 + i) for i in range(n)]
    root = sum_root(leaves)
    assert root[1] == sum(1000 + i for i in range(n))
    for i in range(n):
        path = sum_proof(leaves, i)
        assert len(path) <= 8
        assert sum_verify(leaves[i], i, n, path, MAX_SUM) == root
        # a sibling's sum lowered (to make room for a bigger leaf) is another root
        if path:
            lied = [(path[0][0], 0)] + path[1:]
            assert sum_verify(leaves[i], i, n, lied, MAX_SUM) != root
        heavier = sum_leaf(f"p{i}", bytes([i % 256]) * 32, 10**6)
        assert sum_verify(heavier, i, n, path, MAX_SUM) != root
        assert sum_verify(leaves[i], i, n, path, root[1] - 1) is None       # over the bound
        assert sum_verify(leaves[i], i, n, path + [root], MAX_SUM) is None
        if n > 1:
            assert sum_verify(leaves[i], (i + 1) % n, n, path, MAX_SUM) != root
    assert sum_commit(root) != sum_commit((root[0], root[1] - 1))
    assert sum_root([]) == sum_root([]) and sum_root([])[1] == 0


def test_weights_are_floored_to_ppm_and_total_at_most_a_million() -> None:
    ann = announcement()
    plan = plan_for(ann, n=3)
    agg = plan.peers[0]
    third = receipt_with(ann, plan, agg, {p: 1 / 3 for p in plan.peers})
    assert weights_ppm(third) == {p: 333_333 for p in plan.peers}
    # weights a float error over 1 (still within the round receipt's tolerance): trimmed
    over = receipt_with(ann, plan, agg, {plan.peers[0]: 0.5000004, plan.peers[1]: 0.5000004,
                                         plan.peers[2]: 0.0})
    w = weights_ppm(over)
    assert sum(w.values()) == PPM and sorted(w.values()) == [0, 500_000, 500_000]


# -- what the verifier and the validators accept ---------------------------------------------------

def test_a_valid_round_pays_its_participants_and_at_most_the_round_reward() -> None:
    ann = announcement()
    plan = plan_for(ann)
    _, receipts = issued(ann, plan)
    assert {r.body["scope"] for r in receipts} == {split_scope_of(ann.session_id, 1)}
    assert len({r.body["commit"] for r in receipts}) == 1
    assert all(len(r.body["split"]) <= 3 for r in receipts)
    nodes = _ledger_nodes(funded=len(receipts))
    for i, r in enumerate(receipts):
        assert certify_all(nodes, _mint(i, 0, r)) is not None
    paid = _paid(nodes[0])
    assert paid == sum(V.max_reward(r, None) for r in receipts) <= round_reward_of(ann.spec)
    assert nodes[0].state.supply.minted == 0
    assert all(nodes[0].state.account(r.beneficiary).balance == reward_of(r) > 0 for r in receipts)
    # the fallback aggregator of the same round, with the same accepted updates, makes the
    # same split: its receipts are the same claims under the same commit
    _, fb = issued(ann, plan, slot=1)
    assert {r.body["commit"] for r in fb} == {receipts[0].body["commit"]}


def test_receipts_of_a_256_participant_round_stay_compact() -> None:
    ann = announcement()
    plan = plan_for(ann, n=256)
    _, receipts = issued(ann, plan)
    assert max(len(r.body["split"]) for r in receipts) == 8
    assert max(len(pack(r.to_wire())) for r in receipts) < 3000
    assert sum(V.max_reward(r, None) for r in receipts) <= round_reward_of(ann.spec)


def test_inflated_weights_are_refused() -> None:
    ann = announcement()
    plan = plan_for(ann)
    k, receipts = issued(ann, plan)
    r = receipts[0]
    assert plan.header is not None
    agg = plan.header.order[0]

    def refused(receipt: Receipt, match: str) -> None:
        with pytest.raises(EvidenceError, match=match):
            V.max_reward(receipt, None)

    # the honest split's commit, a bigger weight: the proof does not lead there
    refused(reissue(k, r, weight_ppm=PPM), "does not lead to the receipt's commit")
    # a sibling sum lowered to make room: another root, not the commit
    split = [[h, 0] for h, _ in r.body["split"]]
    refused(reissue(k, r, split=split), "does not lead to the receipt's commit")
    # a well-formed tree that gives everyone 10^6: over the bound
    greedy = forged_split(k, ann, plan, {p: PPM for p in plan.peers}, r)
    assert len(greedy) == len(plan.peers) - 1
    for g in greedy:
        refused(g, "over 1000000")
    # wrong scope (another round, another session), missing fields, malformed proof
    refused(reissue(k, r, scope=split_scope_of(ann.session_id, 2)), "scope is not round 1")
    refused(reissue(k, r, scope=split_scope_of(b"x" * 32, 1)), "scope is not round 1")
    for name in ("scope", "commit", "split"):
        body = {key: v for key, v in r.body.items() if key != name}
        refused(Receipt.issue(k, r.kind, r.beneficiary, r.epoch, body), f"'{name}'")
    refused(reissue(k, r, split=[[b"x" * 32, -1]]), r"\[32-byte hash, sum >= 0\]")
    refused(reissue(k, r, split=r.body["split"] + [[b"x" * 32, 0]]), "does not lead")
    assert agg not in {g.body["peer"] for g in greedy}


def test_one_split_per_receipt_pays_once_per_round() -> None:
    """The Byzantine aggregator's other way round the bound: a separate one-leaf-heavy tree per
    receipt, each within 10^6 on its own. The validators sign the first split of the round and
    refuse the others, naming the commit; the round mints at most round_reward."""
    ann = announcement()
    plan = plan_for(ann)
    k, receipts = issued(ann, plan)
    assert plan.header is not None
    agg = plan.header.order[0]
    payees = [p for p in plan.peers if p != agg]
    forged = [forged_split(k, ann, plan, {p: PPM}, receipts[0])[0] for p in payees]
    assert all(V.max_reward(f, None) == round_reward_of(ann.spec) for f in forged)
    assert len({f.body["commit"] for f in forged}) == len(forged)
    nodes = _ledger_nodes(funded=len(forged))
    assert certify_all(nodes, _mint(0, 0, forged[0])) is not None
    for i, f in enumerate(forged[1:], start=1):
        for n in nodes:
            rej = n.ask(_mint(i, 0, f))
            assert not isinstance(rej, Vote) and rej.rejection.reason is Reason.BAD_EVIDENCE
            assert "another split" in rej.rejection.message
            assert f.body["commit"].hex()[:16] in rej.rejection.message
    assert _paid(nodes[0]) == round_reward_of(ann.spec)


def test_a_second_split_of_the_round_is_refused_also_after_a_reload(tmp_path: Path) -> None:
    """Round 1 was paid under the split of try 0; try 1 of the same round (another plan seed,
    another accepted set, so another split) is refused by validators that signed the first,
    also once they restart from LevelDB; the first split's other receipts still pay."""
    ann = announcement()
    plan = plan_for(ann)
    _, first = issued(ann, plan)
    retry = dataclasses.replace(plan, try_no=1, seed=b"\x09" * 32, header=None).with_header(
        STARTER, plan.header.signer if plan.header else "", 1 + FALLBACKS)
    assert retry.header is not None
    agg1 = retry.header.order[0]
    weights = {p: 0.5 if p == agg1 else 0.5 / (len(retry.peers) - 1) for p in retry.peers}
    second = issue_ledger_receipts(key_of(agg1), receipt_with(ann, retry, agg1, weights), ann, retry, 0)
    assert second and {r.body["scope"] for r in second} == {first[0].body["scope"]}
    assert {r.body["commit"] for r in second}.isdisjoint({r.body["commit"] for r in first})
    assert all(V.max_reward(r, None) > 0 for r in second)       # each is valid evidence on its own
    nodes = _ledger_nodes(funded=len(first) + len(second))
    assert certify_all(nodes, _mint(0, 0, first[0])) is not None
    paid = {first[0].body["peer"]}
    other = next(r for r in second if r.body["peer"] not in paid)
    for n in nodes:
        rej = n.ask(_mint(1, 0, other))
        assert not isinstance(rej, Vote) and rej.rejection.reason is Reason.BAD_EVIDENCE
        assert "another split" in rej.rejection.message
    # a restart from LevelDB: the scope lock is rebuilt from the persisted vote
    g = nodes[0].genesis
    store = LedgerStore(tmp_path / "db", g)
    try:
        for so in nodes[0].persisted:
            store.persist_lock(so)
        store.close()
        store = LedgerStore(tmp_path / "db", g)
        v = Validator(g, nodes[0].key, nodes[0].state, store.load_locks(), nodes[0].validator.receipts)
        acts = v.receive("client", _mint(1, 0, other), 1_800_000_010.0)
        assert [a.rejection.reason for a in acts if hasattr(a, "rejection")] == [Reason.BAD_EVIDENCE]
        nodes[0].validator = v
    finally:
        store.close()
    # the first split's other participants are still paid, in full
    for i, r in enumerate(first[1:], start=2):
        assert certify_all(nodes, _mint(i, 0, r)) is not None
    assert _paid(nodes[1]) == sum(reward_of(r) for r in first) <= round_reward_of(ann.spec)
