"""The control socket server over a real unix socket (short dir under /tmp: sun_path limit)."""
from __future__ import annotations

import enum
import json
import os
import shutil
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
import trio
from prometheus_client import CollectorRegistry

from fognode.node.errors import DataDirError, LocalProtocolError, RpcError
from fognode.node.rpc.methods import MethodTable, rpc_method
from fognode.node.rpc.server import RpcServer
from tests.polling import wait_until


class Color(enum.Enum):
    RED = "red"


@dataclass(frozen=True)
class Point:
    x: int
    blob: bytes
    color: Color
    where: Path


class Demo:
    def __init__(self) -> None:
        self.release = trio.Event()
        self.blocked = 0
        self.notified: list[str] = []

    @rpc_method("demo.echo")
    async def echo(self, text: str) -> str:
        """Return TEXT."""
        return text

    @rpc_method("demo.add")
    async def add(self, a: int, b: int = 0) -> int:
        """Add A and B."""
        return a + b

    @rpc_method("demo.note")
    async def note(self, text: str) -> None:
        """Remember TEXT (used as a notification)."""
        self.notified.append(text)

    @rpc_method("demo.point")
    async def point(self) -> Any:
        """A dataclass with bytes, an enum and a path."""
        return Point(3, b"\x01\xff", Color.RED, Path("/tmp/x"))

    @rpc_method("demo.block")
    async def block(self) -> str:
        """Wait until demo.release is called."""
        self.blocked += 1
        await self.release.wait()
        return "released"

    @rpc_method("demo.release")
    async def do_release(self) -> None:
        """Release every demo.block."""
        self.release.set()

    @rpc_method("demo.fail")
    async def fail(self) -> None:
        """Raise an RpcError with data."""
        raise RpcError(104, "role demo is not running", {"role": "demo"})

    @rpc_method("demo.crash")
    async def crash(self) -> None:
        """Raise an unexpected exception."""
        raise KeyError("boom")

    @rpc_method("demo.oops")
    async def oops(self) -> None:
        """Raise a FognodeError that is not an RpcError."""
        raise LocalProtocolError("service 'ledger' is not running on this node")

    @rpc_method("demo.unjson")
    async def unjson(self) -> Any:
        """Return something that is not JSON."""
        return object()


OPEN: list[trio.SocketStream] = []


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    try:
        yield
    finally:  # also when pytest-trio cancels the teardown; no checkpoint in the loop
        while OPEN:
            OPEN.pop().socket.close()


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        OPEN.append(stream)

    @classmethod
    async def connect(cls, path: Path) -> "Client":
        return cls(await trio.open_unix_socket(str(path)))

    async def send(self, data: Any) -> None:
        raw = data if isinstance(data, bytes) else json.dumps(data).encode() + b"\n"
        await self.stream.send_all(raw)

    async def line(self) -> bytes | None:
        while b"\n" not in self.buf:
            data = await self.stream.receive_some(65536)
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

    async def call(self, method: str, params: Any = None, id_: Any = 1) -> Any:
        req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id_}
        if params is not None:
            req["params"] = params
        await self.send(req)
        return await self.recv()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = tempfile.mkdtemp(dir="/tmp", prefix="fnrpc-")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@dataclass
class Running:
    server: RpcServer
    registry: CollectorRegistry
    demo: Demo
    path: Path


async def start(nursery: trio.Nursery, sockdir: Path, **kw: Any) -> Running:
    table = MethodTable()
    demo = Demo()
    table.add_object(demo, "demo")
    reg = CollectorRegistry()
    srv = RpcServer(table, sockdir / "fognode.sock", reg, **kw)
    await nursery.start(srv.serve)
    return Running(srv, reg, demo, sockdir / "fognode.sock")


@pytest.fixture
async def rpc(nursery: trio.Nursery, sockdir: Path) -> AsyncIterator[Running]:
    yield await start(nursery, sockdir)


async def test_call_and_result_encoding(rpc: Running) -> None:
    c = await Client.connect(rpc.path)
    assert await c.call("demo.add", [2, "3"], id_="a") == {"jsonrpc": "2.0", "id": "a", "result": 5}
    assert (await c.call("demo.add", {"a": 1}, id_=7))["result"] == 1
    assert (await c.call("demo.echo", ["héllo"], id_=None)) == {"jsonrpc": "2.0", "id": None,
                                                               "result": "héllo"}
    assert (await c.call("demo.point"))["result"] == {"x": 3, "blob": "01ff", "color": "red",
                                                      "where": "/tmp/x"}
    # blank lines and CRLF are tolerated
    await c.send(b"\n  \r\n" + json.dumps({"jsonrpc": "2.0", "method": "demo.add", "params": [1, 1],
                                           "id": 9}).encode() + b"\r\n")
    assert (await c.recv())["result"] == 2


async def test_notifications_get_no_reply(rpc: Running) -> None:
    c = await Client.connect(rpc.path)
    await c.send({"jsonrpc": "2.0", "method": "demo.note", "params": ["one"]})
    await c.send({"jsonrpc": "2.0", "method": "demo.crash"})          # errors are silent too
    await c.send({"jsonrpc": "2.0", "method": "nope.nope"})
    assert (await c.call("demo.echo", ["after"], id_=2)) == {"jsonrpc": "2.0", "id": 2, "result": "after"}
    assert rpc.demo.notified == ["one"]


async def test_batches(rpc: Running) -> None:
    c = await Client.connect(rpc.path)
    await c.send([
        {"jsonrpc": "2.0", "method": "demo.add", "params": [1, 2], "id": 1},
        {"jsonrpc": "2.0", "method": "demo.note", "params": ["x"]},
        {"jsonrpc": "2.0", "method": "demo.add", "params": ["z"], "id": 2},
        7,
        {"jsonrpc": "2.0", "method": "demo.echo", "params": ["e"], "id": "3"},
    ])
    out = await c.recv()
    assert [r.get("id") for r in out] == [1, 2, None, "3"]
    assert out[0]["result"] == 3 and out[3]["result"] == "e"
    assert out[1]["error"]["code"] == -32602
    assert out[2]["error"] == {"code": -32600,
                               "message": "invalid request: a request must be a JSON object, got a number"}
    # a batch of notifications only: no reply at all
    await c.send([{"jsonrpc": "2.0", "method": "demo.note", "params": ["y"]}])
    await c.send(b"[]\n")
    assert await c.recv() == {"jsonrpc": "2.0", "id": None,
                              "error": {"code": -32600, "message": "invalid request: empty batch"}}
    # a notification has no reply to wait for: its handler may run after the next reply
    await wait_until(lambda: rpc.demo.notified == ["x", "y"], timeout=10,
                     what="the batched notification to be handled")


async def test_standard_errors_say_what_was_wrong(rpc: Running) -> None:
    c = await Client.connect(rpc.path)
    await c.send(b'{"jsonrpc": "2.0", "method": "demo.add", "id": 1,,}\n')
    err = (await c.recv())["error"]
    assert err["code"] == -32700
    assert err["message"] == "parse error: Expecting property name enclosed in double quotes at line 1 column 50 (char 49)"
    await c.send(b'{"jsonrpc":"2.0","method":"demo.add","params":[NaN],"id":1}\n')
    assert (await c.recv())["error"]["message"] == "parse error: NaN is not valid JSON"
    cases = [
        ({"jsonrpc": "2.0", "method": 5, "id": 1}, "'method' must be a string"),
        ({"method": "demo.add", "id": 1}, "missing member 'jsonrpc' (must be \"2.0\")"),
        ({"jsonrpc": "1.0", "method": "demo.add", "id": 1}, "'jsonrpc' must be \"2.0\""),
        ({"jsonrpc": "2.0", "id": 1}, "missing member 'method'"),
        ({"jsonrpc": "2.0", "method": "demo.add", "params": "1", "id": 1},
         "'params' must be an array or an object"),
        ({"jsonrpc": "2.0", "method": "demo.add", "id": {"a": 1}}, "'id' must be a string, a number or null"),
        ({"jsonrpc": "2.0", "method": "demo.add", "param": [1], "id": 1},
         "unknown member(s) ['param']: a request has only jsonrpc, method, params and id"),
        ("text", "a request must be a JSON object, got a string"),
    ]
    for req, why in cases:
        await c.send(req)
        reply = await c.recv()
        assert reply["error"] == {"code": -32600, "message": f"invalid request: {why}"}, req
        # the id is echoed when it is a valid id, else null
        assert reply["id"] == (1 if isinstance(req, dict) and req.get("id") == 1 else None)
    r = await c.call("demo.ad", [1])
    assert r["error"]["code"] == -32601
    assert r["error"]["message"].startswith("method not found: 'demo.ad'; did you mean demo.add")
    r = await c.call("zz.top")
    assert r["error"]["message"] == "method not found: 'zz.top'; `help` lists the methods"
    r = await c.call("demo.add", {"a": 1, "c": 2})
    assert r["error"]["code"] == -32602
    assert r["error"]["message"].startswith("demo.add: unknown param(s) ['c']")
    r = await c.call("demo.add", ["x"])
    assert r["error"]["message"] == "demo.add: param 'a' must be an integer, got string 'x'"


async def test_handler_errors(rpc: Running) -> None:
    c = await Client.connect(rpc.path)
    assert (await c.call("demo.fail"))["error"] == {"code": 104, "message": "role demo is not running",
                                                    "data": {"role": "demo"}}
    assert (await c.call("demo.crash"))["error"] == {
        "code": -32603, "message": "internal error in demo.crash: KeyError: 'boom'",
        "data": {"exception": "KeyError"}}
    err = (await c.call("demo.oops"))["error"]
    assert err["message"] == ("internal error in demo.oops: LocalProtocolError: "
                              "service 'ledger' is not running on this node")
    err = (await c.call("demo.unjson"))["error"]
    assert err["code"] == -32603
    assert err["message"] == "internal error in demo.unjson: the result of demo.unjson cannot be sent as JSON: object is not JSON-serialisable"
    # the same connection keeps serving
    assert (await c.call("demo.add", [1, 1]))["result"] == 2


async def test_methods_of_a_role_that_is_down_say_so(rpc: Running) -> None:
    rpc.server.table.remove_owner("demo")  # what the supervisor does while a role restarts
    c = await Client.connect(rpc.path)
    err = (await c.call("demo.echo", ["x"]))["error"]
    assert err["code"] == 104 and "role demo is not running" in err["message"]
    assert (await c.call("nope.nope"))["error"]["code"] == -32601
    rpc.server.table.add_object(rpc.demo, "demo")  # back after the restart
    assert (await c.call("demo.echo", ["x"]))["result"] == "x"


async def test_requests_on_one_connection_run_concurrently(rpc: Running) -> None:
    c = await Client.connect(rpc.path)
    await c.send({"jsonrpc": "2.0", "method": "demo.block", "id": "slow"})
    # a later request overtakes the blocked one (answered by the reading task, it may even
    # come back before the blocked one's task has started)
    assert await c.call("demo.echo", ["fast"], id_="fast") == {"jsonrpc": "2.0", "id": "fast", "result": "fast"}
    await wait_until(lambda: rpc.demo.blocked == 1, timeout=10, what="demo.block to start")
    await c.call("demo.release", id_="rel")
    assert await c.recv() == {"jsonrpc": "2.0", "id": "slow", "result": "released"}


async def test_many_concurrent_clients(rpc: Running) -> None:
    n_clients, n_calls = 60, 20
    results: dict[int, list[int]] = {}

    async def one(i: int) -> None:
        c = await Client.connect(rpc.path)
        # pipeline all calls, then read the answers (any order, matched by id)
        for k in range(n_calls):
            await c.send({"jsonrpc": "2.0", "method": "demo.add", "params": [i, k], "id": k})
        got = {}
        for _ in range(n_calls):
            r = await c.recv()
            got[r["id"]] = r["result"]
        results[i] = [got[k] for k in range(n_calls)]
        await c.stream.aclose()

    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            for i in range(n_clients):
                n.start_soon(one, i)
    assert results == {i: [i + k for k in range(n_calls)] for i in range(n_clients)}
    with trio.fail_after(5):
        while rpc.server.clients:
            await trio.sleep(0.01)
    assert rpc.registry.get_sample_value("fognode_node_rpc_clients") == 0


async def test_a_client_busy_with_inline_calls_is_not_idle(nursery: trio.Nursery, sockdir: Path) -> None:
    """Calls answered in the reading task (handlers without an await) count as activity: a
    client calling more often than idle_timeout stays connected past it, then is dropped once
    it falls silent."""
    run = await start(nursery, sockdir, idle_timeout=2.0)
    assert run.server.table.get("demo.add").inline and not run.server.table.get("demo.block").inline
    c = await Client.connect(run.path)
    with trio.fail_after(60):
        started = trio.current_time()
        i = 0
        while trio.current_time() - started < 3.0:     # 1.5 idle timeouts of steady calls
            assert (await c.call("demo.add", [i], id_=i))["result"] == i
            i += 1
            await trio.sleep(0.4)
        assert await c.line() is None                   # silent now: dropped
    assert trio.current_time() - started >= 3.0 + 2.0 * 0.9


async def test_eof_after_request_still_gets_reply(rpc: Running) -> None:
    c = await Client.connect(rpc.path)
    await c.send(b'{"jsonrpc":"2.0","method":"demo.echo","params":["bye"],"id":1}')  # no newline
    await c.stream.send_eof()
    assert (await c.recv())["result"] == "bye"
    assert await c.line() is None


async def test_help_and_discover(rpc: Running) -> None:
    c = await Client.connect(rpc.path)
    listing = (await c.call("help"))["result"]
    names = [m["name"] for m in listing]
    assert "help" in names and "rpc.discover" in names and "demo.add" in names
    add = next(m for m in listing if m["name"] == "demo.add")
    assert add == {"name": "demo.add", "role": "demo", "summary": "Add A and B.",
                   "usage": "demo add A [--b B]"}
    one = (await c.call("help", ["demo add"]))["result"]
    assert one["name"] == "demo.add" and one["role"] == "demo"
    assert one["params"][1] == {"name": "b", "required": False, "positional": True,
                                "schema": {"type": "integer"}, "default": 0}
    assert (await c.call("help", {"method": "demo.add"}))["result"] == one
    err = (await c.call("help", ["demo.ad"]))["error"]
    assert err["code"] == -32602
    assert err["message"].startswith("help: no method named 'demo.ad'; did you mean demo.add")
    disc = (await c.call("rpc.discover"))["result"]
    assert disc["openrpc"] == "1.2.6" and disc["info"]["title"] == "fognode control socket"
    assert [m["name"] for m in disc["methods"]] == sorted(names)
    assert next(m for m in disc["methods"] if m["name"] == "help")["role"] == "node"


async def test_metrics(rpc: Running) -> None:
    c = await Client.connect(rpc.path)
    await c.call("demo.add", [1])
    await c.call("no.such")
    await c.call("demo.crash")
    await c.send(b"{\n")
    await c.recv()
    g = rpc.registry.get_sample_value
    assert g("fognode_node_rpc_request_seconds_count", {"method": "demo.add"}) == 1
    assert g("fognode_node_rpc_request_seconds_count", {"method": "unknown"}) == 1
    assert g("fognode_node_rpc_request_seconds_count", {"method": "no.such"}) is None
    assert g("fognode_node_rpc_errors_total", {"code": "-32601"}) == 1
    assert g("fognode_node_rpc_errors_total", {"code": "-32603"}) == 1
    assert g("fognode_node_rpc_errors_total", {"code": "-32700"}) == 1
    assert g("fognode_node_rpc_clients") == 1


async def test_socket_mode_and_cleanup(nursery: trio.Nursery, sockdir: Path) -> None:
    table = MethodTable()
    srv = RpcServer(table, sockdir / "fognode.sock", CollectorRegistry())
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as n:
            await n.start(srv.serve)
            st = os.stat(sockdir / "fognode.sock")
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
            scope.cancel()
    assert not (sockdir / "fognode.sock").exists()


async def test_stale_socket_replaced_live_one_refused(nursery: trio.Nursery, sockdir: Path) -> None:
    path = sockdir / "fognode.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))     # bound, never listening: what a SIGKILLed daemon leaves behind
    stale.close()
    run = await start(nursery, sockdir)
    c = await Client.connect(path)
    assert (await c.call("demo.add", [1, 2]))["result"] == 3
    second = RpcServer(MethodTable(), path, CollectorRegistry())
    with pytest.raises(DataDirError, match="another process is already serving the control socket"):
        await second.serve()
    assert (await c.call("demo.add", [1, 3]))["result"] == 4
    assert run.server.clients >= 1


async def test_not_a_socket_refused(sockdir: Path) -> None:
    path = sockdir / "fognode.sock"
    path.write_text("precious")
    with pytest.raises(DataDirError, match="exists and is not a socket; refusing to replace it"):
        await RpcServer(MethodTable(), path, CollectorRegistry()).serve()
    assert path.read_text() == "precious"


async def test_overlong_path_refused(sockdir: Path) -> None:
    path = sockdir / ("d" * 100) / "fognode.sock"
    n = len(str(path).encode())
    with pytest.raises(DataDirError) as ei:
        RpcServer(MethodTable(), path, CollectorRegistry())
    assert str(ei.value) == (f"control socket path {path} is {n} bytes long; unix sockets allow at "
                             f"most 107 (sun_path is 108 bytes): use a data dir with a shorter path")
    RpcServer(MethodTable(), Path("/tmp/" + "a" * 102), CollectorRegistry())  # 107 bytes fits
    with pytest.raises(DataDirError, match="is 108 bytes long"):
        RpcServer(MethodTable(), Path("/tmp/" + "a" * 103), CollectorRegistry())


async def test_max_clients(nursery: trio.Nursery, sockdir: Path) -> None:
    run = await start(nursery, sockdir, max_clients=2)
    a = await Client.connect(run.path)
    b = await Client.connect(run.path)
    assert (await a.call("demo.add", [1]))["result"] == 1
    assert (await b.call("demo.add", [2]))["result"] == 2
    c = await Client.connect(run.path)
    await c.send({"jsonrpc": "2.0", "method": "demo.add", "params": [3], "id": 1})
    assert await c.recv() == {"jsonrpc": "2.0", "id": None, "error": {
        "code": -32000, "message": "too many clients (2 connected); try again later"}}
    assert await c.line() is None
    assert (await a.call("demo.add", [4]))["result"] == 4
    await b.stream.aclose()
    with trio.fail_after(5):
        while run.server.clients > 1:
            await trio.sleep(0.01)
    d = await Client.connect(run.path)
    assert (await d.call("demo.add", [5]))["result"] == 5


async def test_stop_accepting_keeps_connected_clients(rpc: Running) -> None:
    c = await Client.connect(rpc.path)
    await c.send({"jsonrpc": "2.0", "method": "demo.block", "id": "in-flight"})
    with trio.fail_after(5):
        while rpc.demo.blocked == 0:
            await trio.sleep(0.01)
    rpc.server.stop_accepting()
    assert not rpc.path.exists()
    with pytest.raises(OSError):
        await trio.open_unix_socket(str(rpc.path))
    assert (await c.call("demo.release", id_="r"))["id"] == "r"
    assert await c.recv() == {"jsonrpc": "2.0", "id": "in-flight", "result": "released"}


async def test_hung_up_client_cannot_pin_a_request(nursery: trio.Nursery, sockdir: Path) -> None:
    run = await start(nursery, sockdir, idle_timeout=0.3)
    c = await Client.connect(run.path)
    await c.send({"jsonrpc": "2.0", "method": "demo.block", "id": 1})
    with trio.fail_after(5):
        while run.demo.blocked == 0:
            await trio.sleep(0.01)
    await c.stream.aclose()
    with trio.fail_after(5):   # cancelled idle_timeout after the hang-up
        while run.server.clients:
            await trio.sleep(0.01)
    assert not run.demo.release.is_set()
