"""The client side of the order stream `/fognode/ledger/order/1.0.0`: one long-lived stream per
validator, with requests pipelined on it.

Every ledger adapter that asks validators something (order votes in submit.py, committee
votes in committee_service.py, lock handover pages in handover_service.py, uptime receipts in
uptime_service.py) goes through `OrderStreams.request`; they are typed against
`ports.Requester` (`request`; the submitter also reads `in_flight` to ask idle validators first).

Pipelining. A validator serves one stream's requests one after the other and answers each with
exactly one reply, in order (service.py `_serve_order`; that is the protocol, and every
version of the server did so). So a request is written as soon as it is made (under a write
lock held only for the write, so frames never interleave), and its reply is the first one the
stream's reader task reads after the replies of the requests written before it (a FIFO of
waiting requests). No caller waits for another caller's reply before its request leaves: a
slow (not silent) validator receives every request at once and answers them at its own pace,
so nothing to it starves behind other requests. That was how the two earlier attempts to bound
the wait failed: one request at a time per validator, a queued request that waited out its
timeout for the lock gave up unsent, and under load the order never reached enough validators.

Deadlines. The whole request - the stream open, the write, the wait for the reply - is bounded
by `request_timeout` from the call (or by the caller's `deadline`, if that is sooner):
- RequestNotSent if it expired before the request began to be written (nothing left this node,
  so the validator cannot hold a lock for it): waiting for the stream to open, for the write
  lock, or for room in the pipeline;
- trio.TooSlowError if it expired after (the validator may have received it and may answer
  later). The request keeps its place in the FIFO and its late reply is read and dropped, so
  the stream stays usable; the old code reset the stream at every timeout.
A write cut off half-way (the caller's deadline, or a cancel) leaves a partial frame on the
stream: that stream is reset and every request waiting on it fails with StreamClosed.

Dead streams. While requests wait, the reader resets the stream when no reply came for
`DEAD_AFTER` request timeouts: a validator that still answers (however slowly) keeps its
stream, a silent one is cut so that the next request opens a fresh stream (which fails fast,
RequestNotSent, if the peer is gone). At most `MAX_PIPELINE` requests wait on one stream; a
request finding it full waits for room within its deadline.

A request that fails with StreamClosed on a stream that was open before the call (the
validator may have reset it for idling: rcmgr's idle deadline) is sent once more on a new
stream; the requests are idempotent (a validator answers the same order with the same vote).
"""
from __future__ import annotations

import copy
from collections import deque
from typing import Any

import trio

from fognode.ledger.errors import RequestNotSent
from fognode.ledger.ports import MAX_REPLY
from fognode.node.errors import FognodeError, StreamClosed
from fognode.node.overlay import FramedStream, Overlay

ORDER_STREAM = "/fognode/ledger/order/1.0.0"
MAX_PIPELINE = 128      # requests waiting for their replies on one stream
DEAD_AFTER = 2.0        # request timeouts without any reply (while requests wait) that end a stream


class _Waiting:
    """One request written on a stream, waiting for its reply."""

    __slots__ = ("max_reply", "done", "reply", "error")

    def __init__(self, max_reply: int) -> None:
        self.max_reply = max_reply
        self.done = trio.Event()
        self.reply: Any = None
        self.error: BaseException | None = None


class _Channel:
    """One validator's order stream: its write lock, the FIFO of requests waiting for replies
    and whether its reader ended it."""

    def __init__(self, stream: FramedStream) -> None:
        self.stream = stream
        self.write_lock = trio.Lock()
        self.waiting: deque[_Waiting] = deque()
        self.wake = trio.Event()       # set when a request is queued (or the channel dies)
        self.room = trio.Event()       # set when a reply made room in a full pipeline
        self.dead: BaseException | None = None

    def end(self, error: BaseException) -> None:
        """Fail every waiting request with `error` (the stream is gone)."""
        if self.dead is None:
            self.dead = error
        while self.waiting:
            w = self.waiting.popleft()
            w.error = error
            w.done.set()
        self.wake.set()
        self.room.set()


class OrderStreams:
    """Order streams to validators, opened on first use, requests pipelined (module docstring).
    `run()` (in the ledger's nursery) hosts the streams' readers until cancelled."""

    def __init__(self, overlay: Overlay, request_timeout: float) -> None:
        self.overlay = overlay
        self.request_timeout = request_timeout
        self._channels: dict[bytes, _Channel] = {}
        self._open_locks: dict[bytes, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self.clear()

    def clear(self) -> None:
        """Forget the streams (the host closes them with its connections)."""
        for ch in self._channels.values():
            ch.end(StreamClosed("the ledger's order streams were closed"))
        self._channels.clear()

    def in_flight(self, validator: bytes) -> int:
        """Requests written to `validator` that wait for their replies."""
        ch = self._channels.get(validator)
        return 0 if ch is None else len(ch.waiting)

    async def request(self, validator: bytes, peer: str, request: dict[str, Any] | bytes,
                      max_reply: int = MAX_REPLY, *, deadline: float | None = None) -> Any:
        """Send one request to `validator` over its order stream and return the raw reply (at
        most `max_reply` bytes). `request` is a map, or its canonical msgpack encoding already
        made (an order asked of every validator is packed once, submit.py). Bounded in all by `request_timeout` from now, or `deadline`
        (trio's clock) if sooner. Raises RequestNotSent (the request never left this node),
        trio.TooSlowError (it may have reached the validator), or FognodeError (StreamClosed,
        RemoteProtocolError: the stream failed; it may have reached the validator)."""
        end = trio.current_time() + self.request_timeout
        if deadline is not None:
            end = min(end, deadline)
        for attempt in (0, 1):
            ch, fresh = await self._channel(validator, peer, end)
            try:
                waiting = await self._write(ch, peer, request, max_reply, end)
                with trio.move_on_at(end):
                    await waiting.done.wait()
                if not waiting.done.is_set():
                    raise trio.TooSlowError(f"no answer from {peer} on its order stream in time")
                if waiting.error is not None:
                    # one error object fails every request waiting on the stream: raise a copy each
                    raise copy.copy(waiting.error).with_traceback(None) from None
                return waiting.reply
            except StreamClosed:
                if fresh or attempt or trio.current_time() >= end:
                    raise
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _channel(self, validator: bytes, peer: str, end: float) -> tuple[_Channel, bool]:
        """The validator's live channel, opened now if there is none (True: opened by this
        call). RequestNotSent if none could be opened by `end`."""
        ch = self._channels.get(validator)
        if ch is not None and ch.dead is None:
            return ch, False
        nursery = self._nursery
        if nursery is None:
            raise RequestNotSent(f"no order stream to {peer}: the ledger's order streams are not running")
        opened: FramedStream | None = None
        try:
            with trio.move_on_at(end):
                async with self._open_locks.setdefault(validator, trio.Lock()):
                    ch = self._channels.get(validator)
                    if ch is not None and ch.dead is None:
                        return ch, False
                    opened = await self.overlay.open_stream(peer, ORDER_STREAM)
        except FognodeError as e:
            raise RequestNotSent(f"no order stream to {peer}: {e}") from e
        if opened is None:
            raise RequestNotSent(f"no order stream to {peer}: not opened in time")
        ch = _Channel(opened)
        self._channels[validator] = ch
        nursery.start_soon(self._read, validator, ch)
        return ch, True

    async def _write(self, ch: _Channel, peer: str, request: dict[str, Any] | bytes, max_reply: int,
                     end: float) -> _Waiting:
        """Queue a waiting reply and write the request. RequestNotSent if `end` came (or the
        stream died) before the write began; a write cut off half-way ends the stream."""
        acquired = False
        if (trio.current_time() < end and len(ch.waiting) < MAX_PIPELINE
                and not ch.write_lock.locked()):
            # the common case, free and room: no scheduler round (the write checkpoints anyway)
            ch.write_lock.acquire_nowait()
            acquired = True
        else:
            with trio.move_on_at(end):
                while len(ch.waiting) >= MAX_PIPELINE and ch.dead is None:
                    if ch.room.is_set():
                        ch.room = trio.Event()
                    await ch.room.wait()
                await ch.write_lock.acquire()
                acquired = True
        if not acquired:
            raise RequestNotSent(f"order stream to {peer}: {len(ch.waiting)} requests waited for their "
                                 f"replies until this one's deadline; not sent")
        try:
            if ch.dead is not None:
                raise RequestNotSent(f"order stream to {peer} ended before this request was written: {ch.dead}")
            waiting = _Waiting(max_reply)
            ch.waiting.append(waiting)
            ch.wake.set()
            written = False
            try:
                with trio.move_on_at(end):
                    if isinstance(request, bytes):
                        await ch.stream.send_bytes(request)
                    else:
                        await ch.stream.send(request)
                    written = True
            finally:
                if not written:
                    # a partial frame may be on the stream: nothing after it can be read right
                    ch.end(StreamClosed(f"order stream to {peer}: a request was cut off while written"))
                    await ch.stream.reset()
            if not written:
                raise trio.TooSlowError(f"order stream to {peer}: the request could not be written in time")
        except StreamClosed as e:
            ch.end(e)
            raise
        finally:
            ch.write_lock.release()
        return waiting

    async def _read(self, validator: bytes, ch: _Channel) -> None:
        """The channel's reader: hands each reply to the oldest waiting request; ends the
        channel when the stream fails or stays silent for DEAD_AFTER timeouts with requests
        waiting (module docstring)."""
        error: BaseException = StreamClosed("order stream closed")
        try:
            while ch.dead is None:
                if not ch.waiting:
                    ch.wake = trio.Event()
                    await ch.wake.wait()
                    continue
                head = ch.waiting[0]
                silent = DEAD_AFTER * self.request_timeout
                reply: Any = None
                with trio.move_on_after(silent):
                    reply = await ch.stream.recv(max_size=head.max_reply)
                    if ch.waiting and ch.waiting[0] is head:
                        ch.waiting.popleft()
                        head.reply = reply
                        head.done.set()
                        ch.room.set()
                    continue
                error = StreamClosed(f"order stream to {ch.stream.remote_peer}: no reply for {silent:g} s "
                                     f"with {len(ch.waiting)} requests waiting")
                break
        except FognodeError as e:
            error = e
        finally:
            ch.end(error)
            if self._channels.get(validator) is ch:
                del self._channels[validator]
            await ch.stream.reset()

