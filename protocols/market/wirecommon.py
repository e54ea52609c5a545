"""Shared pieces of the market's wire formats: limits, units, the signed-map decode step.

Every market message is a versioned msgpack map ``{"v": 1, "t": <type>, ..., "sig": <64>}``
signed (Ed25519) by the party it names over `pack` of the map without ``sig``
(fognode.node.wire). `open_signed` unpacks remote bytes with a size bound, checks the type tag
and the version, and hands back a `Fields` reader; `check_signed` verifies the signature and
that the decoded object re-encodes to exactly the signed map (canonical form).
"""
from __future__ import annotations

import re
from typing import Any

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields, pack, unpack, verify
from fognode.protocols.market.errors import Rejected, RejectReason

VERSION = 1
U63 = 2**63 - 1
MAX_TIME = 2**40              # unix seconds (year 36812): keeps times exact in float64
MAX_PRICE = 10**15            # micro-units per unit
MAX_QUANTITY = 10**12         # units of one kind in a demand's usage estimate
MAX_ID = 64
MAX_REGION = 64
MAX_REPLICATION = 16
SERVICES = ("compute.wasm", "storage", "fog.hosting")
# Priced units: "fuel" per million wasmtime fuel, "cpu_s" per CPU-second, "gb_h" per GB-hour.
UNITS = ("fuel", "cpu_s", "gb_h")
_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")   # linear: one character class, no nesting


def valid_id(s: str) -> bool:
    return bool(_ID_RE.match(s))


def open_signed(data: bytes, what: str, tag: str, max_size: int,
                peer: str | None) -> tuple[dict[str, Any], Fields]:
    """Unpack `data` as a map of type `tag`; Rejected(OVERSIZE | MALFORMED) otherwise."""
    if len(data) > max_size:
        raise Rejected(RejectReason.OVERSIZE, f"{what} is {len(data)} bytes, over {max_size}",
                       peer=peer)
    try:
        raw = unpack(data, max_size=max_size, what=what)
        f = Fields(raw, what, versions={VERSION}, peer=peer)
        t = f.str("t", max_len=32)
        if t != tag:
            f._fail(f"type {t!r} is not {tag!r}")
    except RemoteProtocolError as e:
        raise Rejected(RejectReason.MALFORMED, str(e), peer=peer) from None
    return raw, f


def malformed(fn: Any, *args: Any, peer: str | None = None, **kw: Any) -> Any:
    """Run a field-reading step, turning RemoteProtocolError into Rejected(MALFORMED)."""
    try:
        return fn(*args, **kw)
    except Rejected:
        raise
    except RemoteProtocolError as e:
        raise Rejected(RejectReason.MALFORMED, str(e), peer=peer) from None


def check_signed(what: str, raw: dict[str, Any], body: dict[str, Any], signer: bytes,
                 sig: bytes, peer: str | None) -> None:
    """Rejected unless `sig` is `signer`'s over the received map minus sig, and the decoded
    object's `body` re-encodes to that same map."""
    signed = {k: v for k, v in raw.items() if k != "sig"}
    if not verify(signer, signed, sig):
        raise Rejected(RejectReason.BAD_SIGNATURE, f"{what} is not signed by the key it names",
                       peer=peer)
    if pack(body) != pack(signed):
        raise Rejected(RejectReason.MALFORMED, f"{what} is not in canonical form", peer=peer)


def read_units(f: Fields, key: str, hi: int, *, allow_empty: bool) -> dict[str, int]:
    """A map from unit names (UNITS) to integers in [0, hi]."""
    m = f.map(key, max_len=len(UNITS))
    for k, v in m.items():
        if k not in UNITS:
            f._fail(f"field {key!r}: unknown unit {k[:32]!r} (units: {', '.join(UNITS)})")
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
            f._fail(f"field {key!r}: {k} must be an integer in [0, {hi}]")
    if not m and not allow_empty:
        f._fail(f"field {key!r} names no unit")
    return dict(sorted(m.items()))


def read_service(f: Fields) -> str:
    s = f.str("service", max_len=32)
    if s not in SERVICES:
        f._fail(f"field 'service': unknown service {s!r} (services: {', '.join(SERVICES)})")
    return s


def read_id(f: Fields, key: str) -> str:
    s = f.str(key, max_len=MAX_ID)
    if not valid_id(s):
        f._fail(f"field {key!r} must be 1-{MAX_ID} characters of A-Z a-z 0-9 . _ : -")
    return s
