"""The hosting wire: what an owner says to a host, and what a host answers an accessor.

Owner -> host, over a direct libp2p stream `/fognode/onion/hosting/1.0.0` (the owner and its
hosts have a ledger contract, they know each other; accessors never use this stream)::

    quote  {"v": 1, "t": "quote"}
        -> {"v": 1, "t": "quoted", "payee": <host's wallet>, "price": <micro-units per GB-hour>,
            "free": <bytes of quota left>}
    store  {"v": 1, "t": "store", "sid": <32>, "shard": <32>, "size": <int>, "payee": <owner's wallet>,
            "fee": <int>, "escrow": <32>, "rate": <micro-units per hour>, "deadline": <unix s>,
            "note": <ledger debit note>}, then the shard's bytes in frames of at most CHUNK
        -> {"v": 1, "t": "stored", "host": "<label>.fog"} | refused
    note   {"v": 1, "t": "note", "shard": <32>, "note": <ledger debit note>}
        -> {"v": 1, "t": "credited", "paid": <int>, "paid_until": <unix s>} | refused

Accessor -> host, through circuits to the host's hosting `.fog` service (port HOSTING_PORT):
an AccessRequest (fees.py), answered by {"v": 1, "t": "shard", "size": <int>} and the bytes
in frames of at most CHUNK, or refused. A refusal is {"v": 1, "t": "refused", "reason":
<Refusal value or "store">, "message": <str>}. On the circuit stream a frame is a u32
big-endian length and that many bytes, as on libp2p streams (node/streams.py).

One validating decoder per message (HostingWireError naming the field). Sans-IO.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fognode.ledger.escrow_orders import DebitNote, decode_debit_note
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields
from fognode.protocols.onion.hosting.manifest import MAX_FEE, MAX_TIME
from fognode.protocols.onion.hosting.shards import MAX_CONTENT
from fognode.protocols.onion.wire_names import HOSTING_STREAM

VERSION = 1
PROTOCOL_ID = HOSTING_STREAM
HOSTING_PORT = 1            # the port of a host's hosting .fog service
CHUNK = 1024 * 1024         # bytes of a shard per frame
MAX_META = 4096             # bytes of any message but a shard chunk


class HostingWireError(RemoteProtocolError):
    """A hosting message does not decode (the sender's fault)."""


def _fields(raw: Any, t: str, peer: str | None) -> Fields:
    f = Fields(raw, f"hosting {t}", versions={VERSION}, peer=peer)
    got = f.str("t", max_len=16)
    if got != t:
        raise HostingWireError(f"hosting message: expected {t!r}, got {got!r}", peer=peer)
    return f


def _decode(fn: Any, raw: Any, peer: str | None) -> Any:
    try:
        return fn(raw, peer)
    except HostingWireError:
        raise
    except RemoteProtocolError as e:
        raise HostingWireError(str(e), peer=peer) from None


def message_type(raw: Any) -> str:
    """The `t` of a decoded map, or "" (then the typed decoder says what is wrong)."""
    return raw.get("t", "") if isinstance(raw, dict) and isinstance(raw.get("t"), str) else ""


@dataclass(frozen=True)
class Quoted:
    payee: bytes
    price: int
    free: int

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "t": "quoted", "payee": self.payee, "price": self.price, "free": self.free}


def decode_quoted(raw: Any, *, peer: str | None = None) -> Quoted:
    def go(raw: Any, peer: str | None) -> Quoted:
        f = _fields(raw, "quoted", peer)
        q = Quoted(f.bytes("payee", size=32), f.int("price", lo=0, hi=MAX_FEE), f.int("free", lo=0, hi=2**62))
        f.done()
        return q
    return _decode(go, raw, peer)


@dataclass(frozen=True)
class StoreRequest:
    sid: bytes
    shard: bytes
    size: int
    payee: bytes
    fee: int
    escrow: bytes
    rate: int
    deadline: int
    note: DebitNote

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "t": "store", "sid": self.sid, "shard": self.shard, "size": self.size,
                "payee": self.payee, "fee": self.fee, "escrow": self.escrow, "rate": self.rate,
                "deadline": self.deadline, "note": self.note.to_wire()}


def decode_store_request(raw: Any, *, peer: str | None = None) -> StoreRequest:
    def go(raw: Any, peer: str | None) -> StoreRequest:
        f = _fields(raw, "store", peer)
        r = StoreRequest(f.bytes("sid", size=32), f.bytes("shard", size=32), f.int("size", lo=1, hi=MAX_CONTENT),
                         f.bytes("payee", size=32), f.int("fee", lo=0, hi=MAX_FEE), f.bytes("escrow", size=32),
                         f.int("rate", lo=1, hi=MAX_FEE), f.int("deadline", lo=0, hi=MAX_TIME),
                         decode_debit_note(f.map("note", max_len=8), peer=peer))
        f.done()
        return r
    return _decode(go, raw, peer)


@dataclass(frozen=True)
class NoteMessage:
    shard: bytes
    note: DebitNote

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "t": "note", "shard": self.shard, "note": self.note.to_wire()}


def decode_note_message(raw: Any, *, peer: str | None = None) -> NoteMessage:
    def go(raw: Any, peer: str | None) -> NoteMessage:
        f = _fields(raw, "note", peer)
        m = NoteMessage(f.bytes("shard", size=32), decode_debit_note(f.map("note", max_len=8), peer=peer))
        f.done()
        return m
    return _decode(go, raw, peer)


@dataclass(frozen=True)
class Refused:
    reason: str
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "t": "refused", "reason": self.reason, "message": self.message[:1000]}


def decode_refused(raw: Any, *, peer: str | None = None) -> Refused:
    def go(raw: Any, peer: str | None) -> Refused:
        f = _fields(raw, "refused", peer)
        r = Refused(f.str("reason", max_len=32), f.str("message", max_len=1000))
        f.done()
        return r
    return _decode(go, raw, peer)


def decode_reply(raw: Any, t: str, fields: dict[str, str], *, peer: str | None = None) -> dict[str, Any] | Refused:
    """A small reply of type `t` with `fields` ({name: "int"|"str"|"bytes32"}), or the Refused."""
    if message_type(raw) == "refused":
        return decode_refused(raw, peer=peer)

    def go(raw: Any, peer: str | None) -> dict[str, Any]:
        f = _fields(raw, t, peer)
        out: dict[str, Any] = {}
        for name, kind in fields.items():
            out[name] = (f.int(name, lo=0, hi=2**62) if kind == "int" else f.str(name, max_len=100)
                         if kind == "str" else f.bytes(name, size=32))
        f.done()
        return out
    return _decode(go, raw, peer)
