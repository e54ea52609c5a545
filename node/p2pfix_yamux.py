"""py-libp2p 0.8.1 fix: a yamux frame write without two extra scheduler hops.

Long because: seven fixes of py-libp2p's one Yamux class, each with its upstream report, share
its subclasses and the install that swaps them in.

Symptom (upstream report form). `libp2p/stream_muxer/yamux/yamux.py: Yamux._write_frame`
takes the connection's write lock (`trio.Lock`: an uncontended acquire still yields to the
scheduler), writes, and then calls `trio.lowlevel.checkpoint()` once more. The secure
connection's write below it checkpoints in `send_all` anyway, so every frame (data, window
update, SYN, FIN) costs two extra scheduler iterations on a chain that is otherwise
sequential; the connection-wide `streams_lock`, taken on every `read_stream` call and for every
incoming frame, adds one more per use. Opening one stream between two hosts spent 28 of its
task steps in `_write_frame`'s two checkpoints and 13 in `read_stream`'s lock.
Reproduction: two hosts on 127.0.0.1 in one `trio.run`, a `trio.abc.Instrument` counting
`before_io_wait` around `host.new_stream(peer, [proto])` and recording, in
`after_task_step`, where each task stopped (fognode: `python -m fognode.tools.bench.stream_open`).

Fix. `QuickYamux(Yamux)` replaces the connection's `_write_lock` and `streams_lock` with
node/p2pfix_tcpio.py's `QuickLock` (the same mutual exclusion; an uncontended acquire does not
yield, a contended one waits as before), its `stream_backlog_semaphore` (taken by every
`open_stream`) with a `QuickSemaphore` of the same 256 slots (node/p2pfix_streamopen.py), and
writes a frame without the trailing checkpoint. The bytes on the wire are unchanged.

A third cost: `YamuxStream._auto_tune_and_send_window_update`, run after every read, sends a
WINDOW_UPDATE for nearly every read however small (its "partial slack" branch and, by
default, `PY_YAMUX_RELEASE_ON_READ=1`), and its auto-tuning doubles the window on each of
them: one stream open put 7 WINDOW_UPDATE frames on the wire (increments 2 B to 2 MiB) next to
its 4 data frames, each a Noise frame, a `send_all` and a frame for the other side to handle.
go-yamux (`Stream.sendWindowUpdate`) sends one only when the window to give back reaches half
of the target (hysteresis), auto-tuning at that moment. `QuickYamuxStream` does exactly that
for streams of a QuickYamux connection, and takes its window, close and writer locks without
a scheduler hop when they are free (QuickLock). Peers see fewer, larger window updates, as from go-yamux; the receive window
offered never shrinks below half of the target, so no sender stalls.

A fourth: the auto-tuning doubles a stream's window (`target_recv_window`, 256 KiB up to
`MAX_WINDOW_SIZE` = 16 MiB) whenever window updates come within 4 RTT, and nothing accounts
for it. A peer that keeps within its window can park that much on a stream nobody reads (a
handler busy between frames, or one that stopped reading), and as much again on every other
stream it had grown, until a deadline resets the stream; after our reset py-libp2p still keeps
the unread bytes for its stale-stream sweeper (60 to 90 s).
Reproduction: tests/node/test_yamux_budget.py. On a link whose RTT is 1 s, 6 streams whose
handler read 4 MiB fast and then stopped had 4 MiB windows; a host that wrote all the window
it was given parked 12.4 MiB in the victim's Yamux buffers, and
`fognode_node_stream_buffered_bytes` said 0 (on loopback growth depends on scheduling: 4
streams parked 5.5 MiB at load 22).

Fix, as go-yamux, which reserves each growth from go-libp2p's resource-manager scope and does
not grow when the reservation fails: with a budget registered for its host (`budget()`:
fognode's `ResourceGate.window_budget`, node/resources.py), `QuickYamuxStream` charges each
growth to the stream's peer, within rcmgr.WINDOW_SHARE of its and the node's buffered-bytes
budgets; what is not granted is not grown (the same test: 2.7 MiB parked, 2 MiB charged). The
charge is given back when the stream leaves its connection's table (`_StreamTable`: every path,
close, reset, sweep, connection close), and a stream we reset drops its unread bytes at once.
The auto-tuning's RTT is taken as at least `MIN_TUNING_RTT` (5 ms): the ping RTT on loopback
or a LAN is 0.1-1 ms, but a window update comes back only once a Python reader has read, so
whether a fast stream's window grew was a matter of chance (an onion link stream ran at 28-40
MB/s in some benchmark runs and 150-250 MB/s in others on a quiet machine).
A stream's initial 256 KiB is the protocol's (the peer may send it unasked) and stays
uncharged: the stream limits bound it.

A fifth: the per-frame and per-byte cost of py-libp2p's read and write paths.
`YamuxStream.write` takes its locks through contextlib's async context managers and sends one
64 KiB frame per `_write_frame` (each a TCP write; below it, py-libp2p's session cuts the frame
into two Noise messages with a `send_all` each, node/p2pfix_noiseio.py); `Yamux.read_stream`
builds three debug-log f-strings per call and copies what it returns twice;
`_read_data_body` reads a body through `read_exactly` (two more copies) under a
`trio.fail_after` even when the bytes are already decrypted; `_grow_threshold` reads two
environment variables per read. Reproduction: py-spy `--gil` on the daemons of
`python -m fognode.tools.bench.onion` (Yamux and the session's read path about 30 % of the
samples) or `python -m fognode.tools.bench.ledger` (8 % in YamuxStream.write alone).
Fix, on QuickYamux connections only: `QuickYamuxStream.write` builds every frame the send
window allows, up to WRITE_BATCH bytes, each filling one Noise message (FRAME_DATA), and
hands them to the connection together (one TCP write), with the same locks taken directly; `QuickYamux.read_stream` is py-libp2p's with
the same outcomes in the same order, without the f-strings and with one copy (none when the
stream's only reader, node/streams.py's framed stream, set `hand_over`: a read that takes the
whole buffer, of at least HAND_OVER_MIN bytes, gets the bytearray itself and the stream a new
one);
`_read_data_body` takes a body from the session's decrypted bytes without a scheduler hop or a
cancel scope when they hold it, and otherwise reads it under py-libp2p's timeout;
`_grow_threshold` is half the target window (go-yamux; the env knobs are py-libp2p's
benchmark switches). `QuickYamuxStream.write` also takes a `PrefixedData` (a framed stream's
4-byte length and its body, node/streams.py) and builds the frames from both, so a large frame's
body is copied once on its way into Yamux frames, not twice (header join, then frame join).

A sixth: a writer whose send window is spent waits in `YamuxStream.write`, which polls the
window every 10 ms (`trio.sleep(0.01)`; QuickYamuxStream's `_wait_for_window` copied it), so the window update that arrives a fraction
of a millisecond later is seen up to 10 ms late. Every transfer over a new stream's 256 KiB
window meets it: a 0.58 MB frame (an FL model) on a fresh stream took 12.2 ms on 127.0.0.1,
against 5.8 for py-libp2p's own stack, which sends its window updates earlier. Reproduction:
`python -m fognode.tools.bench.stream_bulk --fresh`. go-yamux wakes the writer from the update
(`Stream.sendNotifyCh`). Fix: `QuickYamuxStream.send_window` is a property whose increase sets
the event a waiting writer sleeps on, whichever path grows it; the same transfer takes 2.5 ms.

A seventh, whole writes. `YamuxStream.write` holds the stream's write lock only while it
takes window, so two tasks writing on one stream interleave their frames whenever a write is
larger than the window left (go-yamux holds `Stream.writeLock` for the whole write); and a write
cut part-way (a cancel, an error) leaves part of a message on the stream, which the next
write's bytes then follow. A framed protocol reads a spliced message: on pubsub streams (py-libp2p's
per-peer sender and gossipsub's direct `write_msg` calls share one) the receiver failed with
DecodeError and charged an honest peer (session 32: three validators charged at once by the
node they had just been cut off from, as it stopped). Reproduction:
tests/node/test_yamux_whole_writes.py (two 1 MiB writes at once arrived as 4 runs). Fix:
`QuickYamuxStream.write` holds `whole_write` (a QuickLock) for the whole write, and a write that
ends with some but not all of its bytes possibly sent resets the stream (shielded, at most
END_BOUND, as node/streams.py's close and reset), so the peer sees a reset, never a spliced
message.

Installation is a monkeypatch, because the constructor option is ignored (a second upstream
bug): `new_host(muxer_opt={"/yamux/1.0.0": cls})` accepts a class, but
`libp2p/stream_muxer/muxer_multistream.py: MuxerMultistream.new_conn` builds `Yamux(...)` by
name whenever `/yamux/1.0.0` is negotiated, and Yamux builds `YamuxStream(...)` by name.
`install()` rebinds that module's `Yamux` name to `yamux_for`, which builds a QuickYamux only
for connections secured by node/p2pfix_tcpio.py's `BufferingNoise` (fognode's hosts; it marks
them) and py-libp2p's Yamux for any other host in the process, and rebinds `YamuxStream` in
libp2p.stream_muxer.yamux.yamux to `QuickYamuxStream`, which behaves as py-libp2p's stream
unless its connection is a QuickYamux.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

import libp2p.stream_muxer.muxer_multistream as _muxer_multistream_mod
import libp2p.stream_muxer.yamux.yamux as _yamux_mod
import trio
from libp2p.io.exceptions import IncompleteReadError
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH
from libp2p.stream_muxer.exceptions import MuxedStreamEOF, MuxedStreamError, MuxedStreamReset
from libp2p.stream_muxer.yamux.yamux import (HEADER_SIZE, MAX_WINDOW_SIZE,
                                             TYPE_DATA, YAMUX_HEADER_FORMAT, Yamux, YamuxStream,
                                             _yamux_data_read_timeout)

from fognode.node import p2pfix_yamux_reader
from fognode.node.p2pfix_noiseio import QuickNoiseSession
from fognode.node.p2pfix_tcpio import QuickLock, QuickSemaphore, is_buffered


class WindowBudget(Protocol):
    """What window growth is charged to (node/resources.py `WindowBudget`)."""

    def grow(self, peer: str, n: int) -> int: ...          # charge up to n; returns how many
    def give_back(self, peer: str, n: int) -> None: ...


_budgets: dict[str, WindowBudget] = {}    # local peer id (base58) -> its host's budget

# The auto-tuning's RTT is never taken below this. Its ping RTT is answered by the connection's
# reader task (0.1-1 ms on loopback or a LAN), but a window update waits for the application
# to read, which in a Python daemon takes milliseconds; with 4 x the ping RTT as the limit, a
# fast stream's window grew only in some runs (an onion link stream measured 28-40 MB/s at its
# 256 KiB window in some runs, 150-250 MB/s grown in others, on a quiet machine). Growth stays
# charged to the budget as before.
MIN_TUNING_RTT = 0.005

# Seconds a stream's close or reset that must not be cut (`end_uncut`) may take, cancelled or
# not: one FIN or RST frame, waiting for the connection's write lock.
END_BOUND = 1.0

# The most DATA bytes one QuickYamuxStream.write hands to the connection in one TCP write (as
# several frames of at most 64 KiB each, within the send window).
WRITE_BATCH = 1 << 20
# The data bytes of a DATA frame QuickYamuxStream.write builds: header and data fill one Noise
# message (65,519 plaintext bytes), so the reader takes each frame from one decrypted message.
# Any size up to the send window is valid Yamux; go-yamux's own frames are at most 64 KiB.
FRAME_DATA = MAX_PLAINTEXT_LENGTH - HEADER_SIZE
# A writer waiting for window checks this often whether its stream closed meanwhile (a window
# update wakes it at once: QuickYamuxStream.send_window)
WINDOW_POLL = 0.01
# A `hand_over` stream's read that takes at least this many bytes gets the buffer itself;
# below it a copy is as cheap, and its reader returns the bytes as they are
HAND_OVER_MIN = 1 << 16


def budget(local_peer: str, b: WindowBudget) -> Callable[[], None]:
    """Charge the window growth of streams on new connections of the host `local_peer` to
    `b`; returns the function that stops it."""
    _budgets[local_peer] = b

    def unregister() -> None:
        if _budgets.get(local_peer) is b:
            del _budgets[local_peer]
    return unregister


def _local_peer(conn: Any) -> str:
    try:
        return str(conn.get_local_peer())
    except Exception:   # a connection without a secured layer (not ours)
        return ""


class _StreamTable(dict[int, Any]):
    """A connection's `streams`: a stream that leaves it gives back its window charge."""

    def _gone(self, stream: Any) -> None:
        if isinstance(stream, QuickYamuxStream):
            stream.give_back_window()

    def __delitem__(self, key: int) -> None:
        stream = self[key]
        super().__delitem__(key)
        self._gone(stream)

    def pop(self, key: int, *default: Any) -> Any:
        stream = super().pop(key, *default)
        self._gone(stream)
        return stream

    def clear(self) -> None:
        streams = list(self.values())
        super().clear()
        for stream in streams:
            self._gone(stream)


class QuickYamux(Yamux):
    """py-libp2p's Yamux with QuickLocks and one scheduler hop per frame write, window growth
    charged to a budget, and lean read paths (module doc). Its frame reader
    (`handle_incoming`) is py-libp2p's, but on a QuickNoiseSession plain DATA and
    WINDOW_UPDATE frames are handled before it sees them (node/p2pfix_yamux_reader.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams_lock = QuickLock()
        self._write_lock = QuickLock()
        self.stream_backlog_semaphore = QuickSemaphore(self.stream_backlog_semaphore.value)
        self.streams = _StreamTable()
        self.window_budget: WindowBudget | None = _budgets.get(_local_peer(self.secured_conn))
        if isinstance(self.secured_conn, QuickNoiseSession):
            p2pfix_yamux_reader.serve(self.secured_conn, self)

    async def _write_frame(self, data: bytes) -> None:
        """Write one whole frame (header and body in one piece; QuickYamuxStream.write may
        pass several frames of one stream), serialising writers."""
        async with self._write_lock:
            await self.secured_conn.write(data)

    async def _write_frames(self, frames: list[bytes]) -> None:
        """Write whole frames in one TCP write: on a QuickNoiseSession each frame of at most
        65,519 bytes is one Noise message (QuickYamuxStream makes them so)."""
        async with self._write_lock:
            conn = self.secured_conn
            if isinstance(conn, QuickNoiseSession):
                await conn.write_messages(frames)
            else:
                await conn.write(frames[0] if len(frames) == 1 else b"".join(frames))

    async def _read_data_body(self, length: int) -> bytes:
        """A DATA frame's body: from the session's decrypted bytes without a hop or a cancel
        scope when they hold it (node/p2pfix_noiseio.py), else read under py-libp2p's timeout
        without its read loop's copies."""
        conn = self.secured_conn
        if not isinstance(conn, QuickNoiseSession):
            return await super()._read_data_body(length)
        data = conn.take(length)
        if data is not None:
            return data
        with trio.fail_after(_yamux_data_read_timeout()):
            data = await conn.read(length)
        if len(data) < length:
            raise IncompleteReadError(f"connection closed: {len(data)} of a {length}-byte "
                                      f"frame body", expected_bytes=length,
                                      received_bytes=len(data))
        return data

    async def read_stream(self, stream_id: int, n: int = -1) -> bytes:
        """py-libp2p's read_stream (same outcomes in the same order) without its three
        debug-log f-strings per call, and one copy of what it returns instead of two; none,
        the buffer itself (a bytearray), for a `hand_over` stream read whole (HAND_OVER_MIN)."""
        if n is None:
            n = -1
        while True:
            async with self.streams_lock:
                stream = self.streams.get(stream_id)
                if stream is None:
                    raise MuxedStreamEOF("Stream closed")
                if self.event_shutting_down.is_set():
                    raise MuxedStreamEOF("Connection shut down")
                buffer = self.stream_buffers.get(stream_id)
                if buffer is None:
                    if stream.reset_received:
                        raise MuxedStreamReset("Stream was reset")
                    raise MuxedStreamEOF("Stream buffer closed")
                if buffer and (stream.recv_closed or not stream.reset_received):
                    if n == -1 or n >= len(buffer):
                        if stream.hand_over and len(buffer) >= HAND_OVER_MIN:   # no copy
                            data = buffer
                            self.stream_buffers[stream_id] = bytearray()
                        else:
                            data = bytes(buffer)
                            buffer.clear()
                    else:
                        with memoryview(buffer) as view:
                            data = view[:n].tobytes()
                        del buffer[:n]
                    if stream.closed:
                        self._finalize_stream_locked(stream, fully_closed=True)
                    return data
                if stream.reset_received:
                    raise MuxedStreamReset("Stream was reset")
                if stream.recv_closed:
                    raise MuxedStreamEOF("Stream is closed for receiving")
                if stream.closed:
                    raise MuxedStreamReset("Stream is reset or closed")
            try:
                await self.stream_events[stream_id].wait()
                self.stream_events[stream_id] = trio.Event()
            except KeyError:
                raise MuxedStreamEOF("Stream was removed") from None


@dataclass(frozen=True)
class PrefixedData:
    """`prefix + body`, for QuickYamuxStream.write without that join (node/streams.py puts
    a frame's length before its body so). Only a QuickYamuxStream on a QuickYamux connection
    takes it (through py-libp2p's NetStream.write, which hands `data` on untouched)."""

    prefix: bytes
    body: bytes | bytearray | memoryview

    def __len__(self) -> int:
        return len(self.prefix) + len(self.body)


async def end_uncut(end: Callable[[], Awaitable[None]]) -> None:
    """Run a stream's close or reset shielded from the caller's cancellation, for at most
    END_BOUND seconds, ignoring errors (already reset, connection gone): a framed stream's
    close and reset (node/streams.py) and the reset of a stream whose write was cut part-way
    ("Whole writes"). The caller sees its cancellation at its next checkpoint."""
    with trio.CancelScope(shield=True), trio.move_on_after(END_BOUND):
        try:
            await end()
        except Exception:  # already reset or the connection is gone: nothing left to free
            pass


class QuickYamuxStream(YamuxStream):
    """py-libp2p's YamuxStream; on a QuickYamux connection, window updates as go-yamux and
    QuickLocks for its window, close and writer locks."""

    def __init__(self, stream_id: int, conn: Any, is_initiator: bool) -> None:
        super().__init__(stream_id, conn, is_initiator)
        self.window_charged = 0      # window growth charged to the peer (QuickYamux budget)
        # Set by the stream's only reader when it takes bytearrays (node/streams.py):
        # QuickYamux.read_stream then hands over the buffer it takes whole instead of copying it
        self.hand_over = False
        if isinstance(conn, QuickYamux):
            self.window_lock = QuickLock()
            self.close_lock = QuickLock()
            # ReadWriteLock's writer semaphore (released by whichever reader leaves last)
            self.rw_lock._writer_lock = QuickLock()
            self.whole_write = QuickLock()   # one write at a time, whole (module doc, "Whole writes")

    def _grow_threshold(self) -> int:
        if not isinstance(self.conn, QuickYamux):
            return super()._grow_threshold()
        return self.target_recv_window // 2     # go-yamux; py-libp2p reads two env vars per call

    async def write(self, data: bytes | PrefixedData) -> None:
        """py-libp2p's write; on a QuickYamux connection, the frames the send window allows
        (up to WRITE_BATCH bytes) go to the connection in one `_write_frame` (one TCP write),
        and the locks are taken without contextlib's async context managers. `data` may be a
        PrefixedData there. One write at a time per stream, whole; a write ended part-way by an
        error or a cancel resets the stream (module doc, "Whole writes")."""
        conn = self.conn
        if not isinstance(conn, QuickYamux):
            if isinstance(data, PrefixedData):
                data = data.prefix + bytes(data.body)
            await super().write(data)
            return
        if self.send_closed:
            raise MuxedStreamError("Stream is closed for sending")
        total = len(data)
        sent = 0
        going = 0       # bytes of the batch being written: they may or may not be out if it raises
        await self.whole_write.acquire()
        try:
            while sent < total:
                frames: list[bytes] = []
                while not frames:
                    frames, batch = await self._take_window(data, sent)
                    if not frames:
                        await self._wait_for_window()
                going = batch
                await conn._write_frames(frames)
                sent, going = sent + batch, 0
        finally:
            self.whole_write.release()
            if sent < total and (sent > 0 or 0 < going < total - sent):
                await end_uncut(self.reset)

    async def _take_window(self, data: bytes | PrefixedData, sent: int) -> tuple[list[bytes], int]:
        """The frames the send window allows now, and their data bytes (none: wait for it)."""
        await self.rw_lock.acquire_write()
        try:
            if self.send_closed:
                raise MuxedStreamError("Stream is closed for sending")
            await self.window_lock.acquire()
            try:
                if self.closed:
                    raise MuxedStreamError("Stream is closed")
                return self._frames(data, sent)
            finally:
                self.window_lock.release()
        finally:
            self.rw_lock.release_write()

    def _frames(self, data: bytes | PrefixedData, sent: int) -> tuple[list[bytes], int]:
        """DATA frames for `data` from `sent` on, as far as the send window and WRITE_BATCH
        allow, and the data bytes they carry; those are taken from the window. Called under
        the window lock. A PrefixedData's prefix and body are copied once, into the frames."""
        frames = []
        total = len(data)
        if isinstance(data, PrefixedData):
            prefix, view = data.prefix, memoryview(data.body)
        else:
            prefix, view = b"", memoryview(data)
        p = len(prefix)
        batch = 0
        while sent < total and self.send_window > 0 and batch < WRITE_BATCH:
            n = min(self.send_window, FRAME_DATA, total - sent)
            self.send_window -= n
            header = struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_DATA, 0, self.stream_id, n)
            if sent >= p:
                frames.append(header + view[sent - p:sent - p + n])
            else:
                frames.append(b"".join((header, prefix[sent:sent + n],
                                        view[:max(0, sent + n - p)])))
            sent += n
            batch += n
        return frames, batch

    def has_data(self) -> bool:
        """Bytes are buffered for this stream: a read returns at once."""
        return bool(self.conn.stream_buffers.get(self.stream_id))

    @property
    def send_window(self) -> int:
        """Bytes we may still send (py-libp2p's attribute); an increase wakes a writer waiting
        in `_wait_for_window` at once, whichever path makes it (our frame reader, or
        handle_incoming for a SYN or ACK that carries a window)."""
        return self.__dict__["_send_window"]  # type: ignore[no-any-return]

    @send_window.setter
    def send_window(self, value: int) -> None:
        d = self.__dict__
        grew = value > d.get("_send_window", 0)
        d["_send_window"] = value
        if grew:
            opened = d.get("_window_opened")
            if opened is not None:
                opened.set()

    async def _wait_for_window(self) -> None:
        """py-libp2p's wait for a window update (at most 5 s), woken by the update itself
        (`send_window`) instead of py-libp2p's 10 ms poll; a stream closed meanwhile is still
        noticed by a check every WINDOW_POLL seconds."""
        self._zero_window_waits += 1
        d = self.__dict__
        with trio.move_on_after(5.0) as cancel_scope:
            while not (self.send_window > 0 or self.closed):
                opened = d.get("_window_opened")
                if opened is None or opened.is_set():     # shared by writers waiting together
                    opened = d["_window_opened"] = trio.Event()
                with trio.move_on_after(WINDOW_POLL):
                    await opened.wait()
        if cancel_scope.cancelled_caught:
            raise MuxedStreamError("Timed out waiting for window update after 5 seconds.")

    async def _auto_tune_and_send_window_update(self, *, bytes_read: int = 0) -> None:
        if not isinstance(self.conn, QuickYamux):
            await super()._auto_tune_and_send_window_update(bytes_read=bytes_read)
            return
        await self.window_lock.acquire()
        try:
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            delta = self.target_recv_window - (self.recv_window + buffered)
            if delta <= 0 or delta < self._grow_threshold():
                return
            increment = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
        finally:
            self.window_lock.release()
        if increment > 0:
            await self.send_window_update(increment, skip_lock=True)

    def _apply_autotune_epoch(self, buffered: int) -> int:
        """py-libp2p's auto-tuning (double the window when updates come within 4 RTT), each
        growth charged to the connection's budget and only as far as it grants."""
        conn = self.conn
        budget = conn.window_budget if isinstance(conn, QuickYamux) else None
        if budget is None:
            return super()._apply_autotune_epoch(buffered)
        rtt = max(self._effective_rtt(), MIN_TUNING_RTT)
        now = trio.current_time()
        if rtt <= 0 or (self.epoch_start > 0 and now - self.epoch_start >= rtt * 4):
            self.epoch_start = now
            return 0
        self.epoch_start = now
        want = min(self.target_recv_window * 2, MAX_WINDOW_SIZE) - self.target_recv_window
        if want <= 0 or self.closed or conn.streams.get(self.stream_id) is not self:
            return 0      # full size, or gone from the table (its charge was given back)
        got = budget.grow(str(conn.peer_id), want)
        self.window_charged += got
        self.target_recv_window += got
        grow = self.target_recv_window - (self.recv_window + buffered)
        if grow <= 0:
            return 0
        self.recv_window += grow
        return grow

    async def reset(self) -> None:
        """py-libp2p's reset; on a QuickYamux connection the unread bytes go too. py-libp2p
        keeps them (up to a whole window) for its stale-stream sweeper, 60 to 90 s later,
        though nobody reads a stream after resetting it; go-yamux frees them at once."""
        await super().reset()
        if isinstance(self.conn, QuickYamux):
            buf = self.conn.stream_buffers.get(self.stream_id)
            if buf:
                buf.clear()
                await self.conn._finalize_stream(self, fully_closed=True)

    def give_back_window(self) -> None:
        """The stream left its connection: give back the window growth charged for it."""
        budget = self.conn.window_budget if isinstance(self.conn, QuickYamux) else None
        if budget is not None and self.window_charged:
            budget.give_back(str(self.conn.peer_id), self.window_charged)
        self.window_charged = 0


def yamux_for(conn: Any, *args: Any, **kwargs: Any) -> Yamux:
    """Stands in for the name `Yamux` in py-libp2p's muxer_multistream module."""
    cls = QuickYamux if is_buffered(conn) else Yamux
    return cls(conn, *args, **kwargs)


def install() -> None:
    """Rebind `Yamux` in libp2p.stream_muxer.muxer_multistream and `YamuxStream` in
    libp2p.stream_muxer.yamux.yamux, and install node/p2pfix_yamux_reader.py (idempotent)."""
    setattr(_muxer_multistream_mod, "Yamux", yamux_for)
    setattr(_yamux_mod, "YamuxStream", QuickYamuxStream)
    p2pfix_yamux_reader.install()
