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
     "proof": [<Merkle path of (peer, wallet) to the header's participants root>]}

That is about 2 kB whatever the plan's size (the plan itself is not carried). `FlUpdateVerifier`
checks the announcement's signature, the header's signature by one of `coordinators_of(ann)`
and that it is for this session, the claim, round <= rounds, round_reward == budget // rounds,
that the issuer is in the header's aggregator order (the elected aggregator or a fallback),
that the beneficiary is the planned wallet of `peer` (Merkle proof) and that nobody attests
their own update; it prices the receipt at round_reward * weight_ppm / 10^6 (EvidenceError
naming what is wrong otherwise). The claim makes the ledger pay each (session, round,
participant) once even when two aggregators of the order both completed the round (two
participants paid to one wallet are two claims). To keep such a pair from splitting the
validators' votes (each validator locks the claim for the first mint it sees; a split leaves
both mints short of a quorum and their senders' sequences stuck), an aggregator mints only
once the coordinator adopted its model (FlCore._adopted).

What the evidence does not prove: the weights. An elected aggregator is trusted with the
split of its round (as it is trusted with the aggregate); the verifier bounds each receipt
by the round reward, not the sum of one round's receipts (that would need a per-round running
total at the validators; the epoch's mint budget still bounds everything).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.peerid import peer_id_matches
from fognode.node.wire import DIGEST_LEN, PUBKEY_LEN, SIG_LEN, Fields, digest, pack, sign, verify
from fognode.protocols.fl.merkle import MAX_DEPTH, leaf_hash, merkle_proof, merkle_verify
from fognode.protocols.fl.round_header import MAX_PARTICIPANTS, RoundHeader, claim_of

if TYPE_CHECKING:  # pragma: no cover
    from fognode.ledger.receipts import Receipt, VerifyContext
    from fognode.protocols.fl.messages import RoundPlan, SessionAnnouncement, SessionSpec

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
    common = {"ann": ann.to_wire(), "header": header.to_wire(), "model": receipt.model_hash,
              "round_reward": receipt.round_reward}
    out = []
    for a in receipt.accepted:
        if a.peer == receipt.aggregator or a.peer not in peers:
            continue  # nobody attests their own update (FlUpdateVerifier refuses it)
        ppm = int(round(a.weight * PPM))
        wallet = plan.wallet_of(a.peer)
        if ppm <= 0 or not wallet:
            continue
        i = peers.index(a.peer)
        body = {**common, "claim": claim_of(ann.session_id, receipt.round, a.peer),
                "weight_ppm": ppm, "peer": a.peer, "index": i, "proof": merkle_proof(leaves, i)}
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
    round's aggregator order, a beneficiary that is not the planned participant's wallet, or
    a self-attested update (the aggregator's own update is not paid)."""

    kind = LEDGER_KIND

    def max_reward(self, receipt: "Receipt", ctx: "VerifyContext") -> int:
        from fognode.ledger.receipts import EvidenceError
        from fognode.protocols.fl.messages import SessionAnnouncement, coordinators_of

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
            f.done()
        except RemoteProtocolError as e:
            raise EvidenceError(f"fl_update evidence: {e}") from None
        if not all(isinstance(p, bytes) and len(p) == DIGEST_LEN for p in proof):
            raise EvidenceError("fl_update evidence: the Merkle proof must be 32-byte hashes")
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
        return reward * ppm // PPM


VERIFIER = FlUpdateVerifier()   # one instance per process: the ledger refuses a second one
