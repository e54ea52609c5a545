"""Hostile clients on the control socket: each is answered or dropped, and a well-behaved client
on another connection keeps getting answers the whole time."""
from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from fognode.node.rpc.methods import MethodTable, rpc_method
from fognode.node.rpc.server import RpcServer

IDLE = 0.5


class Demo:
    @rpc_method("demo.add")
    async def add(self, a: int, b: int = 0) -> int:
        """Add A and B."""
        return a + b

    @rpc_method("demo.big")
    async def big(self, n: int) -> str:
        """Return N bytes of text."""
        return "x" * n

    @rpc_method("demo.pick")
    async def pick(self, items: list[int], mode: str = "a") -> list[int]:
        """Return ITEMS."""
        return items


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self) -> bytes | None:
        while b"\n" not in self.buf:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:  # reset by the server: as good as EOF
                return None
            if not data:
                return None
            self.buf += data
        i = self.buf.index(b"\n")
        out = bytes(self.buf[:i])
        del self.buf[:i + 1]
        return out

    async def recv(self) -> Any:
        line = await self.line()
        assert line is not None, "server closed the connection"
        return json.loads(line)


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[tuple[RpcServer, Path]]:
    d = tempfile.mkdtemp(dir="/tmp", prefix="fnfuzz-")
    table = MethodTable()
    table.add_object(Demo(), "demo")
    srv = RpcServer(table, Path(d) / "fognode.sock", CollectorRegistry(), idle_timeout=IDLE)
    await nursery.start(srv.serve)
    yield srv, Path(d) / "fognode.sock"
    shutil.rmtree(d, ignore_errors=True)


async def connect(path: Path, opened: list[trio.SocketStream]) -> Client:
    stream = await trio.open_unix_socket(str(path))
    opened.append(stream)
    return Client(stream)


def garbage_lines(rng: random.Random) -> list[bytes]:
    """Random bytes, invalid UTF-8, truncated JSON, wrong types, deep nesting: one line each."""
    valid = json.dumps({"jsonrpc": "2.0", "method": "demo.add", "params": [1, 2], "id": 1}).encode()
    lines = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))).replace(b"\n", b"")
             for _ in range(150)]
    lines += [valid[:k] for k in range(1, len(valid))]                     # truncated
    lines += [b"\xff\xfe{}", b'{"jsonrpc":"2.0","method":"\xc3\x28","id":1}', b"\xed\xa0\x80"]
    lines += [b"[" * 50000, b'{"a":' * 50000, b"1e999999", b"-", b'"\\ud800"', b"null", b"[1]"]
    wrong = [
        {"jsonrpc": "2.0", "method": "demo.add", "params": ["x", []], "id": 2},
        {"jsonrpc": "2.0", "method": "demo.add", "params": {"a": None}, "id": 3},
        {"jsonrpc": "2.0", "method": "demo.pick", "params": [[1, "y"]], "id": 4},
        {"jsonrpc": "2.0", "method": "demo.pick", "params": [5, 6, 7], "id": 5},
        {"jsonrpc": 2.0, "method": "demo.add", "id": 6},
        {"jsonrpc": "2.0", "method": ["demo.add"], "id": 7},
        {"jsonrpc": "2.0", "method": "demo.add", "id": True},
        {"jsonrpc": "2.0", "method": "", "id": 8},
        [1, 2, 3],
        [{"jsonrpc": "2.0"}] * 100,
    ]
    lines += [json.dumps(w).encode() for w in wrong]
    return [ln for ln in lines if ln.strip()]


async def test_hostile_clients_do_not_disturb_a_good_one(server: tuple[RpcServer, Path]) -> None:
    srv, path = server
    opened: list[trio.SocketStream] = []
    done = trio.Event()
    good_latencies: list[float] = []
    outcomes: dict[str, str] = {}

    async def good() -> None:
        c = await connect(path, opened)
        i = 0
        while not done.is_set():
            t0 = trio.current_time()
            with trio.fail_after(5):
                await c.send(json.dumps({"jsonrpc": "2.0", "method": "demo.add", "params": [i, 1],
                                         "id": i}).encode() + b"\n")
                assert await c.recv() == {"jsonrpc": "2.0", "id": i, "result": i + 1}
            good_latencies.append(trio.current_time() - t0)
            i += 1
            await trio.sleep(0.005)  # pace: a steady client, not a CPU hog

    async def garbage() -> None:
        c = await connect(path, opened)
        lines = garbage_lines(random.Random(1234))
        for ln in lines:
            await c.send(ln + b"\n")
        codes = []
        for _ in lines:
            r = await c.recv()
            first = r if isinstance(r, dict) else r[0]  # batches: an array of errors
            assert "error" in first, r
            codes.append(first["error"]["code"])
        assert set(codes) <= {-32700, -32600, -32602, -32601}, set(codes)
        assert codes.count(-32700) > 150
        # still connected and served after all that
        await c.send(b'{"jsonrpc":"2.0","method":"demo.add","params":[40,2],"id":"ok"}\n')
        assert (await c.recv())["result"] == 42
        outcomes["garbage"] = f"{len(lines)} answered"

    async def huge() -> None:
        c = await connect(path, opened)
        try:
            await c.send(b'{"jsonrpc":"2.0","method":"demo.big","params":["' + b"9" * (2 << 20) + b'"]}\n')
        except trio.BrokenResourceError:
            pass  # the server may hang up before taking all 2 MiB
        r = await c.recv()
        assert r["error"]["code"] == -32600
        assert "over the 1048576-byte limit; closing the connection" in r["error"]["message"]
        assert await c.line() is None
        outcomes["huge"] = "error then dropped"

    async def half_line() -> None:
        c = await connect(path, opened)
        await c.send(b'{"jsonrpc":"2.0","method":"demo.add",')
        t0 = trio.current_time()
        r = await c.recv()
        assert r["error"]["code"] == -32001
        assert r["error"]["message"].startswith(f"request line not completed within {IDLE:g} s")
        assert await c.line() is None
        assert trio.current_time() - t0 >= IDLE * 0.9
        outcomes["half"] = "timed out then dropped"

    async def trickle() -> None:
        c = await connect(path, opened)
        with trio.move_on_after(IDLE * 6):
            try:
                for b in b'{"jsonrpc":"2.0","method":"demo.add","params":[1],"id":1}':
                    await c.send(bytes([b]))
                    await trio.sleep(IDLE / 5)  # a byte every 0.1 s: never idle, never done
            except trio.BrokenResourceError:
                pass
        r = await c.recv()
        assert r["error"]["code"] == -32001
        outcomes["trickle"] = "timed out then dropped"

    async def silent() -> None:
        c = await connect(path, opened)
        with trio.fail_after(IDLE * 10):
            assert await c.line() is None
        outcomes["silent"] = "dropped"

    async def no_reader() -> None:
        c = await connect(path, opened)
        req = b'{"jsonrpc":"2.0","method":"demo.big","params":[1000000],"id":1}\n'
        with trio.move_on_after(IDLE * 10):
            try:
                for _ in range(30):
                    await c.send(req)
            except trio.BrokenResourceError:
                pass
        # the server gives up writing to us after IDLE and closes: draining ends at EOF
        with trio.fail_after(IDLE * 20):
            while (await c.line()) is not None:
                pass
        outcomes["no_reader"] = "dropped"

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                n.start_soon(good)
                async with trio.open_nursery() as bad:
                    for fn in (garbage, huge, half_line, trickle, silent, no_reader):
                        bad.start_soon(fn)
                done.set()
    finally:
        for s in opened:
            s.socket.close()
    assert sorted(outcomes) == ["garbage", "half", "huge", "no_reader", "silent", "trickle"]
    assert len(good_latencies) > 20
    with trio.fail_after(5):
        while srv.clients:
            await trio.sleep(0.01)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
_request = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
     "method": st.sampled_from(["demo.add", "demo.pick", "help", "rpc.discover", "nope", 3])},
    optional={"params": _json, "id": _json},
)


@pytest.fixture(scope="module")
def bare_server() -> Iterator[RpcServer]:
    table = MethodTable()
    table.add_object(Demo(), "demo")
    yield RpcServer(table, Path("/tmp/fognode-fuzz-unbound.sock"), CollectorRegistry())


def check_reply(reply: str | None) -> None:
    if reply is None:
        return
    out = json.loads(reply)
    for r in out if isinstance(out, list) else [out]:
        assert r["jsonrpc"] == "2.0" and "id" in r
        assert ("result" in r) != ("error" in r)
        if "error" in r:
            assert isinstance(r["error"]["code"], int) and r["error"]["message"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_any_bytes_get_a_valid_reply(bare_server: RpcServer, data: bytes) -> None:
    check_reply(trio.run(bare_server.handle_line, data))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=_request | st.lists(_request, max_size=4) | _json)
def test_any_json_gets_a_valid_reply(bare_server: RpcServer, req: Any) -> None:
    check_reply(trio.run(bare_server.handle_line, json.dumps(req).encode()))
