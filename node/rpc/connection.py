"""One control-socket client (node/rpc/server.py's rules): read request lines, answer them,
write replies and progress lines, and drop the client that trickles, floods, stops reading or
idles (with a last error line when there is one to give).

A request whose handler never suspends (most status methods; methods.never_suspends), and
every error found before a handler runs, is answered by the reading task itself: no task, no
scheduler hop. Batches and handlers that can wait run in a task each, concurrently (at most
`PER_CLIENT_IN_FLIGHT` per connection); the reader goes on reading meanwhile.

The reading task writes its replies straight to the socket (`os.write`, non-blocking); only
what the kernel does not take at once goes through trio's `send_all`, which is a full
checkpoint even when the data fits (one more scheduler pass per reply, about 10 us in a busy
daemon). The reader still yields once per request it reads: `receive_some` is a checkpoint,
and a line that follows another in the same chunk is read after a checkpoint
(`_read_loop`), so a client sending many lines at once does not hold the event loop. Replies
and progress lines of tasks go through `send_all` as before. The benchmark's echo baseline
(tools/bench/rpc.py) does the same IO."""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Awaitable, Callable, Protocol

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

    def decode_line(self, line: bytes) -> Any: ...

    def needs_task(self, msg: Any) -> bool: ...

    def answer_now(self, msg: Any) -> str | None: ...

    async def handle_message(self, msg: Any, stream: Callable[[str], Awaitable[None]] | None = None
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
    """One client: reads lines, answers them (inline or in tasks), writes replies.

    Timeouts are kept by one watchdog task per connection (`_watch`), not by a cancel scope
    per read and per send: the reader and the senders only note the time (`last_activity`,
    `line_started`, `sending_since`), and the watchdog sleeps until the earliest moment the
    client could be overdue, recomputes, and drops it when it is. A deadline only ever moves
    later while the watchdog sleeps, so it fires on time."""

    def __init__(self, server: ConnectionHost, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.fd = stream.socket.fileno()     # open until `run` returns (it closes the stream)
        self.send_lock = trio.Lock()
        self.slots = trio.Semaphore(PER_CLIENT_IN_FLIGHT)
        self.in_flight = 0
        self.buffer = bytearray()
        self.line_started = 0.0
        self.last_activity = trio.current_time()
        self.sending_since: float | None = None   # a send in progress began then
        self.watch_scope = trio.CancelScope()
        self.nursery: trio.Nursery | None = None
        self.drop: _Drop | None = None

    def _overdue(self, now: float) -> tuple[float, _Drop | None]:
        """When the client will be overdue if nothing changes, and why, if it is already."""
        idle = self.server.idle_timeout
        if self.sending_since is not None:
            due = self.sending_since + idle
            if due <= now:
                return due, _Drop(f"did not read its replies for {idle:g} s")
            return due, None
        if self.buffer:
            due = self.line_started + idle
            if due <= now:
                self.server.count_error(REQUEST_TIMEOUT)
                return due, _Drop("request line not completed in time", error_line(
                    None, REQUEST_TIMEOUT,
                    f"request line not completed within {idle:g} s "
                    f"({len(self.buffer)} bytes received, no newline)"))
            return due, None
        if self.in_flight:
            return now + idle, None     # not idle; looked at again then
        due = self.last_activity + idle
        return due, (_Drop(f"idle for {idle:g} s") if due <= now else None)

    async def _watch(self) -> None:
        with self.watch_scope:
            while True:
                due, drop = self._overdue(trio.current_time())
                if drop is not None:
                    self._fail(drop)
                    return
                await trio.sleep_until(due)

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._watch)
                await self._read_loop(nursery)
                # EOF: in-flight requests get idle_timeout to finish (a half-closed client
                # may still read their replies; `echo REQUEST | nc -U` works), then they
                # are cancelled, so a client that hung up cannot pin a task forever.
                self.watch_scope.cancel()
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
        """Drop the client: cancel the reader, the watchdog and every in-flight request."""
        if self.drop is None:
            self.drop = drop
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        """Read lines and answer them; returns at EOF. A client to drop is dropped by `_fail`
        (this task is cancelled with the rest)."""
        server = self.server
        scan = 0
        checkpoint = trio.lowlevel.checkpoint
        while True:
            try:
                data = await self.stream.receive_some(RECV)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                if self.buffer.strip():
                    await self._dispatch(nursery, bytes(self.buffer))  # last line, no newline
                return
            if not self.buffer:
                self.line_started = trio.current_time()
            self.buffer += data
            first = True
            while True:
                nl = self.buffer.find(b"\n", scan)
                if nl < 0:
                    scan = len(self.buffer)
                    break
                line = bytes(self.buffer[:nl])
                del self.buffer[:nl + 1]
                scan = 0
                if len(line) > server.max_request:
                    return self._too_long(len(line))
                if line.strip():
                    if not first:   # inline answers and direct writes do not yield (module docstring)
                        await checkpoint()
                    first = False
                    await self._dispatch(nursery, line)
                if self.buffer:     # the next line began in this chunk (the watchdog times it)
                    self.line_started = trio.current_time()
            if len(self.buffer) > server.max_request:
                return self._too_long(len(self.buffer))

    def _too_long(self, n: int) -> None:
        self.server.count_error(INVALID_REQUEST)
        what = f"{n} bytes" if n <= self.server.max_request + RECV else f"over {n} bytes"
        self._fail(_Drop("request line too long", error_line(
            None, INVALID_REQUEST,
            f"invalid request: line of {what} is over the {self.server.max_request}-byte limit; "
            f"closing the connection")))

    async def _dispatch(self, nursery: trio.Nursery, line: bytes) -> None:
        msg = self.server.decode_line(line)
        if not self.server.needs_task(msg):
            reply = self.server.answer_now(msg)
            if reply is not None:
                await self._send(reply, direct=True)
            self.last_activity = trio.current_time()
            return
        await self.slots.acquire()
        self.in_flight += 1
        nursery.start_soon(self._answer, msg)

    async def _answer(self, msg: Any) -> None:
        try:
            reply = await self.server.handle_message(msg, self._send)
            if reply is not None:
                await self._send(reply)
        finally:
            self.in_flight -= 1
            self.slots.release()
            self.last_activity = trio.current_time()

    async def _send(self, reply: str, *, direct: bool = False) -> None:
        """Send one line (under the send lock). `direct`: the reading task's reply, written
        without a checkpoint when the kernel takes it all (module docstring)."""
        data = (reply + "\n").encode()
        sent = 0
        if direct and not self.send_lock.locked():
            # nobody is sending, and nothing else runs before the write: no lock needed unless
            # the kernel leaves a rest (then it is taken below, at once: still free)
            try:
                sent = os.write(self.fd, data)    # the socket is non-blocking
            except BlockingIOError:
                pass
            except OSError:
                return  # the client went away (EPIPE, ECONNRESET); the reader sees EOF
            if sent == len(data):
                return
        # a free lock is taken without a checkpoint (send_all checkpoints anyway)
        try:
            self.send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self.send_lock.acquire()
        try:
            self.sending_since = trio.current_time()   # the watchdog drops a client stuck here
            try:
                await self.stream.send_all(memoryview(data)[sent:] if sent else data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the client went away; the reader sees EOF
            finally:
                self.sending_since = None
        finally:
            self.send_lock.release()
