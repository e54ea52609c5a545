"""Strict query strings: every parameter known, given once, well formed; else a BadQuery
naming the parameter (the dashboard answers 400 with that sentence)."""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

MAX_PARAMS_TEXT = 4096


class BadQuery(Exception):
    """A query string the dashboard refuses; the message names the parameter (browser's fault)."""

    def __init__(self, param: str, why: str) -> None:
        super().__init__(f"query parameter {param!r}: {why}")
        self.param = param


def parse_query(query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """The parameters of `query` (raw text after `?`), each at most once and in `allowed`."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query),
                          encoding="utf-8", errors="strict", max_num_fields=len(allowed) + 1)
    except UnicodeDecodeError:
        raise BadQuery(query.split("=", 1)[0][:40], "is not UTF-8") from None
    except ValueError as e:
        raise BadQuery(query.split("&", 1)[0].split("=", 1)[0][:40] or query[:40],
                       f"malformed ({e})") from None
    out: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            want = ", ".join(allowed) if allowed else "none"
            raise BadQuery(name[:40], f"unknown (this path takes: {want})")
        if name in out:
            raise BadQuery(name, "given twice")
        out[name] = value
    return out


def json_params(text: str | None) -> Any:
    """The `params` parameter: absent/empty (no params), or a JSON array or object."""
    if not text:
        return None
    if len(text) > MAX_PARAMS_TEXT:
        raise BadQuery("params", f"over {MAX_PARAMS_TEXT} characters")
    try:
        value = json.loads(text)
    except ValueError as e:
        raise BadQuery("params", f"is not valid JSON ({e})") from None
    if not isinstance(value, (list, dict)):
        raise BadQuery("params", "must be a JSON array or object")
    return value
