"""The control socket's result encoder (orjson, with the stdlib's answer wherever they differ)
and its write path: replies written straight to the socket, lines of one chunk answered with a
checkpoint between them."""
from __future__ import annotations

import dataclasses
import enum
import json
import math
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from fognode.node.rpc.jsonrpc import ENCODER, encode_json, plain_and_finite
from fognode.node.rpc.methods import MethodTable, rpc_method
from fognode.node.rpc.server import RpcServer


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Name(str):
    pass


@dataclasses.dataclass(frozen=True)
class Box:
    value: Any
    blob: bytes = b"\x00\xff"


def stdlib(value: Any) -> tuple[str, Any]:
    try:
        return "ok", json.loads(ENCODER.encode(value))
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return "error", type(e)


def ours(value: Any) -> tuple[str, Any]:
    try:
        text = encode_json(value)
    except Exception as e:  # noqa: BLE001
        return "error", type(e)
    return "ok", json.loads(text)


def same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    # json.loads gives nan for a NaN only if one was written, which neither may do: plain ==
    return a == b


scalars = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
           | st.binary(max_size=4) | st.sampled_from([Color.RED, Level.HIGH, Name("n"), PurePosixPath("/p")]))
values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=4) | st.tuples(inner, inner)
                   | st.dictionaries(st.text(max_size=4) | st.integers(-3, 3), inner, max_size=4)
                   | st.builds(Box, inner) | st.frozensets(st.integers(0, 9), max_size=3)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_the_encoder_says_what_the_stdlib_says(value: Any) -> None:
    """Same JSON value out, or the same kind of refusal (NaN, Infinity: ValueError)."""
    assert same(ours(value), stdlib(value))


@pytest.mark.parametrize("value", [
    {"a": None, "b": math.nan},                   # orjson alone would write null for both
    [None, {"x": [1, -math.inf]}],
    {"n": None, "box": Box(math.inf)},            # a NaN inside a dataclass, next to a null
    (None, math.nan),
])
def test_nan_and_infinity_are_refused_even_next_to_a_null(value: Any) -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        encode_json(value)


def test_what_orjson_refuses_is_encoded_as_the_stdlib_does() -> None:
    assert encode_json({"big": 2 ** 70, "neg": -(2 ** 64)}) == '{"big":1180591620717411303424,"neg":-18446744073709551616}'
    assert encode_json({1: "a", None: "b"}) == '{"1":"a","null":"b"}'
    assert encode_json({"e": Color.RED, "s": {3, 1}, "b": b"\x01", "p": PurePosixPath("/x")}) == \
        '{"e":"red","s":[1,3],"b":"01","p":"/x"}'
    assert encode_json("h\u00e9") == '"h\u00e9"'      # not escaped (ensure_ascii off, as before)
    with pytest.raises(TypeError, match="object is not JSON-serialisable"):
        encode_json({"x": object()})


def test_plain_and_finite() -> None:
    assert plain_and_finite({"a": [1, 2.5, None, "x", True, (0.0,)]})
    assert not plain_and_finite({"a": [1, {"b": math.nan}]})
    assert not plain_and_finite(math.inf)
    assert not plain_and_finite({"a": Box(1)})      # not a plain type: the stdlib decides


class Ticks:
    """Counts how often a background task got to run; inline handlers record what they saw."""

    def __init__(self) -> None:
        self.ticks = 0
        self.seen: list[int] = []

    @rpc_method("demo.seen")
    async def seen_now(self) -> int:
        """Record the tick count (an inline handler: no await)."""
        self.seen.append(self.ticks)
        return len(self.seen)


async def test_lines_of_one_chunk_are_answered_in_order_yielding_between_them(nursery: trio.Nursery) -> None:
    d = Path(tempfile.mkdtemp(dir="/tmp", prefix="fnrpce-"))
    try:
        table = MethodTable()
        demo = Ticks()
        table.add_object(demo, "demo")
        srv = RpcServer(table, d / "s.sock", CollectorRegistry())
        assert table.get("demo.seen").inline    # type: ignore[union-attr]
        await nursery.start(srv.serve)

        async def ticker() -> None:
            while True:
                demo.ticks += 1
                await trio.lowlevel.checkpoint()

        nursery.start_soon(ticker)
        n = 200
        stream = await trio.open_unix_socket(str(d / "s.sock"))
        async with stream:
            lines = b"".join(json.dumps({"jsonrpc": "2.0", "method": "demo.seen", "id": i}).encode() + b"\n"
                             for i in range(n))
            await stream.send_all(lines)
            buf = b""
            with trio.fail_after(60):
                while buf.count(b"\n") < n:
                    data = await stream.receive_some(65536)
                    assert data, "server closed the connection"
                    buf += data
        replies = [json.loads(x) for x in buf.splitlines()]
        assert [r["id"] for r in replies] == list(range(n))
        assert [r["result"] for r in replies] == list(range(1, n + 1))
        # the background task ran between the lines of one chunk: the ticks seen keep growing
        # (without a checkpoint per line, a whole chunk would be answered at one tick)
        assert len(set(demo.seen)) > n // 2
    finally:
        shutil.rmtree(d, ignore_errors=True)
