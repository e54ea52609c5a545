"""Round receipts: the aggregator's signed statement of what a round accepted, and the
ledger evidence that pays participants for it.

`RoundReceipt` (one per completed round, inside the gossiped `RoundResult`) names the session,
round and try, the aggregator and its key, the base and new model hashes, every accepted
participant with its weight (the strategy's contribution weight, summing to 1) and sample
count, and the round's reward (`round_reward_of`: the session's reward budget // rounds).
Rejected or dropped participants are not in it: they earn nothing.

For the ledger (ledger/receipts.py), the aggregator also issues one `Receipt` of kind
"fl_update" per accepted participant, signed with its identity key, paying that participant's
reward wallet (the wallet it opted in with, else its identity key). The body is an evidence
chain anchored in the starter's signed announcement::

    {"ann": <SessionAnnouncement wire, signed by the starter; its id is the session id>,
     "header": <RoundHeader wire of the round's try, signed by a coordinator of the session>,
     "claim": claim_of(session id, round, peer), "model": <new model hash>,
     "weight_ppm": 1..10^6, "round_reward": budget // rounds,
     "peer": <participant peer id>, "index": <its position in the plan>,
     "proof": [<Merkle path of (peer, wallet) to the header's participants root>],
     "scope": split_scope_of(session id, round),
     "commit": <sum_commit of the round's split>,
     "split": [[<sibling hash>, <sibling sum>], ...]}

The round's *split* is a Merkle-sum tree (merkle.py) over the plan's participants in plan
order, leaf i = (peer, wallet, weight_ppm) with weight_ppm = floor(weight x 10^6) for accepted
participants (the aggregator's own included, though it is not paid) and 0 for the others, so
its total is at most 10^6 (`split_of`). It has the plan's shape, so "index" and the header's
participant count place the leaf in both trees; "split" is the leaf's sum-proof (log2 n
siblings). A receipt is at most about 2.2 kB whatever the plan's size (the plan itself is
not carried).

`FlUpdateVerifier` checks the announcement's signature, the header's signature by one of
`coordinators_of(ann)` and that it is for this session, the claim, round <= rounds,
round_reward == budget // rounds, that the issuer is in the header's aggregator order (the
elected aggregator or a fallback), that the beneficiary is the planned wallet of `peer`
(Merkle proof) and that nobody attests their own update, that scope is this (session, round)
and that the sum-proof of (peer, beneficiary, weight_ppm) at `index` leads to `commit` with a
total of at most 10^6; it prices the receipt at round_reward * weight_ppm / 10^6
(EvidenceError naming what is wrong otherwise). The claim makes the ledger pay each (session,
round, participant) once even when two aggregators of the order both completed the round (two
participants paid to one wallet are two claims). The scope makes validators sign one split per
round (ledger/receipts.py "Scopes"), whatever its try, so the receipts of a round pay at most
round_reward in all: distinct leaves of one sum tree add up to at most its total. To keep two
aggregators of the order from splitting the validators' votes (each validator locks the claim,
and the scope's commit, for the first mint it sees; a split leaves mints short of a quorum and
their senders' sequences stuck), an aggregator mints only once the coordinator adopted its
model (fl/session/ending.py adopted_rewards).

Funding. "fl_update" is a pooled kind (ledger/receipts.py "Pooled kinds"): `pool_of` names the
announcement's `funder` and the session id, so a receipt is paid only from the reward pool the
starter's wallet funded for that session (ledger/rewardpool.py), never minted; a session with
no funder pays nothing. The budget is therefore real money the starter locked before anyone
trained, and a starter paying its own Sybils only moves its own funds.

What the evidence does not prove: that the weights are the strategy's. An elected aggregator
is trusted with how it splits its round among the accepted participants (as it is trusted
with the aggregate), not with how much the round mints: whatever it signs, one round pays at
most round_reward (rounded down per receipt), once. Across a committee change the bound rests
on validators that kept their locks (ledger/receipts.py "Scopes" says when a scope's later
receipts are bounded only by their claims).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.peerid import peer_id_matches
from fognode.node.wire import DIGEST_LEN, PUBKEY_LEN, SIG_LEN, Fields, digest, pack, sign, verify
from fognode.protocols.fl.messages_session import RoundPlan, SessionAnnouncement, coordinators_of
from fognode.protocols.fl.messages_spec import SessionSpec
from fognode.protocols.fl.rewards.merkle import (MAX_DEPTH, MAX_SUM, SumNode, leaf_hash, merkle_proof, merkle_verify,
                                         sum_commit, sum_leaf, sum_proof, sum_root, sum_verify)
from fognode.protocols.fl.rewards.round_header import MAX_PARTICIPANTS, RoundHeader, claim_of

if TYPE_CHECKING:  # pragma: no cover
    from fognode.ledger.receipts import Receipt, VerifyContext

RECEIPT_VERSION = 1
LEDGER_KIND = "fl_update"
MAX_ACCEPTED = 256
PPM = 1_000_000


@dataclass(frozen=True)
class AcceptedUpdate:
    peer: str
    weight: float
    num_samples: int


@dataclass(frozen=True)
class RoundReceipt:
    session_id: bytes
    round: int
    try_no: int
    aggregator: str
    aggregator_key: bytes
    base_model_hash: bytes
    model_hash: bytes
    accepted: tuple[AcceptedUpdate, ...]
    round_reward: int
    time: float
    sig: bytes = field(default=b"", repr=False)

    def body(self) -> dict[str, Any]:
        return {"v": RECEIPT_VERSION, "session": self.session_id, "round": self.round,
                "try": self.try_no, "aggregator": self.aggregator, "key": self.aggregator_key,
                "base": self.base_model_hash, "model": self.model_hash,
                "accepted": [[a.peer, a.weight, a.num_samples] for a in self.accepted],
                "reward": self.round_reward, "time": self.time}

    @property
    def receipt_id(self) -> bytes:
        return digest(pack(self.body()))

    def to_wire(self) -> dict[str, Any]:
        return {**self.body(), "sig": self.sig}

    def signed(self, key: SigningKey) -> "RoundReceipt":
        return RoundReceipt(self.session_id, self.round, self.try_no, self.aggregator,
                            self.aggregator_key, self.base_model_hash, self.model_hash,
                            self.accepted, self.round_reward, self.time, sign(key, self.body()))

    def weight_of(self, peer: str) -> float:
        for a in self.accepted:
            if a.peer == peer:
                return a.weight
        return 0.0


def decode_round_receipt(raw: Any, *, peer: str | None = None) -> RoundReceipt:
    """Decode and verify (signature, key <-> aggregator peer id, weights) a round receipt."""
    f = Fields(raw, "fl.RoundReceipt", versions={RECEIPT_VERSION}, peer=peer)
    session, rnd, try_no = f.bytes("session", size=DIGEST_LEN), f.int("round", lo=1, hi=100_000), f.int("try", lo=0, hi=1000)
    aggregator, key = f.str("aggregator", max_len=128), f.bytes("key", size=PUBKEY_LEN)
    base, model = f.bytes("base", size=DIGEST_LEN), f.bytes("model", size=DIGEST_LEN)
    items = f.list("accepted", max_len=MAX_ACCEPTED)
    reward, when, sig = f.int("reward", lo=0, hi=2**63 - 1), f.float("time", lo=0.0), f.bytes("sig", size=SIG_LEN)
    f.done()
    accepted: list[AcceptedUpdate] = []
    for it in items:
        if (not isinstance(it, list) or len(it) != 3 or not isinstance(it[0], str) or not it[0]
                or isinstance(it[1], bool) or not isinstance(it[1], (int, float))
                or not (0.0 <= float(it[1]) <= 1.0) or isinstance(it[2], bool)
                or not isinstance(it[2], int) or it[2] < 1):
            raise RemoteProtocolError("fl.RoundReceipt: accepted must be [peer, weight in [0,1], samples >= 1]", peer=peer)
        accepted.append(AcceptedUpdate(it[0], float(it[1]), it[2]))
    if len({a.peer for a in accepted}) != len(accepted):
        raise RemoteProtocolError("fl.RoundReceipt: a peer is listed twice", peer=peer)
    if accepted and not math.isclose(sum(a.weight for a in accepted), 1.0, abs_tol=1e-6):
        raise RemoteProtocolError("fl.RoundReceipt: weights do not sum to 1", peer=peer)
    r = RoundReceipt(session, rnd, try_no, aggregator, key, base, model, tuple(accepted), reward, when, sig)
    if not peer_id_matches(aggregator, key):
        raise RemoteProtocolError("fl.RoundReceipt: key does not match the aggregator's peer id", peer=peer)
    if not verify(key, r.body(), sig):
        raise RemoteProtocolError("fl.RoundReceipt: bad signature", peer=peer)
    return r


def round_reward_of(spec: "SessionSpec") -> int:
    """The reward of one round: the session's reward budget split evenly over its rounds,
    rounded down (budget // rounds); what a round receipt must state."""
    return spec.reward_budget // spec.rounds


def split_scope_of(session_id: bytes, round_no: int) -> bytes:
    """The ledger scope of one round's split (any try): validators sign one split per scope."""
    return digest(b"fognode-fl-split/1" + session_id + round_no.to_bytes(8, "big"))


def weights_ppm(receipt: RoundReceipt) -> dict[str, int]:
    """Each accepted participant's weight_ppm = floor(weight x 10^6); if float error still
    makes the total exceed 10^6, the largest shares give up the excess (deterministically), so
    the total is at most 10^6."""
    ppm = {a.peer: max(0, math.floor(a.weight * PPM)) for a in receipt.accepted}
    excess = sum(ppm.values()) - PPM
    for peer in sorted(ppm, key=lambda p: (-ppm[p], p)):
        if excess <= 0:
            break
        cut = min(excess, ppm[peer])
        ppm[peer] -= cut
        excess -= cut
    return ppm


def split_of(plan: "RoundPlan", ppm: dict[str, int]) -> list[SumNode]:
    """The Merkle-sum leaves of a round's split: (peer, reward wallet, weight_ppm) in plan
    order, 0 for a planned peer that was not accepted."""
    return [sum_leaf(p, plan.wallet_of(p), ppm.get(p, 0)) for p in plan.peers]


def issue_ledger_receipts(key: SigningKey, receipt: RoundReceipt, ann: "SessionAnnouncement",
                          plan: "RoundPlan", epoch: int) -> list["Receipt"]:
    """One ledger `Receipt` of kind "fl_update" per accepted participant of `plan` (not the
    aggregator itself, none without a reward or without the plan's signed header), paying its
    reward wallet, with the evidence chain of the module docstring. Imports the ledger lazily."""
    from fognode.ledger.receipts import Receipt

    header = plan.header
    if receipt.round_reward <= 0 or header is None or receipt.session_id != ann.session_id \
            or (receipt.round, receipt.try_no) != (plan.round, plan.try_no):
        return []
    peers = plan.peers
    leaves = plan.leaves()
    weights = weights_ppm(receipt)
    split = split_of(plan, weights)
    common = {"ann": ann.to_wire(), "header": header.to_wire(), "model": receipt.model_hash,
              "round_reward": receipt.round_reward,
              "scope": split_scope_of(ann.session_id, receipt.round),
              "commit": sum_commit(sum_root(split))}
    out = []
    for a in receipt.accepted:
        if a.peer == receipt.aggregator or a.peer not in peers:
            continue  # nobody attests their own update (FlUpdateVerifier refuses it)
        ppm = weights[a.peer]
        wallet = plan.wallet_of(a.peer)
        if ppm <= 0 or not wallet:
            continue
        i = peers.index(a.peer)
        body = {**common, "claim": claim_of(ann.session_id, receipt.round, a.peer),
                "weight_ppm": ppm, "peer": a.peer, "index": i, "proof": merkle_proof(leaves, i),
                "split": [[h, w] for h, w in sum_proof(split, i)]}
        out.append(Receipt.issue(key, LEDGER_KIND, wallet, epoch, body))
    return out


def reward_of(receipt: "Receipt") -> int:
    """What an "fl_update" receipt pays: round_reward * weight_ppm / 10^6 (0 if malformed)."""
    body = receipt.body
    ppm, reward = body.get("weight_ppm"), body.get("round_reward")
    if not isinstance(ppm, int) or not isinstance(reward, int) or ppm <= 0 or reward <= 0:
        return 0
    return reward * min(ppm, PPM) // PPM


class FlUpdateVerifier:
    """Ledger verifier of "fl_update" receipts (the module docstring lists what it checks).

    Register it with the ledger service (`register_receipt_verifier`). `max_reward` returns
    round_reward * weight_ppm / 10^6 and raises EvidenceError naming the first thing wrong:
    a malformed body, a tampered announcement, a header not signed by a coordinator of the
    session or for another session, a claim that is not (session, round, peer), a round past the
    session's rounds, a round reward other than budget // rounds, an issuer outside the
    round's aggregator order, a beneficiary that is not the planned participant's wallet, a
    self-attested update (the aggregator's own update is not paid), a scope other than the
    (session, round)'s, or a split proof that does not lead from (peer, wallet, weight_ppm)
    to the commit or whose total is over 10^6."""

    kind = LEDGER_KIND

    def max_reward(self, receipt: "Receipt", ctx: "VerifyContext") -> int:
        from fognode.ledger.receipts import EvidenceError

        try:
            f = Fields(receipt.body, "fl.UpdateReceipt")
            ann = SessionAnnouncement.decode(f.map("ann", max_len=16))
            header = RoundHeader.decode(f.map("header", max_len=16))
            claim = f.bytes("claim", size=DIGEST_LEN)
            f.bytes("model", size=DIGEST_LEN)
            ppm = f.int("weight_ppm", lo=1, hi=PPM)
            reward = f.int("round_reward", lo=1, hi=2**63 - 1)
            peer = f.str("peer", max_len=128)
            index = f.int("index", lo=0, hi=MAX_PARTICIPANTS - 1)
            proof = f.list("proof", max_len=MAX_DEPTH)
            scope = f.bytes("scope", size=DIGEST_LEN)
            commit = f.bytes("commit", size=DIGEST_LEN)
            split_raw = f.list("split", max_len=MAX_DEPTH)
            f.done()
        except RemoteProtocolError as e:
            raise EvidenceError(f"fl_update evidence: {e}") from None
        if not all(isinstance(p, bytes) and len(p) == DIGEST_LEN for p in proof):
            raise EvidenceError("fl_update evidence: the Merkle proof must be 32-byte hashes")
        split: list[SumNode] = []
        for s in split_raw:
            if (not isinstance(s, list) or len(s) != 2 or not isinstance(s[0], bytes)
                    or len(s[0]) != DIGEST_LEN or isinstance(s[1], bool) or not isinstance(s[1], int)
                    or not 0 <= s[1] <= MAX_SUM):
                raise EvidenceError("fl_update evidence: the split proof must be [32-byte hash, "
                                    "sum >= 0] pairs")
            split.append((s[0], s[1]))
        sid = ann.session_id
        if header.session_id != sid:
            raise EvidenceError(f"the round header is for session {header.session_id.hex()[:16]}, "
                                f"the announcement is session {sid.hex()[:16]}")
        if header.signer not in coordinators_of(ann):
            raise EvidenceError(f"the round header is signed by {header.signer}, not a coordinator "
                                f"of session {sid.hex()[:16]}")
        if claim != claim_of(sid, header.round, peer):
            raise EvidenceError(f"the receipt's claim is not {peer}'s update in round {header.round} "
                                f"of session {sid.hex()[:16]}")
        spec = ann.spec
        if header.round > spec.rounds:
            raise EvidenceError(f"round {header.round} is past the session's {spec.rounds} rounds")
        expected = round_reward_of(spec)
        if reward != expected:
            raise EvidenceError(f"round_reward {reward} is not the session's budget per round "
                                f"({spec.reward_budget} // {spec.rounds} = {expected})")
        if not any(peer_id_matches(p, receipt.issuer) for p in header.order):
            raise EvidenceError(f"the receipt's issuer is not in round {header.round}'s aggregator "
                                f"order (the elected aggregator and its fallbacks)")
        if peer_id_matches(peer, receipt.issuer) or receipt.beneficiary == receipt.issuer:
            raise EvidenceError("an aggregator cannot attest its own FL update")
        if not merkle_verify(leaf_hash(peer, receipt.beneficiary), index, header.participants,
                             proof, header.participants_root):
            raise EvidenceError(f"the beneficiary is not the reward wallet of planned participant "
                                f"{peer} in round {header.round} (Merkle proof does not match the header)")
        if scope != split_scope_of(sid, header.round):
            raise EvidenceError(f"the receipt's scope is not round {header.round} of session "
                                f"{sid.hex()[:16]}")
        root = sum_verify(sum_leaf(peer, receipt.beneficiary, ppm), index, header.participants,
                          split, MAX_SUM)
        if root is None or sum_commit(root) != commit:
            raise EvidenceError(f"the split proof of {peer}'s weight_ppm {ppm} does not lead to the "
                                f"receipt's commit (round {header.round})")
        if root[1] > PPM:
            raise EvidenceError(f"round {header.round}'s split gives {root[1]} ppm in all, over {PPM}")
        return reward * ppm // PPM


    def pool_of(self, receipt: "Receipt") -> tuple[bytes, bytes, int]:
        """(funder, session id, reward budget) of the reward pool that pays `receipt` (the
        announcement in its body names the funder); EvidenceError if the session was not
        funded. The budget bounds the session's receipts together: each round pays at most
        budget // rounds (one split per round, each claim once)."""
        from fognode.ledger.receipts import EvidenceError

        try:
            ann = SessionAnnouncement.decode(Fields(receipt.body, "fl.UpdateReceipt").map("ann", max_len=16))
        except RemoteProtocolError as e:
            raise EvidenceError(f"fl_update evidence: {e}") from None
        if not ann.funder:
            raise EvidenceError(f"session {ann.session_id.hex()[:16]} names no funder: its rewards were never "
                                f"funded, so nothing pays them")
        return ann.funder, ann.session_id, ann.spec.reward_budget


VERIFIER = FlUpdateVerifier()   # one instance per process: the ledger refuses a second one
