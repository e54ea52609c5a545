"""The links between neighbours: one libp2p stream per neighbour on `/fognode/onion/1.0.0`.

Trio adapter (the circuit ids on a link are links.py's business). `send(peer, frame)` never
blocks: it appends the framed cell to the peer's bounded write queue (`queue_limit` bytes; a
relay in the middle has no per-circuit queue of its own, SENDME windows bound what a circuit
can have in flight) and dials the peer if there is no link yet. One writer task per link
coalesces everything queued, up to `MAX_WRITE` bytes, into one stream frame: a libp2p write
costs about the same whatever its size up to a few KiB (cells.py), so this is what makes bulk
transfer fast. A queued item is one framed cell or a burst of one circuit's cells (SendCells);
a write never exceeds MAX_FRAME, what the neighbour's reader accepts. The reader of each stream feeds the frames' bytes to `on_bytes(peer, data,
framer)` with that stream's own `CellFramer` (frames only carry whole cells, but a hostile
peer's bytes are split by the framer whatever they are).

Both neighbours may dial each other at once: a link then has two streams. Each side writes
only on the first stream it had, so the cells of one circuit stay in order, and reads both.
A link fails as a whole (dial failure, a write error, an oversize frame, its write queue over
`queue_limit`, or the end or reset of its writer stream or of its last stream): every stream
of that peer is reset, the queue dropped, and `on_down(peer, why)` is called at once (also
from inside `send`: the caller queues the cores' `link_failed` until its action list is
carried out whole, dispatch.py). A spare stream that ends is dropped alone.

The receiving side's stream deadlines (node/rcmgr.py) reset an inbound stream that sends no
first frame within `overlay.stream_first_frame_timeout` (10 s) or stays quiet for
`overlay.stream_idle_timeout` (300 s). So a stream we dialled that is not our writer (the
neighbour's dial won the race) gets a link PADDING cell at once; the writer of an idle link
gets one after `keepalive` seconds without a write; and every spare stream gets one every
`keepalive` seconds whether the link is idle or busy. (Before, such a spare stream was reset
by the neighbour after 10 s and took the whole link down with every circuit on it: up to a
hundred link failures in one 5-node devnet run, introduction points lost with them. And
spares were poked only when the link had been idle for `keepalive` seconds: when both sides
dialled at once and each made the other's stream its writer, each side's writer was a stream
the neighbour wrote nothing on while busy, so after 300 s of traffic without a quiet minute
the neighbour's idle deadline reset it and the link failed under whatever circuits it
carried: a bulk transfer cut mid-way, issue 14.)
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Callable

import trio

from fognode.node.errors import FognodeError, LocalProtocolError, RemoteProtocolError, StreamClosed
from fognode.node.overlay import FramedStream, Overlay
from fognode.protocols.onion.cells import FRAME_LEN, Cell, CellCommand, CellFramer
from fognode.protocols.onion.errors import OnionError
from fognode.protocols.onion.wire_names import LINK_STREAM

log = logging.getLogger("fognode.onion.links")

PROTOCOL_ID = LINK_STREAM
MAX_WRITE = 1 << 20                      # bytes coalesced into one stream frame
MAX_FRAME = MAX_WRITE + FRAME_LEN        # the largest frame a neighbour may send us
SPLIT = MAX_WRITE // FRAME_LEN * FRAME_LEN    # a long burst of cells is queued in pieces of this many bytes
KEEPALIVE = 60.0
DIAL_TIMEOUT = 15.0

BytesHandler = Callable[[str, bytes, CellFramer], None]
DownHandler = Callable[[str, str], None]


class Link:
    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.queue: deque[bytes | memoryview] = deque()
        self.queued = 0
        self.enqueued = 0                # bytes ever queued (written once bytes_out reaches it)
        self.writer: FramedStream | None = None
        self.streams: list[FramedStream] = []
        self.wake = trio.Event()
        self.wrote = trio.Event()        # set after each write (link_test waits on it)
        self.ready = trio.Event()
        self.spares_poked = 0.0          # trio time the spare streams were last poked
        self.down = False
        self.why = ""                    # why the link went down (link_test reports it)
        self.inbound = False
        self.bytes_out = 0
        self.bytes_in = 0


class LinkManager:
    def __init__(self, overlay: Overlay, on_bytes: BytesHandler, on_down: DownHandler, *,
                 queue_limit: int = 8 << 20, keepalive: float = KEEPALIVE) -> None:
        self.overlay = overlay
        self.on_bytes = on_bytes
        self.on_down = on_down
        self.queue_limit = queue_limit
        self.keepalive = keepalive
        self.links: dict[str, Link] = {}
        self.bytes_out = 0
        self.bytes_in = 0
        self.writes = 0
        self.failures: dict[str, int] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve links until cancelled; then every link's streams are reset."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for link in list(self.links.values()):
                link.down = True
                for s in link.streams:
                    await s.reset()
            self.links.clear()

    def neighbours(self) -> list[str]:
        return sorted(self.links)

    def queued_bytes(self, peer: str) -> int:
        link = self.links.get(peer)
        return link.queued if link is not None else 0

    # -- writing -------------------------------------------------------------------------------

    def send(self, peer: str, frame: bytes) -> None:
        """Queue one framed cell, or several back to back (a SendCells), for `peer` (dialling
        it when there is no link). More than MAX_WRITE bytes are queued in pieces of whole
        cells, so that no stream frame exceeds MAX_FRAME."""
        link = self.links.get(peer)
        if link is None:
            if self._nursery is None:
                return
            link = self._new_link(peer)
            self._nursery.start_soon(self._dial, link)
        if link.queued + len(frame) > self.queue_limit:
            self._fail(link, f"write queue over {self.queue_limit} bytes (the neighbour does not read)")
            return
        if len(frame) > MAX_WRITE:
            mv = memoryview(frame)
            for i in range(0, len(frame), SPLIT):
                link.queue.append(mv[i:i + SPLIT])
        else:
            link.queue.append(frame)
        link.queued += len(frame)
        link.enqueued += len(frame)
        link.wake.set()

    def _new_link(self, peer: str) -> Link:
        link = Link(peer)
        self.links[peer] = link
        assert self._nursery is not None
        self._nursery.start_soon(self._writer, link)
        return link

    async def _dial(self, link: Link) -> None:
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                stream = await self.overlay.open_stream(link.peer, PROTOCOL_ID)
        except (trio.TooSlowError, FognodeError, OSError) as e:
            self._fail(link, f"dial failed: {type(e).__name__}: {e}")
            return
        if link.down:
            await stream.reset()
            return
        self._attach(link, stream)
        if link.writer is not stream:        # the neighbour's stream won: ours must still speak first
            await self._poke(link, stream)
        await self._read(link, stream)

    def _attach(self, link: Link, stream: FramedStream) -> None:
        link.streams.append(stream)
        if link.writer is None:
            link.writer = stream
            link.ready.set()

    async def _poke(self, link: Link, stream: FramedStream) -> None:
        """One link PADDING cell on a spare stream (not the writer); a failure ends that stream."""
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                await stream.send_bytes(Cell(0, CellCommand.PADDING, b"").frame())
            link.bytes_out += FRAME_LEN
            self.bytes_out += FRAME_LEN
        except (trio.TooSlowError, StreamClosed, LocalProtocolError, FognodeError, OSError) as e:
            self._stream_lost(link, stream, f"spare stream write failed: {e or 'timed out'}")

    async def _writer(self, link: Link) -> None:
        await link.ready.wait()
        link.spares_poked = trio.current_time()
        while not link.down:
            if not link.queue:
                link.wake = trio.Event()
                with trio.move_on_after(self.keepalive):
                    await link.wake.wait()
                if link.down:
                    return
                if not link.queue:
                    link.queue.append(Cell(0, CellCommand.PADDING, b"").frame())
                    link.queued += FRAME_LEN
                    link.enqueued += FRAME_LEN
            if trio.current_time() - link.spares_poked >= self.keepalive:   # idle or busy
                link.spares_poked = trio.current_time()
                for spare in [st for st in link.streams if st is not link.writer]:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._poke, link, spare)
            batch: list[bytes | memoryview] = []
            size = 0
            while link.queue and size < MAX_WRITE:
                if size and size + len(link.queue[0]) > MAX_FRAME:
                    break
                f = link.queue.popleft()
                batch.append(f)
                size += len(f)
            link.queued -= size
            assert link.writer is not None
            try:
                await link.writer.send_bytes(b"".join(batch))
            except (StreamClosed, LocalProtocolError, FognodeError, OSError) as e:
                self._fail(link, f"write failed: {e}")
                return
            link.bytes_out += size
            self.bytes_out += size
            self.writes += 1
            link.wrote.set()

    async def send_padding(self, peer: str, nbytes: int) -> int:
        """Queue at least `nbytes` of link PADDING cells for `peer` (dialling it if needed; the
        neighbour drops them) and return the bytes queued once the last is written. At most
        half the queue limit waits at a time, so circuits on the link are delayed, not failed.
        Cells are queued one by one like any others, so the writer's batches stay within
        MAX_WRITE plus one cell (what a neighbour accepts as one frame). A bandwidth test of
        one raw stream (onion.link_test); OnionError saying why if the link fails (a dial that
        fails, too) or if a write takes over DIAL_TIMEOUT."""
        frame = Cell(0, CellCommand.PADDING, b"").frame()
        burst = 64
        queued = 0
        link = self.links.get(peer)
        while True:
            if queued and (link is None or link.down):
                raise OnionError(f"the link to {peer} failed"
                                 + (f": {link.why}" if link is not None and link.why else ""))
            if queued < nbytes and (link is None or link.queued + burst * len(frame) <= self.queue_limit // 2):
                for _ in range(burst):
                    self.send(peer, frame)            # the first one dials
                queued += burst * len(frame)
                link = self.links.get(peer)
                continue
            assert link is not None
            if queued >= nbytes and link.bytes_out >= link.enqueued:
                return queued
            link.wrote = trio.Event()
            with trio.move_on_after(DIAL_TIMEOUT) as stalled:
                await link.wrote.wait()
            if stalled.cancelled_caught:
                raise OnionError(f"no write to {peer} completed within {DIAL_TIMEOUT:g} s")

    # -- reading -------------------------------------------------------------------------------

    async def serve_inbound(self, stream: FramedStream) -> None:
        """The stream handler of PROTOCOL_ID: the stream joins the peer's link (its writer if
        the link has none yet) and is read until it ends."""
        peer = stream.remote_peer
        link = self.links.get(peer)
        if link is None:
            if self._nursery is None:
                return
            link = self._new_link(peer)
            link.inbound = True
        self._attach(link, stream)
        await self._read(link, stream)

    async def _read(self, link: Link, stream: FramedStream) -> None:
        framer = CellFramer()
        try:
            while not link.down:
                data = await stream.recv_bytes(max_size=MAX_FRAME)
                link.bytes_in += len(data)
                self.bytes_in += len(data)
                self.on_bytes(link.peer, data, framer)
        except StreamClosed as e:
            self._stream_lost(link, stream, f"stream ended: {e}")
        except RemoteProtocolError as e:
            self.overlay.penalize(link.peer, str(e), protocol=PROTOCOL_ID)
            self._fail(link, str(e))
        except (FognodeError, OSError) as e:
            self._stream_lost(link, stream, f"read failed: {type(e).__name__}: {e}")

    def _stream_lost(self, link: Link, stream: FramedStream, why: str) -> None:
        """`stream` of `link` ended: the link fails if it was the writer or the last stream,
        else the spare stream is dropped alone."""
        if link.down:
            return
        if stream is not link.writer and stream in link.streams and len(link.streams) > 1:
            link.streams.remove(stream)
            log.debug("onion link to %s: a spare stream ended (%s); the link stays", link.peer, why)
            if self._nursery is not None:
                self._nursery.start_soon(stream.reset)
            return
        self._fail(link, why)

    # -- failure -------------------------------------------------------------------------------

    def _fail(self, link: Link, why: str) -> None:
        if link.down:
            return
        link.down = True
        link.why = why
        link.wake.set()
        link.ready.set()
        link.wrote.set()                 # a link_test waiting for a write learns why at once
        if self.links.get(link.peer) is link:
            del self.links[link.peer]
        self.failures[link.peer] = self.failures.get(link.peer, 0) + 1
        log.debug("onion link to %s down: %s", link.peer, why)
        if self._nursery is not None:
            try:
                self._nursery.start_soon(self._close, link)
            except RuntimeError:    # the nursery is closing: the daemon is stopping and its
                pass                # host closes every stream anyway
        self.on_down(link.peer, why)

    async def _close(self, link: Link) -> None:
        for s in link.streams:
            await s.reset()

