"""Wire rules shared by every role (DESIGN.md "Wire and storage formats").

- `pack` is the canonical msgpack encoding: map keys sorted, bin type for bytes, no ext types.
  Signatures and ids are always computed over `pack(...)` of the unsigned body.
- `unpack` decodes remote bytes with hard size limits and no ext types; it never builds
  anything but None/bool/int/float/str/bytes/list/dict, except msgpack's own timestamp type
  (ext -1, which msgpack decodes before any hook sees it) as a `msgpack.Timestamp`: every
  `Fields` getter refuses it as a wrong type, and `plain` refuses it in free-form values.
  Map keys are str or bytes; `Fields` refuses bytes keys (pack never writes them).
- `plain` checks that a free-form value (a map the decoder does not read field by field)
  could be sent again: str keys, finite floats, no timestamps; RemoteProtocolError if not.
- `Fields` is the small validating reader every per-message decoder is written with: wrong
  types, missing or unknown fields, oversize values and unknown versions raise
  RemoteProtocolError naming the message and the field.
- `digest` is BLAKE2b-256; `sign`/`verify` are Ed25519 (PyNaCl) over canonical bytes.
"""
from __future__ import annotations

import builtins
import hashlib
import math
from typing import Any, Iterable

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from fognode.node.errors import LocalProtocolError, RemoteProtocolError

MAX_MESSAGE = 4 * 1024 * 1024  # default bound for one decoded message
PUBKEY_LEN = 32
SIG_LEN = 64
DIGEST_LEN = 32


_ATOMS = frozenset((str, int, bytes, bool, type(None)))


def _canonical(obj: Any) -> Any:
    """`obj` with every map's keys sorted and tuples as lists; LocalProtocolError if it holds
    anything that cannot go on the wire. Exact built-in types take the fast paths below (a
    certificate-sized message: 11 -> 6.5 us); subclasses and errors go through `_canonical_any`,
    the same rules written with isinstance."""
    t = type(obj)
    if t in _ATOMS:
        return obj
    if t is dict:
        for k in obj:
            if type(k) is not str:
                return _canonical_any(obj)
        return {k: _canonical(obj[k]) for k in sorted(obj)}
    if t is list or t is tuple:
        return [_canonical(v) for v in obj]
    return _canonical_any(obj)


def _canonical_any(obj: Any) -> Any:
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, str):
                raise LocalProtocolError(f"wire map keys must be str, got {type(k).__name__}")
            items.append((k, _canonical(v)))
        items.sort(key=lambda kv: kv[0])
        return dict(items)
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise LocalProtocolError("wire floats must be finite")
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    raise LocalProtocolError(f"type {type(obj).__name__} cannot go on the wire")


def pack(obj: Any) -> bytes:
    """Canonical msgpack encoding (sorted keys, bin for bytes); raises LocalProtocolError."""
    return msgpack.packb(_canonical(obj), use_bin_type=True)


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def unpack(data: bytes, *, max_size: int = MAX_MESSAGE, what: str = "message") -> Any:
    """Decode remote msgpack bytes; RemoteProtocolError on anything malformed or oversize."""
    if len(data) > max_size:
        raise RemoteProtocolError(f"{what}: {len(data)} bytes is over the {max_size}-byte limit")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            ext_hook=_no_ext,
            use_list=True,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, UnicodeDecodeError) as e:
        raise RemoteProtocolError(f"{what}: not valid msgpack ({e})") from None
    except Exception as e:  # msgpack raises a few odd types on truncated input
        raise RemoteProtocolError(f"{what}: undecodable ({type(e).__name__}: {e})") from None


def plain(value: Any, what: str, *, peer: str | None = None) -> None:
    """RemoteProtocolError unless `value` has a canonical encoding (`pack` would take it):
    for free-form values that are hashed, signed or relayed as received."""
    try:
        _canonical(value)
    except LocalProtocolError as e:
        raise RemoteProtocolError(f"{what}: {e}", peer=peer) from None


def digest(data: bytes) -> bytes:
    """BLAKE2b-256 of `data` (ids of messages, models, records)."""
    return hashlib.blake2b(data, digest_size=DIGEST_LEN).digest()


def sign(key: SigningKey, body: Any) -> bytes:
    """Ed25519 signature over the canonical encoding of `body`."""
    return key.sign(pack(body)).signature


def verify(pubkey: bytes, body: Any, signature: bytes) -> bool:
    """True when `signature` is `pubkey`'s Ed25519 signature over pack(body)."""
    return verify_bytes(pubkey, pack(body), signature)


def verify_bytes(pubkey: bytes, data: bytes, signature: bytes) -> bool:
    """True when `signature` is `pubkey`'s Ed25519 signature over `data`."""
    if len(pubkey) != PUBKEY_LEN or len(signature) != SIG_LEN:
        return False
    try:
        VerifyKey(pubkey).verify(data, signature)
        return True
    except (BadSignatureError, ValueError):
        return False
    except Exception:  # nacl raises CryptoError for points off the curve
        return False


class Fields:
    """Validating reader over one decoded msgpack map.

    Usage in a decoder::

        f = Fields(raw, "ledger.Order", versions={1})
        sender = f.bytes("sender", size=32)
        amount = f.int("amount", lo=1, hi=2**63 - 1)
        f.done()   # rejects unknown fields
    """

    def __init__(self, raw: Any, what: builtins.str, *, versions: Iterable[builtins.int] | None = None,
                 peer: builtins.str | None = None) -> None:
        self.what = what
        self.peer = peer
        if not isinstance(raw, dict):
            self._fail(f"expected a map, got {type(raw).__name__}")
        if not all(type(k) is builtins.str for k in raw):
            self._fail("map keys must be strings")
        self.raw: dict[str, Any] = raw
        self._seen: set[str] = set()
        if versions is not None:
            v = self.int("v", lo=0, hi=2**16)
            if v not in set(versions):
                self._fail(f"unknown version {v}")
            self.version = v

    def _fail(self, msg: builtins.str) -> None:
        raise RemoteProtocolError(f"{self.what}: {msg}", peer=self.peer)

    def _get(self, key: builtins.str, optional: builtins.bool) -> Any:
        self._seen.add(key)
        if key not in self.raw:
            if optional:
                return None
            self._fail(f"missing field {key!r}")
        return self.raw[key]

    def has(self, key: builtins.str) -> builtins.bool:
        return key in self.raw

    def int(self, key: builtins.str, *, lo: builtins.int | None = None, hi: builtins.int | None = None,
            optional: builtins.bool = False, default: builtins.int | None = None) -> builtins.int:
        v = self._get(key, optional)
        if v is None and optional:
            return default  # type: ignore[return-value]
        if not isinstance(v, int) or isinstance(v, bool):
            self._fail(f"field {key!r} must be an integer, got {type(v).__name__}")
        if lo is not None and v < lo:
            self._fail(f"field {key!r} = {v} is below {lo}")
        if hi is not None and v > hi:
            self._fail(f"field {key!r} = {v} is above {hi}")
        return v

    def float(self, key: builtins.str, *, lo: builtins.float | None = None, hi: builtins.float | None = None,
              optional: builtins.bool = False, default: builtins.float | None = None) -> builtins.float:
        v = self._get(key, optional)
        if v is None and optional:
            return default  # type: ignore[return-value]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self._fail(f"field {key!r} must be a number, got {type(v).__name__}")
        v = float(v)
        if not math.isfinite(v):
            self._fail(f"field {key!r} must be finite")
        if lo is not None and v < lo:
            self._fail(f"field {key!r} = {v} is below {lo}")
        if hi is not None and v > hi:
            self._fail(f"field {key!r} = {v} is above {hi}")
        return v

    def bool(self, key: builtins.str, *, optional: builtins.bool = False, default: builtins.bool | None = None) -> builtins.bool:
        v = self._get(key, optional)
        if v is None and optional:
            return default  # type: ignore[return-value]
        if not isinstance(v, bool):
            self._fail(f"field {key!r} must be a boolean, got {type(v).__name__}")
        return v

    def str(self, key: builtins.str, *, max_len: builtins.int = 256, optional: builtins.bool = False,
            default: builtins.str | None = None) -> builtins.str:
        v = self._get(key, optional)
        if v is None and optional:
            return default  # type: ignore[return-value]
        if not isinstance(v, str):
            self._fail(f"field {key!r} must be a string, got {type(v).__name__}")
        if len(v) > max_len:
            self._fail(f"field {key!r} is {len(v)} characters, over the limit of {max_len}")
        return v

    def bytes(self, key: builtins.str, *, size: builtins.int | None = None, max_len: builtins.int = 1024,
              optional: builtins.bool = False, default: builtins.bytes | None = None) -> builtins.bytes:
        v = self._get(key, optional)
        if v is None and optional:
            return default  # type: ignore[return-value]
        if not isinstance(v, bytes):
            self._fail(f"field {key!r} must be bytes, got {type(v).__name__}")
        if size is not None and len(v) != size:
            self._fail(f"field {key!r} must be {size} bytes, got {len(v)}")
        if len(v) > max_len and size is None:
            self._fail(f"field {key!r} is {len(v)} bytes, over the limit of {max_len}")
        return v

    def list(self, key: builtins.str, *, max_len: builtins.int = 1024, optional: builtins.bool = False) -> list[Any]:
        v = self._get(key, optional)
        if v is None and optional:
            return []
        if not isinstance(v, list):
            self._fail(f"field {key!r} must be a list, got {type(v).__name__}")
        if len(v) > max_len:
            self._fail(f"field {key!r} has {len(v)} items, over the limit of {max_len}")
        return v

    def map(self, key: builtins.str, *, max_len: builtins.int = 1024, optional: builtins.bool = False) -> dict[builtins.str, Any]:
        v = self._get(key, optional)
        if v is None and optional:
            return {}
        if not isinstance(v, dict):
            self._fail(f"field {key!r} must be a map, got {type(v).__name__}")
        if len(v) > max_len:
            self._fail(f"field {key!r} has {len(v)} entries, over the limit of {max_len}")
        return v

    def sub(self, key: builtins.str, what: builtins.str | None = None) -> "Fields":
        """A reader for a nested map field."""
        return Fields(self.map(key), what or f"{self.what}.{key}", peer=self.peer)

    def done(self) -> None:
        """Reject fields the decoder did not read (unknown fields)."""
        extra = set(self.raw) - self._seen
        if extra:
            self._fail(f"unknown field(s) {sorted(extra)}")
