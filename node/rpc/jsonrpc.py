"""JSON-RPC 2.0 on the control socket, as text: encoding results (`encode_json`), decoding
requests (`DECODER`: NaN and Infinity refused), checking a request object's shape
(`request_problem`), error reply lines (`error_line`), and the error a call to a role that is
down or disabled gets (`role_down_error`).

Results are encoded by orjson (a `node.info` reply in about 1.2 us instead of 12 us with the
stdlib), with the stdlib's answer wherever the two would differ, so what a client receives and
what is refused are as before:
- NaN and Infinity: orjson writes them as `null`. When its output contains `null`, the result
  must be plain JSON types with finite floats (`plain_and_finite`), else the stdlib encodes it
  (and refuses NaN with ValueError, as it always did);
- integers over 64 bits, non-string keys, float subclasses, strings that are not valid UTF-8
  (lone surrogates), anything `json_default` refuses: orjson raises, the stdlib encodes it
  (or raises its own error);
- dataclasses, datetimes and subclasses of builtin types go to `json_default` for both;
- an `EncodedJSON` (a dict carrying its JSON text) is embedded as that text (the stdlib encodes
  the dict: the same JSON).
Floats print as the shortest text that reads back the same number in both (orjson may write
`1e-7` where the stdlib writes `1e-07`: the same value). Requests are decoded by the stdlib:
orjson reads integers over 64 bits as floats."""
from __future__ import annotations

import dataclasses
import enum
import json
import time
from pathlib import PurePath
from typing import Any

import orjson

from fognode.node.errors import RpcError
from fognode.node.rpc.methods import NODE_ROLE_UNAVAILABLE, RoleDown

REQUEST_KEYS = frozenset({"jsonrpc", "method", "params", "id"})


def json_default(obj: Any) -> Any:
    """`json.dumps` default for results: bytes -> hex, dataclasses -> dicts, enums -> values,
    paths -> str, sets -> sorted lists. Anything else raises TypeError (an internal error)."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


ENCODER = json.JSONEncoder(default=json_default, allow_nan=False, ensure_ascii=False,
                            separators=(",", ":"))


class EncodedJSON(dict[str, Any]):
    """A dict that carries its own JSON text (`json`: what `encode_json` made of the same
    content, so checked), for a part of a result that is asked for often and seldom changes
    (node.info's role health: roles.Supervisor.health_encoded). `encode_json` embeds that text
    instead of encoding the dict again; to everyone else it is a plain dict. Never mutate one."""

    __slots__ = ("json",)

    def __init__(self, content: dict[str, Any], json: bytes) -> None:
        super().__init__(content)
        self.json = json


def _orjson_default(obj: Any) -> Any:
    if type(obj) is EncodedJSON:
        return orjson.Fragment(obj.json)
    return json_default(obj)


# what orjson hands to json_default as the stdlib would (it serializes them natively otherwise);
# subclasses of dict, EncodedJSON among them, included
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS


def encode_json(value: Any) -> str:
    """Compact JSON with `json_default`; NaN/Infinity are refused (ValueError): not JSON.
    The text is what the stdlib encoder accepts and means (module docstring)."""
    try:
        out = orjson.dumps(value, default=_orjson_default, option=_ORJSON_OPTIONS)
    except TypeError:   # orjson.JSONEncodeError: see the module docstring
        return ENCODER.encode(value)
    if b"null" in out and not plain_and_finite(value):
        return ENCODER.encode(value)    # maybe a NaN written as null: the stdlib decides
    return out.decode()


def plain_and_finite(value: Any) -> bool:
    """True if `value` is made only of dicts, lists, tuples, str, int, bool, None, finite
    floats and EncodedJSON (checked when it was made); False for a NaN or an infinity anywhere,
    or any other type (not checked here)."""
    t = type(value)
    if t is EncodedJSON:
        return True
    if t is dict:
        items = value.values()
    elif t is list or t is tuple:
        items = value
    elif t is float:
        return value - value == 0.0     # inf - inf and nan - nan are nan
    else:
        return t is str or t is int or t is bool or value is None
    for v in items:
        t = type(v)
        if t is str or t is int or v is None or t is bool or t is EncodedJSON:
            continue
        if t is float:
            if v - v != 0.0:
                return False
        elif not plain_and_finite(v):
            return False
    return True


def encode_id(id_: Any) -> str:
    """A request id as JSON (the usual int id without the encoder's per-call set-up)."""
    if type(id_) is int:
        return str(id_)
    return encode_json(id_)


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


DECODER = json.JSONDecoder(parse_constant=reject_constant)


def error_line(id_: Any, code: int, message: str, data: Any = None) -> str:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    try:
        body = encode_json(err)
    except (TypeError, ValueError):  # a handler's RpcError carried unencodable data
        body = encode_json({"code": code, "message": message})
    return f'{{"jsonrpc":"2.0","id":{encode_id(id_)},"error":{body}}}'


def valid_id(v: Any) -> bool:
    return v is None or isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool))


def request_problem(msg: Any) -> str | None:
    """What is wrong with one decoded request object, or None if it is well-formed."""
    if not isinstance(msg, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(msg), "a number")
        return f"a request must be a JSON object, got {kind}"
    if msg.get("jsonrpc") != "2.0":
        return "'jsonrpc' must be \"2.0\"" if "jsonrpc" in msg else "missing member 'jsonrpc' (must be \"2.0\")"
    if "method" not in msg:
        return "missing member 'method'"
    if not isinstance(msg["method"], str):
        return "'method' must be a string"
    if "params" in msg and not isinstance(msg["params"], (list, dict)):
        return "'params' must be an array or an object"
    if "id" in msg and not valid_id(msg["id"]):
        return "'id' must be a string, a number or null"
    if msg.keys() <= REQUEST_KEYS:
        return None
    extra = sorted(set(msg) - REQUEST_KEYS)
    if extra:
        return f"unknown member(s) {extra}: a request has only jsonrpc, method, params and id"
    return None


def utc_text(t: float) -> str:
    """A Unix time as `2026-12-04 10:31:02 UTC`."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def role_down_error(method: str, owner: str, down: RoleDown | None) -> RpcError:
    """NODE_ROLE_UNAVAILABLE for a call to `method` of role `owner`, which is down: why and since
    when (data: role, reason, since as Unix time)."""
    if down is None:
        return RpcError(NODE_ROLE_UNAVAILABLE, f"{method} is unavailable: role {owner} is not running "
                                               f"(see `node info` for its health)", {"role": owner})
    if down.disabled:
        return RpcError(NODE_ROLE_UNAVAILABLE, f"{method} is unavailable: role {owner} is disabled on this node: "
                                               f"{down.reason}", {"role": owner, "reason": down.reason,
                                                                  "disabled": True})
    return RpcError(NODE_ROLE_UNAVAILABLE,
                    f"{method} is unavailable: role {owner} is down since {utc_text(down.since)}: {down.reason}",
                    {"role": owner, "reason": down.reason, "since": down.since})
