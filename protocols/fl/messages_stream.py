"""FL stream messages: `UpdateHeader` (with the regional `MemberMeta` of a hierarchical
forward) then raw chunks on `/fognode/fl/update/1.0.0`, answered by an `Ack`; `ModelRequest`
/ `ModelResponse` then raw chunks on `/fognode/fl/model/1.0.0`; on the long-lived
`/fognode/fl/xfer/1.0.0` each of those exchanges is preceded by one `XferRequest` frame (its id
and kind; kind "hello" has no exchange: it opens a session ahead of its first transfer; kind
"result", sent only to a node advertising RESULT_PUSH, is an aggregator's push of a RoundResult,
an `Ack`, then the model as `ModelResponse` and chunks: transfer/push.py). Each decoder raises
RemoteProtocolError naming the message and field."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields
from fognode.protocols.fl.messages_spec import (
    MAX_NAME, MAX_PARTICIPANTS, MAX_PEER_ID, MAX_REASON, VERSION, finite, hash_field)

if TYPE_CHECKING:   # numpy: imported where a tensor header is decoded, not at import (fl/loading.py)
    from fognode.protocols.fl.transfer.tensors import TensorHeader


@dataclass(frozen=True)
class MemberMeta:
    """One participant inside a regional update: its sample count and the quality figures it
    reported to its regional aggregator."""

    peer: str
    num_samples: int
    base_loss: float
    base_accuracy: float
    train_loss: float

    def to_wire(self) -> list[Any]:
        return [self.peer, self.num_samples, finite(self.base_loss), finite(self.base_accuracy),
                finite(self.train_loss)]

    @classmethod
    def decode(cls, raw: Any, f: Fields) -> "MemberMeta":
        if (not isinstance(raw, list) or len(raw) != 5 or not isinstance(raw[0], str)
                or not 0 < len(raw[0]) <= MAX_PEER_ID or isinstance(raw[1], bool)
                or not isinstance(raw[1], int) or not 0 < raw[1] <= 2**40
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                           for x in raw[2:])):
            f._fail("field 'members' must be [peer, samples > 0, base loss, base accuracy, "
                    "train loss] lists, the figures finite")
        return cls(raw[0], raw[1], float(raw[2]), float(raw[3]), float(raw[4]))


@dataclass(frozen=True)
class UpdateHeader:
    """First frame on the update stream; raw tensor chunks follow."""

    session_id: bytes
    round: int
    try_no: int
    fallback: int            # index in the aggregator order this update is addressed to
    num_samples: int
    base_loss: float         # the base model on the participant's training data
    base_accuracy: float     # the base model on the participant's held-out data
    train_loss: float
    tensor: TensorHeader
    # a regional update (hierarchical sessions): the participants it combines and its
    # aggregation weight; the tensor is their weighted mean contribution
    members: tuple["MemberMeta", ...] = ()
    weight: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        out = {"v": VERSION, "session": self.session_id, "round": self.round, "try": self.try_no,
               "fallback": self.fallback, "n": self.num_samples, "base_loss": finite(self.base_loss),
               "base_acc": finite(self.base_accuracy), "train_loss": finite(self.train_loss),
               "tensor": self.tensor.to_wire()}
        if self.members:
            out["members"] = [m.to_wire() for m in self.members]
            out["weight"] = self.weight
        return out

    @classmethod
    def decode(cls, raw: Any, *, expected_shape: tuple[int, ...] | None, max_bytes: int,
               peer: str | None = None) -> "UpdateHeader":
        """Validate the header; the tensor header is checked against the expected shape and
        size limit here, before any chunk is read (TensorRejected with a reason)."""
        from fognode.protocols.fl.transfer.tensors import decode_header

        f = Fields(raw, "fl.UpdateHeader", versions={VERSION}, peer=peer)
        h = cls(hash_field(f, "session"), f.int("round", lo=1, hi=100_000), f.int("try", lo=0, hi=1000),
                f.int("fallback", lo=0, hi=16), f.int("n", lo=1, hi=2**40), f.float("base_loss"),
                f.float("base_acc"), f.float("train_loss"),
                decode_header(f.map("tensor"), expected_shape=expected_shape, max_bytes=max_bytes,
                              peer=peer))
        members_raw = f.list("members", max_len=MAX_PARTICIPANTS, optional=True)
        if members_raw:
            members = tuple(MemberMeta.decode(m, f) for m in members_raw)
            if len({m.peer for m in members}) != len(members):
                f._fail("field 'members' must list distinct peers")
            weight = f.float("weight", lo=0.0, hi=1e18)
            if not weight > 0:
                f._fail("field 'weight' must be positive in a regional update")
            h = dataclasses.replace(h, members=members, weight=weight)
        f.done()
        return h

    @staticmethod
    def peek_session(raw: Any) -> tuple[bytes, int] | None:
        """(session, round) of an undecoded header map, to look up the expected shape."""
        if isinstance(raw, dict) and isinstance(raw.get("session"), bytes) and isinstance(raw.get("round"), int):
            return raw["session"], raw["round"]
        return None


@dataclass(frozen=True)
class Ack:
    """The receiver's verdict on a stream request."""

    ok: bool
    reason: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "ok": self.ok, "reason": self.reason[:MAX_REASON]}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "Ack":
        f = Fields(raw, "fl.Ack", versions={VERSION}, peer=peer)
        a = cls(f.bool("ok"), f.str("reason", max_len=MAX_REASON))
        f.done()
        return a


@dataclass(frozen=True)
class ModelRequest:
    session_id: bytes
    model_hash: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "session": self.session_id, "model": self.model_hash}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "ModelRequest":
        f = Fields(raw, "fl.ModelRequest", versions={VERSION}, peer=peer)
        m = cls(hash_field(f, "session"), hash_field(f, "model"))
        f.done()
        return m


@dataclass(frozen=True)
class ModelResponse:
    """Answer to a model request: the named tensors that follow ("params" first, then any
    server-optimiser state of the strategy), each as its header then its chunks."""

    ok: bool
    reason: str
    tensors: tuple[tuple[str, TensorHeader], ...]

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "ok": self.ok, "reason": self.reason[:MAX_REASON],
                "tensors": [[n, h.to_wire()] for n, h in self.tensors]}

    @classmethod
    def decode(cls, raw: Any, *, params_shape: tuple[int, ...], max_bytes: int,
               peer: str | None = None) -> "ModelResponse":
        from fognode.protocols.fl.transfer.tensors import decode_header

        f = Fields(raw, "fl.ModelResponse", versions={VERSION}, peer=peer)
        ok, reason = f.bool("ok"), f.str("reason", max_len=MAX_REASON)
        items = f.list("tensors", max_len=8)
        f.done()
        tensors: list[tuple[str, TensorHeader]] = []
        for i, item in enumerate(items):
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str) \
                    or not 0 < len(item[0]) <= MAX_NAME:
                raise RemoteProtocolError("fl.ModelResponse: tensors must be [name, header] pairs", peer=peer)
            name = item[0]
            if i == 0 and name != "params":
                raise RemoteProtocolError("fl.ModelResponse: the first tensor must be 'params'", peer=peer)
            tensors.append((name, decode_header(item[1], expected_shape=params_shape if i == 0 else None,
                                                max_bytes=max_bytes, peer=peer)))
        if ok and not tensors:
            raise RemoteProtocolError("fl.ModelResponse: ok without tensors", peer=peer)
        return cls(ok, reason, tuple(tensors))


XFER_KINDS = ("hello", "model", "update", "result")
# the OptIn capability of a node that takes a "result" request (transfer/push.py); a node
# without it (an older one) refuses the kind, so it is never sent one
RESULT_PUSH = "fl.result-push"


@dataclass(frozen=True)
class XferRequest:
    """One request on a transfer session (`/fognode/fl/xfer/1.0.0`): its id (the sender's
    count on this session, for logs and ordering checks) and its kind. "model" and "update"
    are followed by exactly the exchange of `/fognode/fl/model/1.0.0` and
    `/fognode/fl/update/1.0.0`; "hello" by nothing (it satisfies the receiver's first-frame
    deadline for a session opened ahead of its first transfer); "result" (sent only to a
    node advertising RESULT_PUSH) by the aggregator's push of a RoundResult and, if the
    receiver's Ack takes it, the new model as a ModelResponse and its chunks
    (transfer/push.py)."""

    request_id: int
    kind: str

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "id": self.request_id, "kind": self.kind}

    @classmethod
    def decode(cls, raw: Any, *, peer: str | None = None) -> "XferRequest":
        f = Fields(raw, "fl.XferRequest", versions={VERSION}, peer=peer)
        r = cls(f.int("id", lo=0, hi=2**62), f.str("kind", max_len=16))
        f.done()
        if r.kind not in XFER_KINDS:
            raise RemoteProtocolError(f"fl.XferRequest: field 'kind' must be one of "
                                      f"{', '.join(XFER_KINDS)}, got {r.kind!r}", peer=peer)
        return r
