"""The coordinator's signed round header: the compact part of a round plan that rewards need.

A `RoundHeader` names the session, round, try and round seed, the election's aggregator order
(aggregator then fallbacks, exactly as participants compute it from the plan with
election.aggregator_order), and the Merkle root (merkle.py) over the plan's participants with
the wallets their rewards go to. The session's coordinator signs it; it travels inside the
`RoundPlan` (messages.py), where participants check that it matches the plan and the election
they compute and refuse to train otherwise, and inside every "fl_update" ledger receipt, where
validators check that the receipt's issuer is in the order and its beneficiary is a planned
participant's wallet (receipts.py) without seeing the plan.

Wire::

    {"v": 1, "session": <32>, "round": int, "try": int, "seed": <32>, "order": [peer id, ...],
     "parts": <32 Merkle root>, "n": participants, "signer": peer id, "key": <32>, "sig": <64>}

`sig` is the signer's Ed25519 signature over pack() of every other field; `key` must be the
signer's peer-id key. Whether the signer may sign for the session (`coordinators_of` its
announcement) is checked where the announcement is known.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.peerid import peer_id_matches
from fognode.node.wire import DIGEST_LEN, PUBKEY_LEN, SIG_LEN, Fields, digest, sign, verify

HEADER_VERSION = 1
MAX_ORDER = 17              # 1 + SessionSpec.fallbacks (at most 16)
MAX_PEER_ID = 128
MAX_PARTICIPANTS = 256


def claim_of(session_id: bytes, round_no: int, peer: str) -> bytes:
    """What an "fl_update" receipt claims: one participant's update in one round of one
    session (ledger receipts.py pays each (kind, beneficiary, claim) once, whichever aggregator
    of the order issued it). The peer is in it so that two participants paid to one wallet
    (one owner's devices) are two claims."""
    return digest(b"fognode-fl-round/1" + session_id + round_no.to_bytes(8, "big") + peer.encode())


@dataclass(frozen=True)
class RoundHeader:
    session_id: bytes
    round: int
    try_no: int
    seed: bytes
    order: tuple[str, ...]
    participants_root: bytes
    participants: int
    signer: str
    signer_key: bytes
    sig: bytes = b""

    def body(self) -> dict[str, Any]:
        return {"v": HEADER_VERSION, "session": self.session_id, "round": self.round,
                "try": self.try_no, "seed": self.seed, "order": list(self.order),
                "parts": self.participants_root, "n": self.participants, "signer": self.signer,
                "key": self.signer_key}

    def to_wire(self) -> dict[str, Any]:
        return {**self.body(), "sig": self.sig}

    def signed(self, key: SigningKey) -> "RoundHeader":
        return RoundHeader(self.session_id, self.round, self.try_no, self.seed, self.order,
                           self.participants_root, self.participants, self.signer,
                           self.signer_key, sign(key, self.body()))

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "RoundHeader":
        """Validate the fields, the key <-> signer peer id and the signature; RemoteProtocolError
        naming what is wrong."""
        f = Fields(raw, "fl.RoundHeader", versions={HEADER_VERSION}, peer=peer)
        session, rnd = f.bytes("session", size=DIGEST_LEN), f.int("round", lo=1, hi=100_000)
        try_no, seed = f.int("try", lo=0, hi=1000), f.bytes("seed", size=DIGEST_LEN)
        order = f.list("order", max_len=MAX_ORDER)
        if not order or not all(isinstance(p, str) and 0 < len(p) <= MAX_PEER_ID for p in order) \
                or len(set(order)) != len(order):
            f._fail("field 'order' must list distinct peer ids, at least one")
        root, n = f.bytes("parts", size=DIGEST_LEN), f.int("n", lo=1, hi=MAX_PARTICIPANTS)
        signer, key = f.str("signer", max_len=MAX_PEER_ID), f.bytes("key", size=PUBKEY_LEN)
        sig = f.bytes("sig", size=SIG_LEN)
        f.done()
        h = cls(session, rnd, try_no, seed, tuple(order), root, n, signer, key, sig)
        if not peer_id_matches(signer, key):
            raise RemoteProtocolError("fl.RoundHeader: key does not match the signer's peer id", peer=peer)
        if not verify(key, h.body(), sig):
            raise RemoteProtocolError("fl.RoundHeader: bad signature", peer=peer)
        return h
