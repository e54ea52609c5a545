"""RPC parameter types: the JSON schema of a handler's type hint (`schema_of`), and the check
that converts a JSON value (or the CLI's text) to that type or raises an RpcError naming the
parameter (`check_param`). `FilePath` is the type of a path on the daemon's machine."""
from __future__ import annotations

import math
import os
import re
import types
import typing
from typing import Any, Literal, get_args, get_origin

from fognode.node.errors import RpcError

INVALID_PARAMS = -32602       # JSON-RPC's code (methods.py re-exports it)


class FilePath(str):
    """A param type: a path on the daemon's machine, absolute (the daemon's working directory
    means nothing to its caller). Its schema is a string with `"format": "path"`, by which
    fognode-cli resolves a relative path against its own working directory before sending."""


def schema_of(tp: Any) -> dict[str, Any]:
    origin = get_origin(tp)
    if tp is Any:
        return {}
    if tp is FilePath:
        return {"type": "string", "format": "path"}
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is type(None):
        return {"type": "null"}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin in (list, tuple):
        args = get_args(tp)
        return {"type": "array", **({"items": schema_of(args[0])} if args else {})}
    if origin is dict or tp is dict:
        args = get_args(tp)
        return {"type": "object", **({"additionalProperties": schema_of(args[1])} if args else {})}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [schema_of(a) for a in get_args(tp)]}
    raise TypeError(f"RPC parameter type {tp!r} is not supported")


def check_param(method: str, pname: str, tp: Any, v: Any, *, nested: bool = False) -> Any:
    """`v` converted to `tp`, or RpcError naming `pname`. Inside a list or an object
    (`nested`), a JSON integer where a float is declared stays an int (`{"f": 1}` reaches the
    method as 1, not 1.0, so a strategy that wants a count gets one); a float param of its own
    gets a float."""
    bad = RpcError(INVALID_PARAMS, f"{method}: param {pname!r} must be {type_name(tp)}, got {json_type(v)} {short_repr(v)}")
    origin = get_origin(tp)
    if tp is Any:
        return v
    if tp is FilePath:
        if not isinstance(v, str) or not v:
            raise bad
        if not os.path.isabs(v):
            raise RpcError(INVALID_PARAMS, f"{method}: param {pname!r} must be an absolute path (fognode-cli "
                                           f"resolves a relative one against its working directory), got {short_repr(v)}")
        return FilePath(v)
    if tp is str:
        if isinstance(v, str):
            return v
        # The CLI sends everything as text; numbers for string params are fine too.
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)
        raise bad
    if tp is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "1", "0"):
            return v.lower() in ("true", "yes", "1")
        raise bad
    if tp is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, str) and re.fullmatch(r"[+-]?[0-9]+", v.strip()):
            try:
                return int(v)
            except ValueError:  # over Python's int-from-text digit limit
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(v, int) and not isinstance(v, bool) and nested:
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str):
            try:
                f = float(v)
            except ValueError:
                raise bad from None
            if not math.isfinite(f):
                raise bad
            return f
        raise bad
    if tp is type(None):
        if v is None:
            return v
        raise bad
    if origin is Literal:
        for choice in get_args(tp):
            if type(v) is type(choice) and v == choice:
                return choice
            # The CLI sends text: "3" selects the choice 3, "true" the choice True.
            if isinstance(v, str) and not isinstance(choice, str) and v == json_text(choice):
                return choice
        raise RpcError(INVALID_PARAMS, f"{method}: param {pname!r} must be one of {list(get_args(tp))}, got {short_repr(v)}")
    if origin in (list, tuple):
        if isinstance(v, str):  # CLI: comma-separated list
            v = [x for x in v.split(",") if x]
        if not isinstance(v, list):
            raise bad
        args = get_args(tp)
        return [check_param(method, f"{pname}[{i}]", args[0], x, nested=True) for i, x in enumerate(v)] if args else v
    if origin is dict or tp is dict:
        if not isinstance(v, dict):
            raise bad
        args = get_args(tp)
        return {k: check_param(method, f"{pname}.{k}", args[1], x, nested=True) for k, x in v.items()} if args else v
    if origin in (typing.Union, types.UnionType):
        arms = get_args(tp)
        if v is None and type(None) in arms:
            return None
        real = [a for a in arms if a is not type(None)]
        if len(real) == 1:  # `X | None` with a value: X's own, more precise, error
            return check_param(method, pname, real[0], v, nested=nested)
        for a in real:
            try:
                return check_param(method, pname, a, v, nested=nested)
            except RpcError:
                continue
        raise bad
    raise bad


TYPE_NAMES = {"string": "a string", "integer": "an integer", "number": "a number",
           "boolean": "a boolean", "array": "a list", "object": "an object", "null": "null"}


def type_name(tp: Any) -> str:
    if tp is Any:
        return "any value"
    if tp is FilePath:
        return "a path"
    origin = get_origin(tp)
    if origin is Literal:
        return f"one of {list(get_args(tp))}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp))
    s = schema_of(tp)
    return TYPE_NAMES.get(s.get("type", ""), str(s))


def json_text(v: Any) -> str:
    """How a JSON scalar is written on a command line: true/false/null, numbers, text as is."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def short_repr(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."
