"""Secure-aggregation messages: frozen dataclasses, each with `to_wire()` (a map for
`node.wire.pack`) and a validating `from_wire(raw, peer=...)` built on `node.wire.Fields`.

Every message names its round (`round_id`, 32 bytes) so nothing from one round is taken for
another; `decode_message` dispatches on the "type" field. Anything malformed raises
RemoteProtocolError naming the message and field.

Flow (participant <-> aggregator; participants never talk to each other directly):
    AdvertiseKeys  ->   KeyRoster  <-   EncryptedShares  ->   ShareBundle  <-
    MaskedInput    ->   UnmaskRequest <-   UnmaskShares  ->
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields

VERSION = 1
ROUND_ID_LEN = 32
KEY_LEN = 32
COMMIT_LEN = 32
SIG_LEN = 64
MAX_PEER_ID = 128
MAX_PEERS = 4096
MAX_CIPHERTEXT = 512
MAX_VECTOR_BYTES = 64 * 1024 * 1024


def _peer_str(v: Any, what: str) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= MAX_PEER_ID:
        raise RemoteProtocolError(f"{what}: peer ids must be strings of 1..{MAX_PEER_ID} characters")
    return v


def _check_type(f: Fields, expected: str) -> None:
    got = f.str("type", max_len=64)
    if got != expected:
        f._fail(f"type {got!r} is not {expected!r}")


def _peer_bytes_map(raw: dict[str, Any], what: str, max_len: int) -> tuple[tuple[str, bytes], ...]:
    out = []
    for k, v in raw.items():
        _peer_str(k, what)
        if not isinstance(v, bytes) or len(v) > max_len:
            raise RemoteProtocolError(f"{what}: value for {k!r} must be bytes of at most {max_len}")
        out.append((k, v))
    return tuple(sorted(out))


@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0, participant -> aggregator: its two X25519 public keys (c: encryption of
    shares, s: mask agreement), a BLAKE2b commitment to its self-mask seed, and an optional
    Ed25519 signature by its node identity over `signed_body`."""

    round_id: bytes
    c_pk: bytes
    s_pk: bytes
    b_commit: bytes
    signature: bytes = b""

    TYPE = "secagg.advertise"

    def signed_body(self, peer: str) -> dict[str, Any]:
        return {"v": VERSION, "type": self.TYPE, "peer": peer, "round_id": self.round_id,
                "c_pk": self.c_pk, "s_pk": self.s_pk, "b_commit": self.b_commit}

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "type": self.TYPE, "round_id": self.round_id, "c_pk": self.c_pk,
                "s_pk": self.s_pk, "b_commit": self.b_commit, "signature": self.signature}

    @classmethod
    def from_wire(cls, raw: Any, peer: str | None = None) -> AdvertiseKeys:
        f = Fields(raw, "secagg.AdvertiseKeys", versions={VERSION}, peer=peer)
        _check_type(f, cls.TYPE)
        msg = cls(f.bytes("round_id", size=ROUND_ID_LEN), f.bytes("c_pk", size=KEY_LEN),
                  f.bytes("s_pk", size=KEY_LEN), f.bytes("b_commit", size=COMMIT_LEN),
                  f.bytes("signature", max_len=SIG_LEN))
        if msg.signature and len(msg.signature) != SIG_LEN:
            f._fail(f"field 'signature' must be empty or {SIG_LEN} bytes")
        f.done()
        return msg


@dataclass(frozen=True)
class RosterEntry:
    peer: str
    keys: AdvertiseKeys


@dataclass(frozen=True)
class KeyRoster:
    """Round 0 result, aggregator -> each participant that advertised: everyone's keys."""

    round_id: bytes
    entries: tuple[RosterEntry, ...]

    TYPE = "secagg.roster"

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "type": self.TYPE, "round_id": self.round_id,
                "entries": {e.peer: e.keys.to_wire() for e in self.entries}}

    @classmethod
    def from_wire(cls, raw: Any, peer: str | None = None) -> KeyRoster:
        f = Fields(raw, "secagg.KeyRoster", versions={VERSION}, peer=peer)
        _check_type(f, cls.TYPE)
        round_id = f.bytes("round_id", size=ROUND_ID_LEN)
        entries = []
        for p, keys in sorted(f.map("entries", max_len=MAX_PEERS).items()):
            entries.append(RosterEntry(_peer_str(p, "secagg.KeyRoster"),
                                       AdvertiseKeys.from_wire(keys, peer=peer)))
        f.done()
        return cls(round_id, tuple(entries))


@dataclass(frozen=True)
class EncryptedShares:
    """Round 1, participant -> aggregator: for each neighbour, a NaCl box (sender's c key to
    the neighbour's c key) holding the neighbour's shares of the sender's s key and self-mask
    seed."""

    round_id: bytes
    ciphertexts: tuple[tuple[str, bytes], ...]   # recipient -> box

    TYPE = "secagg.shares"

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "type": self.TYPE, "round_id": self.round_id,
                "ciphertexts": dict(self.ciphertexts)}

    @classmethod
    def from_wire(cls, raw: Any, peer: str | None = None) -> EncryptedShares:
        f = Fields(raw, "secagg.EncryptedShares", versions={VERSION}, peer=peer)
        _check_type(f, cls.TYPE)
        msg = cls(f.bytes("round_id", size=ROUND_ID_LEN),
                  _peer_bytes_map(f.map("ciphertexts", max_len=MAX_PEERS), "secagg.EncryptedShares",
                                  MAX_CIPHERTEXT))
        f.done()
        return msg


@dataclass(frozen=True)
class ShareBundle:
    """Round 1 result, aggregator -> each participant that sent shares: the boxes addressed to
    it, by sender. The senders are the neighbours it must mask with."""

    round_id: bytes
    ciphertexts: tuple[tuple[str, bytes], ...]   # sender -> box

    TYPE = "secagg.bundle"

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "type": self.TYPE, "round_id": self.round_id,
                "ciphertexts": dict(self.ciphertexts)}

    @classmethod
    def from_wire(cls, raw: Any, peer: str | None = None) -> ShareBundle:
        f = Fields(raw, "secagg.ShareBundle", versions={VERSION}, peer=peer)
        _check_type(f, cls.TYPE)
        msg = cls(f.bytes("round_id", size=ROUND_ID_LEN),
                  _peer_bytes_map(f.map("ciphertexts", max_len=MAX_PEERS), "secagg.ShareBundle",
                                  MAX_CIPHERTEXT))
        f.done()
        return msg


@dataclass(frozen=True)
class MaskedInput:
    """Round 2, participant -> aggregator: its masked, quantised vector (little-endian ring
    elements)."""

    round_id: bytes
    y: bytes

    TYPE = "secagg.masked"

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "type": self.TYPE, "round_id": self.round_id, "y": self.y}

    @classmethod
    def from_wire(cls, raw: Any, peer: str | None = None) -> MaskedInput:
        f = Fields(raw, "secagg.MaskedInput", versions={VERSION}, peer=peer)
        _check_type(f, cls.TYPE)
        msg = cls(f.bytes("round_id", size=ROUND_ID_LEN), f.bytes("y", max_len=MAX_VECTOR_BYTES))
        f.done()
        return msg


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 3, aggregator -> each participant whose masked input arrived: who survived."""

    round_id: bytes
    survivors: tuple[str, ...]

    TYPE = "secagg.unmask_request"

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "type": self.TYPE, "round_id": self.round_id,
                "survivors": list(self.survivors)}

    @classmethod
    def from_wire(cls, raw: Any, peer: str | None = None) -> UnmaskRequest:
        f = Fields(raw, "secagg.UnmaskRequest", versions={VERSION}, peer=peer)
        _check_type(f, cls.TYPE)
        round_id = f.bytes("round_id", size=ROUND_ID_LEN)
        survivors = tuple(_peer_str(p, "secagg.UnmaskRequest") for p in f.list("survivors", max_len=MAX_PEERS))
        if len(set(survivors)) != len(survivors):
            f._fail("duplicate survivors")
        f.done()
        return cls(round_id, tuple(sorted(survivors)))


@dataclass(frozen=True)
class UnmaskShares:
    """Round 3 answer, participant -> aggregator: its shares of the self-mask seeds of the
    survivors and of the s keys of the neighbours that dropped out (never both for one peer)."""

    round_id: bytes
    self_mask_shares: tuple[tuple[str, bytes], ...]   # survivor -> share of its seed
    key_shares: tuple[tuple[str, bytes], ...]         # dropped peer -> share of its s key

    TYPE = "secagg.unmask"

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "type": self.TYPE, "round_id": self.round_id,
                "self_mask_shares": dict(self.self_mask_shares), "key_shares": dict(self.key_shares)}

    @classmethod
    def from_wire(cls, raw: Any, peer: str | None = None) -> UnmaskShares:
        f = Fields(raw, "secagg.UnmaskShares", versions={VERSION}, peer=peer)
        _check_type(f, cls.TYPE)
        msg = cls(f.bytes("round_id", size=ROUND_ID_LEN),
                  _peer_bytes_map(f.map("self_mask_shares", max_len=MAX_PEERS), "secagg.UnmaskShares", 128),
                  _peer_bytes_map(f.map("key_shares", max_len=MAX_PEERS), "secagg.UnmaskShares", 128))
        if set(dict(msg.self_mask_shares)) & set(dict(msg.key_shares)):
            f._fail("a peer appears in both self_mask_shares and key_shares")
        f.done()
        return msg


Message = AdvertiseKeys | KeyRoster | EncryptedShares | ShareBundle | MaskedInput | UnmaskRequest | UnmaskShares

_DECODERS: dict[str, Callable[..., Message]] = {
    cls.TYPE: cls.from_wire for cls in (AdvertiseKeys, KeyRoster, EncryptedShares, ShareBundle,
                                        MaskedInput, UnmaskRequest, UnmaskShares)
}


def decode_message(raw: Any, peer: str | None = None) -> Message:
    """Decode any secure-aggregation message by its "type"; RemoteProtocolError if unknown."""
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise RemoteProtocolError("secagg message: expected a map with a string 'type'", peer=peer)
    dec = _DECODERS.get(raw["type"])
    if dec is None:
        raise RemoteProtocolError(f"secagg message: unknown type {raw['type'][:40]!r}", peer=peer)
    return dec(raw, peer=peer)
