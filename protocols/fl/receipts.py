"""Round receipts: the aggregator's signed statement of what a round accepted.

`RoundReceipt` (one per completed round, inside the gossiped `RoundResult`) names the session,
round and try, the aggregator and its key, the base and new model hashes, every accepted
participant with its weight (the strategy's contribution weight, summing to 1) and sample
count, and the round's reward (the session's reward budget / rounds). Rejected or dropped
participants are not in it: they earn nothing.

For the ledger (ledger/receipts.py), the aggregator also issues one `Receipt` of kind
"fl_update" per accepted participant (beneficiary = that participant's key), whose body is
{"session", "round", "model", "weight_ppm", "round_reward"}; `FlUpdateVerifier` prices it at
round_reward * weight_ppm / 10^6 (the aggregator's own update is not self-attested, so unpaid). What a validator cannot check from the receipt alone is that
the issuer was the elected aggregator of that round (that needs the coordinator's round plan);
the verifier checks what the receipt itself proves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.peerid import peer_id_matches, pubkey_from_peer_id
from fognode.node.wire import DIGEST_LEN, PUBKEY_LEN, SIG_LEN, Fields, digest, pack, sign, verify

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


def issue_ledger_receipts(key: SigningKey, receipt: RoundReceipt, epoch: int) -> list["Receipt"]:
    """One ledger `Receipt` of kind "fl_update" per accepted participant (none without a
    reward). Imports the ledger package lazily."""
    from fognode.ledger.receipts import Receipt

    if receipt.round_reward <= 0:
        return []
    out = []
    for a in receipt.accepted:
        if a.peer == receipt.aggregator:
            continue  # nobody attests their own update (FlUpdateVerifier refuses it)
        ppm = int(round(a.weight * PPM))
        if ppm <= 0:
            continue
        body = {"session": receipt.session_id, "round": receipt.round, "model": receipt.model_hash,
                "weight_ppm": ppm, "round_reward": receipt.round_reward}
        out.append(Receipt.issue(key, LEDGER_KIND, pubkey_from_peer_id(a.peer), epoch, body))
    return out


def reward_of(receipt: "Receipt") -> int:
    """What an "fl_update" receipt pays: round_reward * weight_ppm / 10^6 (0 if malformed)."""
    body = receipt.body
    ppm, reward = body.get("weight_ppm"), body.get("round_reward")
    if not isinstance(ppm, int) or not isinstance(reward, int) or ppm <= 0 or reward <= 0:
        return 0
    return reward * min(ppm, PPM) // PPM


class FlUpdateVerifier:
    """Ledger verifier of "fl_update" receipts: worth round_reward * weight_ppm / 10^6.

    Register it with the ledger service (`register_receipt_verifier`). Raises EvidenceError
    for a malformed body or a self-issued receipt: nobody attests their own update, so the
    aggregator's own contribution to a round it aggregates is not paid."""

    kind = LEDGER_KIND

    def __init__(self, max_round_reward: int = 2**53) -> None:
        self.max_round_reward = max_round_reward

    def max_reward(self, receipt: "Receipt", ctx: "VerifyContext") -> int:
        from fognode.ledger.receipts import EvidenceError

        try:
            f = Fields(receipt.body, "fl.UpdateReceipt")
            f.bytes("session", size=DIGEST_LEN)
            f.int("round", lo=1, hi=100_000)
            f.bytes("model", size=DIGEST_LEN)
            ppm = f.int("weight_ppm", lo=1, hi=PPM)
            reward = f.int("round_reward", lo=1, hi=self.max_round_reward)
            f.done()
        except RemoteProtocolError as e:
            raise EvidenceError(str(e)) from None
        if receipt.issuer == receipt.beneficiary:
            raise EvidenceError("an aggregator cannot attest its own FL update")
        return reward * ppm // PPM


VERIFIER = FlUpdateVerifier()   # one instance per process: the ledger refuses a second one
