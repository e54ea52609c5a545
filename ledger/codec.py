"""`unpack` for the ledger: node.wire.unpack, or the same rules applied here while
node.wire.unpack cannot decode anything.

node/wire.py (seed version) passes `max_buffer_size` to `msgpack.unpackb`, which msgpack 1.x
does not accept, so every call raises. Until that is fixed in node/wire.py, this module applies
the same rules (size limit before decoding, no ext types, str map keys, bytes stay bytes) with
the arguments `unpackb` does take. It probes once at import and uses node.wire.unpack as soon
as that works.
"""
from __future__ import annotations

from typing import Any

import msgpack

from fognode.node import wire
from fognode.node.errors import RemoteProtocolError


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def _local_unpack(data: bytes, *, max_size: int = wire.MAX_MESSAGE, what: str = "message") -> Any:
    if len(data) > max_size:
        raise RemoteProtocolError(f"{what}: {len(data)} bytes is over the {max_size}-byte limit")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext, use_list=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, UnicodeDecodeError) as e:
        raise RemoteProtocolError(f"{what}: not valid msgpack ({e})") from None
    except Exception as e:
        raise RemoteProtocolError(f"{what}: undecodable ({type(e).__name__}: {e})") from None


def _wire_works() -> bool:
    try:
        return bool(wire.unpack(wire.pack({"ok": True}))["ok"])
    except RemoteProtocolError:
        return False


unpack = wire.unpack if _wire_works() else _local_unpack
