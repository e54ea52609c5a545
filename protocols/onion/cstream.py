"""A stream over a circuit as a `trio.abc.Stream`, and a splice between two streams.

`CircuitStream` is one stream of one of this node's circuits (a SOCKS client's stream to a
`.fog` service, or a service's stream towards its local TCP server). The engine feeds it the
`StreamData` it receives (`feed`) and the end (`feed_end`); `receive_some` hands out as much
of the data waiting as `max_bytes` allows (many cells' worth in one piece: one write to the
local socket per batch, not per cell) and tells the circuit how many whole chunks were
consumed (stream SENDMEs follow consumption, so a slow reader holds the far end back). `send_all` queues data on the circuit and waits while more
than `HIGH_WATER` bytes wait for the windows (backpressure from the far end). `aclose` ends
the stream once its queued data is sent (RELAY END; there is no half-close in the circuit
protocol, so a local end of input ends the stream both ways).

Awaited: `receive_some` until data or the end arrives; `send_all` until the queue drains
below the mark. Both are cancellable; after the circuit or the stream is gone they raise
`trio.BrokenResourceError` (send) or return b"" (receive).
"""
from __future__ import annotations

from collections import deque
from typing import Protocol

import trio

from fognode.protocols.onion.actions import CircKey

HIGH_WATER = 256 * 1024


class StreamOps(Protocol):
    """What a CircuitStream asks of the engine that owns its circuit."""

    def stream_send(self, key: CircKey, sid: int, data: bytes) -> None: ...
    def stream_consumed(self, key: CircKey, sid: int, chunks: int) -> None: ...
    def stream_end(self, key: CircKey, sid: int) -> None: ...
    def stream_queued(self, key: CircKey, sid: int) -> int: ...
    async def wait_progress(self) -> None: ...


class CircuitStream(trio.abc.Stream):
    def __init__(self, ops: StreamOps, key: CircKey, sid: int) -> None:
        self.ops = ops
        self.key = key
        self.sid = sid
        self._chunks: deque[bytes] = deque()
        self._offset = 0
        self._arrived = trio.Event()
        self.ended = False          # the far end (or the circuit) ended the stream
        self.closed = False         # we ended it
        self.end_reason = ""
        self.bytes_in = 0
        self.bytes_out = 0

    # -- from the engine -----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._arrived.set()

    def feed_end(self, reason: str) -> None:
        self.ended = True
        self.end_reason = reason
        self._arrived.set()

    # -- trio.abc.Stream -----------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while not self._chunks:
            if self.ended or self.closed:
                return b""
            self._arrived = trio.Event()
            await self._arrived.wait()
        limit = max_bytes if max_bytes is not None else 1 << 20
        parts: list[bytes] = []
        size = done = 0
        while self._chunks and size < limit:
            chunk = self._chunks[0]
            n = min(limit - size, len(chunk) - self._offset)
            parts.append(chunk if n == len(chunk) else chunk[self._offset:self._offset + n])
            size += n
            self._offset += n
            if self._offset < len(chunk):
                break
            self._chunks.popleft()
            self._offset = 0
            done += 1
        if done and not self.ended and not self.closed:
            self.ops.stream_consumed(self.key, self.sid, done)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self.bytes_in += len(out)
        return out

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            raise trio.ClosedResourceError("the circuit stream was closed")
        if self.ended:
            raise trio.BrokenResourceError(f"the circuit stream ended ({self.end_reason})")
        if data:
            self.ops.stream_send(self.key, self.sid, bytes(data))
            self.bytes_out += len(data)
        await self.wait_send_all_might_not_block()

    async def wait_send_all_might_not_block(self) -> None:
        while not self.ended and not self.closed and self.ops.stream_queued(self.key, self.sid) > HIGH_WATER:
            await self.ops.wait_progress()
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            if not self.ended:
                self.ops.stream_end(self.key, self.sid)
            self._chunks.clear()
            self._arrived.set()
        await trio.lowlevel.checkpoint()


async def splice(a: trio.abc.Stream, b: trio.abc.Stream, *, idle_timeout: float, chunk: int = 262144) -> None:
    """Copy both ways until either side ends (then both are closed), an error, or
    `idle_timeout` s with no byte either way. `chunk`: the most one read takes; a read from the
    local socket becomes one burst of cells on the circuit (one link write when the windows are
    open), so larger reads mean fewer, larger link writes."""
    last = [trio.current_time()]

    async def pump(src: trio.abc.Stream, dst: trio.abc.Stream, scope: trio.CancelScope) -> None:
        try:
            while True:
                data = await src.receive_some(chunk)
                if not data:
                    break
                last[0] = trio.current_time()
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, a, b, nursery.cancel_scope)
            nursery.start_soon(pump, b, a, nursery.cancel_scope)
            while True:
                await trio.sleep_until(last[0] + idle_timeout)
                if trio.current_time() >= last[0] + idle_timeout:
                    nursery.cancel_scope.cancel()
    finally:
        for s in (a, b):
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    await s.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
