"""One control-socket client (node/rpc/server.py's rules): read request lines, run them
concurrently (at most `PER_CLIENT_IN_FLIGHT`), write replies and progress lines, and drop the
client that trickles, floods, stops reading or idles (with a last error line when there is
one to give)."""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Awaitable, Callable, Protocol

import trio

from fognode.node.rpc.jsonrpc import error_line
from fognode.node.rpc.methods import INVALID_REQUEST, REQUEST_TIMEOUT

log = logging.getLogger("fognode.rpc")

PER_CLIENT_IN_FLIGHT = 32   # concurrent requests per connection; the reader waits beyond that
RECV = 65536


class ConnectionHost(Protocol):
    """What a connection needs of its server (server.py `RpcServer`)."""

    idle_timeout: float
    max_request: int

    def count_error(self, code: int) -> None: ...

    async def handle_line(self, line: bytes, stream: Callable[[str], Awaitable[None]] | None = None
                          ) -> str | None: ...


async def linger(stream: trio.SocketStream, seconds: float, cap: int = 8 << 20) -> None:
    """Half-close, then read and discard what the client still sends (up to `cap` bytes, for
    at most `seconds`), so our last line is not lost to a TCP-style reset on close."""
    with trio.move_on_after(seconds):
        try:
            await stream.send_eof()
            got = 0
            while got < cap:
                data = await stream.receive_some(RECV)
                if not data:
                    break
                got += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass


@dataclasses.dataclass(frozen=True)
class _Drop:
    """Why a client is dropped, and the last line it is sent (if any)."""

    reason: str
    farewell: str | None = None


class Connection:
    """One client: reads lines, runs their requests concurrently, writes replies."""

    def __init__(self, server: ConnectionHost, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.send_lock = trio.Lock()
        self.slots = trio.Semaphore(PER_CLIENT_IN_FLIGHT)
        self.in_flight = 0
        self.buffer = bytearray()
        self.line_started = 0.0
        self.last_activity = trio.current_time()
        self.read_scope: trio.CancelScope | None = None
        self.nursery: trio.Nursery | None = None
        self.drop: _Drop | None = None

    def _deadline(self) -> float:
        idle = self.server.idle_timeout
        if self.buffer:
            return self.line_started + idle
        if self.in_flight:
            return math.inf
        return self.last_activity + idle

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                drop = await self._read_loop(nursery)
                if drop is not None:
                    self._fail(drop)
                else:
                    # EOF: in-flight requests get idle_timeout to finish (a half-closed client
                    # may still read their replies; `echo REQUEST | nc -U` works), then they
                    # are cancelled, so a client that hung up cannot pin a task forever.
                    nursery.cancel_scope.deadline = trio.current_time() + self.server.idle_timeout
            if self.drop is not None:
                log.info("control socket: dropped a client: %s", self.drop.reason)
                if self.drop.farewell is not None:
                    try:
                        with trio.move_on_after(1.0):
                            await self.stream.send_all((self.drop.farewell + "\n").encode())
                            await linger(self.stream, 1.0)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
        finally:
            await trio.aclose_forcefully(self.stream)

    def _fail(self, drop: _Drop) -> None:
        """Drop the client from a request task: cancel the reader and every in-flight request."""
        if self.drop is None:
            self.drop = drop
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    async def _read_loop(self, nursery: trio.Nursery) -> _Drop | None:
        """Read lines and start their requests; returns at EOF (None) or with a reason to drop."""
        server = self.server
        scan = 0
        while True:
            with trio.CancelScope(deadline=self._deadline()) as scope:
                self.read_scope = scope
                try:
                    data = await self.stream.receive_some(RECV)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
            self.read_scope = None
            if scope.cancelled_caught:
                if self.buffer:
                    server.count_error(REQUEST_TIMEOUT)
                    return _Drop("request line not completed in time", error_line(
                        None, REQUEST_TIMEOUT,
                        f"request line not completed within {server.idle_timeout:g} s "
                        f"({len(self.buffer)} bytes received, no newline)"))
                return _Drop(f"idle for {server.idle_timeout:g} s")
            if not data:
                if self.buffer.strip():
                    await self._dispatch(nursery, bytes(self.buffer))  # last line, no newline
                return None
            if not self.buffer:
                self.line_started = trio.current_time()
            self.buffer += data
            while True:
                nl = self.buffer.find(b"\n", scan)
                if nl < 0:
                    scan = len(self.buffer)
                    break
                line = bytes(self.buffer[:nl])
                del self.buffer[:nl + 1]
                scan = 0
                self.line_started = trio.current_time()
                if len(line) > server.max_request:
                    return self._too_long(len(line))
                if line.strip():
                    await self._dispatch(nursery, line)
            if len(self.buffer) > server.max_request:
                return self._too_long(len(self.buffer))

    def _too_long(self, n: int) -> _Drop:
        self.server.count_error(INVALID_REQUEST)
        what = f"{n} bytes" if n <= self.server.max_request + RECV else f"over {n} bytes"
        return _Drop("request line too long", error_line(
            None, INVALID_REQUEST,
            f"invalid request: line of {what} is over the {self.server.max_request}-byte limit; "
            f"closing the connection"))

    async def _dispatch(self, nursery: trio.Nursery, line: bytes) -> None:
        await self.slots.acquire()
        self.in_flight += 1
        nursery.start_soon(self._answer, line)

    async def _answer(self, line: bytes) -> None:
        try:
            reply = await self.server.handle_line(line, self._send)
            if reply is not None:
                await self._send(reply)
        finally:
            self.in_flight -= 1
            self.slots.release()
            self.last_activity = trio.current_time()
            if self.read_scope is not None:
                self.read_scope.deadline = self._deadline()

    async def _send(self, reply: str) -> None:
        data = (reply + "\n").encode()
        # a free lock is taken without a checkpoint (send_all checkpoints anyway)
        try:
            self.send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self.send_lock.acquire()
        try:
            with trio.move_on_after(self.server.idle_timeout) as scope:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the client went away; the reader sees EOF
            if scope.cancelled_caught:
                self._fail(_Drop(f"did not read its replies for {self.server.idle_timeout:g} s"))
        finally:
            self.send_lock.release()
