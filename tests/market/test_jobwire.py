"""The job stream's messages (jobwire.py): one validating decoder, signed payee statements,
task costs."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import digest, pack, unpack
from fognode.protocols.market.jobwire import (CHUNK, Blob, Payee, Result, Simple, Task,
                                              decode_job, sign_payee, simple, task_cost)
from tests.market.helpers import key

H = digest(b"module")


def wire(obj: dict[str, Any]) -> Any:
    return unpack(pack(obj))


@given(index=st.integers(0, 10_000_000), args=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8),
       fuel=st.integers(1, 2**62), with_input=st.booleans())
def test_task_round_trips(index: int, args: list[int], fuel: int, with_input: bool) -> None:
    t = Task(index, H, "work", tuple(args), digest(b"in") if with_input else None, fuel, 65536)
    assert decode_job(wire(t.wire())) == t


def test_result_payee_and_simple_messages_round_trip() -> None:
    r = Result(3, "ok", "", b"out", digest(b"out"), (1, -2), 1234)
    assert decode_job(wire(r.wire())) == r
    k = key("provider")
    p = sign_payee(k, digest(b"agreement"), bytes(32))
    got = decode_job(wire(p.wire()))
    assert isinstance(got, Payee) and got.signed_by(bytes(k.verify_key))
    assert not got.signed_by(bytes(key("other").verify_key))
    assert decode_job(wire(simple("note", due=5, sig=bytes(64)))) == Simple("note", due=5, sig=bytes(64))
    assert decode_job(wire(simple("end"))) == Simple("end")


@pytest.mark.parametrize("msg, field", [
    ({"t": "task", "index": 0, "module": b"short", "export": "w", "args": [], "input": None,
      "fuel": 1, "memory": 65536}, "module"),
    ({"t": "task", "index": 0, "module": H, "export": "w", "args": ["1"], "input": None,
      "fuel": 1, "memory": 65536}, "args"),
    ({"t": "task", "index": 0, "module": H, "export": "w", "args": [], "input": None,
      "fuel": 0, "memory": 65536}, "fuel"),
    ({"t": "blob", "hash": H, "offset": 10, "total": 12, "data": b"abc"}, "past its total"),
    ({"t": "blob", "hash": H, "offset": 0, "total": 2 * CHUNK, "data": b"a" * (CHUNK + 1)}, "data"),
    ({"t": "note", "due": 0, "sig": bytes(64)}, "due"),
    ({"t": "end", "extra": 1}, "extra"),
    ({"t": "eval", "code": "__import__('os')"}, "unknown type"),
])
def test_bad_messages_are_refused_naming_the_field(msg: dict[str, Any], field: str) -> None:
    with pytest.raises(RemoteProtocolError) as e:
        decode_job(wire({"v": 1, **msg}), peer="peer")
    assert field in str(e.value)


def test_a_blob_over_the_limit_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_job(wire(simple("blob", hash=H, offset=0, total=2048, data=b"x")), max_blob=1024)
    assert decode_job(wire(simple("blob", hash=H, offset=0, total=1, data=b"x"))) == Blob(H, 0, 1, b"x")


def test_task_cost_rounds_up() -> None:
    assert task_cost(0, 500_000) == 0
    assert task_cost(1, 500_000) == 1
    assert task_cost(2_000_000, 500_000) == 1_000_000
    assert task_cost(1_300_007, 500_000) == 650_004
