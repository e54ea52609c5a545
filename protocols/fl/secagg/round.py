"""Secure aggregation inside one FL round: configuration and stream framing (sans-IO).

In a session started with `secagg=true` a participant does not send its update in the clear.
It feeds `strategy.client_contribution(delta, num_samples)` (vector and weight, `with_weight`)
into the Bonawitz et al. SecAgg protocol (`core.py`) run with the round's elected
aggregator of the slot it is in: advertise keys -> share keys -> masked input -> unmask. The
aggregator learns only the sum over the survivors and applies `strategy.aggregate_sum`.

Everyone derives the same `SecAggConfig` from the round plan (`config_for`): the round id
binds session, round, attempt and fallback slot (a fallback aggregator runs a fresh protocol
with fresh keys, never reusing masks); the threshold is the larger of a bare majority of each
participant's share holders and the session's minimum participants (capped at the holders);
rounds above `COMPLETE_GRAPH_MAX` participants use a SecAgg+ neighbour graph of degree
2*ceil(log2 n). The phases share the aggregator's slot of the round deadline D: the key phase
(which also absorbs local training: a participant advertises once its contribution is ready)
ends at most KEYS_SHARE * D into the slot, each later phase gets PHASE_SHARE * D.

On the wire (stream /fognode/fl/secagg/1.0.0, one message per stream) a message travels as an
envelope map (session, round, try, fallback, parts, and on AdvertiseKeys the sender's declared
sample count and base-model quality) followed by `parts` byte frames that concatenate to the
msgpack of the message, so masked inputs of large models are chunked below the frame limit.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields, pack, unpack
from fognode.protocols.fl.messages import RoundPlan
from fognode.protocols.fl.secagg.core import SecAggConfig, default_threshold, round_id_for
from fognode.protocols.fl.secagg.messages import MAX_VECTOR_BYTES, Message, decode_message
from fognode.protocols.fl.session.rounds import UpdateMeta

VERSION = 1
COMPLETE_GRAPH_MAX = 16
KEYS_SHARE = 0.55
PHASE_SHARE = 0.14
RING_BITS = 64
FRAC_BITS = 24
MAX_PARTS = 4096
MAX_BODY = MAX_VECTOR_BYTES + (1 << 20)


def neighbours_for(n: int) -> int:
    """SecAgg+ degree k for n participants: 0 (complete graph) up to COMPLETE_GRAPH_MAX."""
    if n <= COMPLETE_GRAPH_MAX:
        return 0
    k = 2 * math.ceil(math.log2(n))
    return k if k < n - 1 else 0


def max_abs_for(n: int) -> float:
    """The largest |element| of a contribution such that n of them never overflow the ring."""
    return 2.0 ** (RING_BITS - 2 - FRAC_BITS) / n


def config_for(session_id: bytes, plan: RoundPlan, slot: int, vector_length: int,
               min_participants: int) -> SecAggConfig:
    """The SecAgg configuration of slot `slot` of this round attempt (same at every node).
    `vector_length` counts the appended weight. Raises LocalProtocolError if inconsistent."""
    rid = round_id_for(session_id, plan.round, plan.try_no)
    if slot:
        rid = hashlib.blake2b(rid + slot.to_bytes(4, "big"), digest_size=len(rid),
                              person=b"fognode-sa-slot").digest()
    n = len(plan.peers)
    k = neighbours_for(n)
    holders = n if k == 0 else k + 1
    threshold = min(holders, max(default_threshold(n, k), min_participants))
    return SecAggConfig(rid, tuple(plan.peers), vector_length, threshold, k, RING_BITS, FRAC_BITS,
                        max_abs_for(n))


@dataclass(frozen=True)
class Envelope:
    """What precedes a secagg message on the stream: which round and slot it belongs to, how
    many byte frames follow, and (AdvertiseKeys only) the sender's declared update facts."""

    session_id: bytes
    round: int
    try_no: int
    fallback: int
    parts: int
    meta: UpdateMeta | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": VERSION, "session": self.session_id, "round": self.round,
                               "try": self.try_no, "fallback": self.fallback, "parts": self.parts}
        if self.meta is not None:
            m = self.meta
            out["meta"] = {"samples": m.num_samples, "base_loss": m.base_loss,
                           "base_accuracy": m.base_accuracy, "train_loss": m.train_loss}
        return out

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> Envelope:
        """RemoteProtocolError (naming the field) when malformed."""
        f = Fields(raw, "fl.SecAggEnvelope", versions={VERSION}, peer=peer)
        sid = f.bytes("session", size=32)
        rnd = f.int("round", lo=1, hi=100_000)
        try_no = f.int("try", lo=0, hi=100_000)
        fb = f.int("fallback", lo=0, hi=1000)
        parts = f.int("parts", lo=1, hi=MAX_PARTS)
        meta = None
        if f.has("meta"):
            m = f.sub("meta", "fl.SecAggEnvelope.meta")
            meta = UpdateMeta(m.int("samples", lo=1, hi=1 << 40), m.float("base_loss"),
                              m.float("base_accuracy"), m.float("train_loss"))
            m.done()
        f.done()
        return cls(sid, rnd, try_no, fb, parts, meta)


def encode(session_id: bytes, round_no: int, try_no: int, fallback: int, msg: Message,
           meta: UpdateMeta | None, frame_size: int) -> tuple[dict[str, Any], list[bytes]]:
    """(envelope map, byte frames) carrying `msg`."""
    body = pack(msg.to_wire())
    frames = [body[i:i + frame_size] for i in range(0, len(body), frame_size)] or [b""]
    return Envelope(session_id, round_no, try_no, fallback, len(frames), meta).to_wire(), frames


def decode_body(frames: list[bytes], *, peer: str | None = None) -> Message:
    """The message carried by the byte frames; RemoteProtocolError when malformed."""
    body = b"".join(frames)
    if len(body) > MAX_BODY:
        raise RemoteProtocolError(f"secagg message of {len(body)} bytes is too large", peer=peer)
    return decode_message(unpack(body, max_size=MAX_BODY, what="secagg message"), peer=peer)
