"""FL wire messages: frozen dataclasses, `to_wire()` maps and one validating decoder each.

Gossip (topic `fognode/fl/sessions/1`) carries small control messages in an envelope
`{"v": 1, "type": <kind>, "body": {...}}`: session announcements (signed by the starter),
opt-ins, round plans, round results (with the aggregator's signed receipt), round failures,
session ends and members' votes that the coordinator fell silent. Streams carry tensors: `UpdateHeader` then raw chunks on `/fognode/fl/update/1.0.0`,
`ModelRequest` / `ModelResponse` then raw chunks on `/fognode/fl/model/1.0.0`.

Every decoder raises RemoteProtocolError (through `Fields`) naming the message and field.

Modules: messages_spec.py (shared limits and field decoders, SessionSpec, DeviceFacts),
messages_session.py (announcement, opt-in, round plan), this module (round result, round
failed, session ended, the gossip envelope) and messages_stream.py (stream messages); every
name is importable from here, the FL messages' one entry point.

Reward evidence: opt-ins carry the wallet a node's rewards go to, plans carry those wallets
and the coordinator's signed `RoundHeader` (round_header.py) over the plan's election and
participants; `plan_problem` is the participant's check of a plan against its header.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields, pack
from fognode.protocols.fl.errors import UnknownMessageType
from fognode.protocols.fl.messages_session import (
    CoordinatorSilent, OptIn, RoundPlan, SessionAnnouncement, coordinators_of, plan_problem)
from fognode.protocols.fl.messages_spec import (
    GOSSIP_TYPES, MAX_CAPS, MAX_COORDINATORS, MAX_NAME, MAX_PARAMS, MAX_PARTICIPANTS, MAX_PEER_ID,
    MAX_REASON, VERSION, DeviceFacts, PrivacyOptions, SelectionCriteria, SessionSpec, finite,
    hash_field)
from fognode.protocols.fl.messages_stream import (
    Ack, MemberMeta, ModelRequest, ModelResponse, UpdateHeader, XferRequest)
from fognode.protocols.fl.rewards.receipts import RoundReceipt, decode_round_receipt

__all__ = ["GOSSIP_TYPES", "MAX_CAPS", "CoordinatorSilent", "MAX_COORDINATORS", "MAX_NAME", "MAX_PARAMS",
           "MAX_PARTICIPANTS", "MAX_PEER_ID", "MAX_REASON", "VERSION", "Ack", "DeviceFacts",
           "GossipMessage", "MemberMeta", "ModelRequest", "ModelResponse", "OptIn",
           "PrivacyOptions", "RoundFailed", "RoundPlan", "RoundResult", "SelectionCriteria",
           "SessionAnnouncement", "SessionEnded", "SessionSpec", "UpdateHeader", "XferRequest",
           "coordinators_of",
           "decode_gossip", "encode_gossip", "plan_problem"]


@dataclass(frozen=True)
class RoundResult:
    """A completed round, published by the aggregator that completed it."""

    receipt: RoundReceipt
    loss: float           # base model, sample-weighted over accepted participants' local data
    accuracy: float
    train_loss: float     # participants' mean local training loss
    dropped: tuple[str, ...]
    rejected: dict[str, str] = field(hash=False)

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "receipt": self.receipt.to_wire(), "loss": finite(self.loss),
                "acc": finite(self.accuracy), "train_loss": finite(self.train_loss),
                "dropped": list(self.dropped), "rejected": dict(self.rejected)}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "RoundResult":
        f = Fields(raw, "fl.RoundResult", versions={VERSION}, peer=peer)
        receipt = decode_round_receipt(f.map("receipt"), peer=peer)
        loss, acc, tl = f.float("loss"), f.float("acc"), f.float("train_loss")
        dropped = f.list("dropped", max_len=MAX_PARTICIPANTS)
        rejected = f.map("rejected", max_len=MAX_PARTICIPANTS)
        if not all(isinstance(p, str) and len(p) <= MAX_PEER_ID for p in dropped):
            f._fail("field 'dropped' must be peer ids")
        if not all(isinstance(k, str) and isinstance(v, str) and len(v) <= MAX_REASON
                   for k, v in rejected.items()):
            f._fail("field 'rejected' must map peer ids to reasons")
        f.done()
        return cls(receipt, loss, acc, tl, tuple(dropped), rejected)


@dataclass(frozen=True)
class RoundFailed:
    """An aggregator's deadline passed with fewer than the minimum usable updates."""

    session_id: bytes
    round: int
    try_no: int
    reason: str

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "session": self.session_id, "round": self.round, "try": self.try_no,
                "reason": self.reason[:MAX_REASON]}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "RoundFailed":
        f = Fields(raw, "fl.RoundFailed", versions={VERSION}, peer=peer)
        m = cls(hash_field(f, "session"), f.int("round", lo=1, hi=100_000), f.int("try", lo=0, hi=1000),
                f.str("reason", max_len=MAX_REASON))
        f.done()
        return m


@dataclass(frozen=True)
class SessionEnded:
    """The coordinator ended the session: completed, failed or stopped. `rank` is the ending
    coordinator's index in coordinators_of (wire "rank", absent for the starter)."""

    session_id: bytes
    state: str
    rounds_done: int
    final_model_hash: bytes
    reason: str = ""
    rank: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "session": self.session_id, "state": self.state,
                "rounds": self.rounds_done, "model": self.final_model_hash,
                "reason": self.reason[:MAX_REASON], **({"rank": self.rank} if self.rank else {})}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "SessionEnded":
        f = Fields(raw, "fl.SessionEnded", versions={VERSION}, peer=peer)
        m = cls(hash_field(f, "session"), f.str("state", max_len=16), f.int("rounds", lo=0, hi=100_000),
                hash_field(f, "model"), f.str("reason", max_len=MAX_REASON),
                f.int("rank", lo=0, hi=MAX_COORDINATORS, optional=True, default=0))
        f.done()
        if m.state not in ("completed", "failed", "stopped"):
            raise RemoteProtocolError(f"fl.SessionEnded: unknown state {m.state!r}", peer=peer)
        return m


GossipMessage = SessionAnnouncement | OptIn | RoundPlan | RoundResult | RoundFailed | SessionEnded | CoordinatorSilent
_TYPE_OF = {SessionAnnouncement: "announce", OptIn: "optin", RoundPlan: "plan",
            RoundResult: "result", RoundFailed: "failed", SessionEnded: "ended",
            CoordinatorSilent: "silent"}
_DECODER: dict[str, Callable[..., GossipMessage]] = {"announce": SessionAnnouncement.decode, "optin": OptIn.decode, "plan": RoundPlan.decode,
            "result": RoundResult.decode, "failed": RoundFailed.decode, "ended": SessionEnded.decode,
            "silent": CoordinatorSilent.decode}


def encode_gossip(msg: GossipMessage) -> bytes:
    return pack({"v": VERSION, "type": _TYPE_OF[type(msg)], "body": msg.to_wire()})


def decode_gossip(raw: Any, *, peer: str | None = None) -> GossipMessage:
    """Decode an envelope (already msgpack-decoded); RemoteProtocolError on anything wrong
    (its subclass UnknownMessageType for a well-formed envelope of a type this version lacks)."""
    f = Fields(raw, "fl.Gossip", versions={VERSION}, peer=peer)
    kind = f.str("type", max_len=16)
    body = f.map("body", max_len=64)
    f.done()
    dec = _DECODER.get(kind)
    if dec is None:
        raise UnknownMessageType(f"fl.Gossip: unknown message type {kind!r}", peer=peer)
    return dec(body, peer=peer)
