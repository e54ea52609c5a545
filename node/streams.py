"""Framed streams over libp2p streams, and the one wrapper every stream handler runs in.

Frame: u32 big-endian length, then that many bytes. `send`/`recv` carry one canonical msgpack
value per frame (node/wire.py). Workarounds for py-libp2p 0.8.1 that live here:

- bite 3: `stream.read()` raises `StreamEOF` at end of stream (and the unframed peer hung for
  240 s): every read goes through `_read_exact`, which turns EOF/reset into `StreamClosed`.
- bite 2: an exception escaping a stream handler kills the whole host (`host.run()` raised an
  ExceptionGroup): `guard_handler` catches everything, resets the stream and logs; `guard_raw`
  does the same for libp2p's own handlers.

Resources (node/rcmgr.py, node/resources.py): both guards take an inbound stream slot before the
handler runs and give it back after; a refused stream is reset at once. A framed stream reads a
frame as it arrives (an announced length reserves nothing) and charges the bytes it actually
holds to its peer; over the peer's or the node's budget it is reset (`StreamRefused`). Every
read has a deadline (rcmgr.StreamDeadlines): the first frame of an inbound stream, each chunk of
a frame that has begun, and the quiet time between whole frames; a missed one resets the stream
(`StreamDeadline`); a read the muxer can serve at once from bytes it holds has none. Both are
StreamClosed, so a handler that ends on StreamClosed needs nothing new.

Copies: on a fognode connection (node/p2pfix_yamux.py) the muxer hands the framed stream its
buffer (a bytearray) instead of a copy, and a frame is copied out of the chunks held once.
Window: there, a frame's length, once read and accepted, opens the stream's receive window for
the whole frame at once (node/p2pfix_yamux_ahead.py), instead of one auto-tuning step per
round trip.
"""
from __future__ import annotations

import logging
import struct
from typing import Any, Awaitable, Callable

import trio
from libp2p.network.stream.exceptions import StreamError as Libp2pStreamError
from libp2p.abc import INetStream
from libp2p.stream_muxer.exceptions import MuxedStreamError

from fognode.node.errors import LocalProtocolError, RemoteProtocolError, StreamClosed
from fognode.node.overlay import FramedStream
from fognode.node.p2pfix_yamux import PrefixedData, QuickYamux, QuickYamuxStream, end_uncut
from fognode.node.p2pfix_yamux_ahead import open_ahead
from fognode.node.rcmgr import Wait
from fognode.node.resources import BufferAccount, ResourceGate
from fognode.node.wire import pack, unpack

log = logging.getLogger("fognode.streams")

DEFAULT_MAX_FRAME = 4 * 1024 * 1024  # bytes of one frame unless the caller says otherwise
_HEADER = struct.Struct(">I")
_READ_CHUNK = 1 << 20  # the most we ask the muxer for in one read
# A frame of at least this many bytes goes to a QuickYamuxStream as its length and its body,
# not joined: the Yamux frames are built from both (one copy of the body, not two)
PREFIXED_MIN = 16 * 1024
# A frame whose body still to come is over this many bytes has its Yamux window opened for all
# of it as soon as its length is read (node/p2pfix_yamux_ahead.py; it checks the exact need)
AHEAD_MIN = 64 * 1024

# Everything py-libp2p raises when the other side (or the connection) goes away mid-read/write.
_CLOSED_ERRORS: tuple[type[BaseException], ...] = (Libp2pStreamError, MuxedStreamError, EOFError,
                                                   ConnectionError)


def _held(data: Any) -> bytes | bytearray:
    """What a stream read returned, as a chunk to hold: bytes and bytearrays as they are."""
    return data if isinstance(data, (bytes, bytearray)) else bytes(data)


class StreamDeadline(StreamClosed):
    """The peer sent nothing within a deadline (see rcmgr.StreamDeadlines); the stream was
    reset."""


class StreamRefused(StreamClosed):
    """The stream would have held more buffered bytes than its peer's or the node's budget;
    it was reset."""


class Libp2pFramedStream:
    """`FramedStream` (node/overlay.py) on one py-libp2p stream.

    With a `gate`, the bytes of unfinished frames are charged to the peer and every read has a
    deadline (`inbound` says whether first-frame and idle deadlines apply: they do on the
    handler side only). Not safe for two concurrent readers or two concurrent writers; one of
    each is fine.
    """

    def __init__(self, stream: INetStream, *, max_frame: int = DEFAULT_MAX_FRAME,
                 gate: ResourceGate | None = None, inbound: bool = False,
                 protocol_id: str | None = None) -> None:
        self._stream = stream
        self._buf: list[bytes | bytearray] = []   # read and not yet returned, in order ...
        self._off = 0                   # ... from this offset into the first
        self._held = 0                  # their total
        self.max_frame = max_frame
        self.remote_peer = str(stream.muxed_conn.peer_id)
        self.protocol_id = protocol_id or str(stream.get_protocol() or "")
        self._gate = gate
        self._inbound = inbound
        self._frames = 0
        self._account: BufferAccount | None = (
            gate.account(self.remote_peer, self.protocol_id) if gate is not None else None)
        muxed = getattr(stream, "muxed_stream", None)
        self._prefixed = isinstance(muxed, QuickYamuxStream) and isinstance(muxed.conn, QuickYamux)
        if self._prefixed:      # the muxer hands over its buffer, not a copy (_read_some)
            muxed.hand_over = True

    @property
    def raw(self) -> INetStream:
        """The underlying py-libp2p stream (for the host only)."""
        return self._stream

    async def send_bytes(self, data: bytes | memoryview) -> None:
        """Write one frame. Raises LocalProtocolError if over `max_frame`, StreamClosed if the
        stream is gone. Awaits the muxer's flow control; cancellable."""
        if len(data) > self.max_frame:
            raise LocalProtocolError(
                f"frame of {len(data)} bytes is over this stream's {self.max_frame}-byte limit")
        try:
            if self._prefixed and len(data) >= PREFIXED_MIN:    # no join of header and body
                await self._stream.write(PrefixedData(_HEADER.pack(len(data)), data))  # type: ignore[arg-type]
            else:
                await self._stream.write(_HEADER.pack(len(data)) + bytes(data))
        except _CLOSED_ERRORS as e:
            raise StreamClosed(f"stream to {self.remote_peer} closed while writing: "
                               f"{type(e).__name__}") from None

    async def send(self, obj: Any) -> None:
        """Write one canonical-msgpack frame (see send_bytes)."""
        await self.send_bytes(pack(obj))

    async def recv_bytes(self, *, max_size: int | None = None) -> bytes:
        """Read one frame. Raises StreamClosed at EOF/reset (also mid-frame) and
        RemoteProtocolError when the announced length is over `max_size` (default: the stream's
        `max_frame`); the stream is reset in that case. Cancellable."""
        limit = self.max_frame if max_size is None else min(max_size, self.max_frame)
        header = await self._read_exact(_HEADER.size, in_frame=False)
        (length,) = _HEADER.unpack(header)
        if length > limit:
            await self.reset()
            raise RemoteProtocolError(
                f"frame of {length} bytes on {self.protocol_id} is over the {limit}-byte limit",
                peer=self.remote_peer)
        if self._prefixed and length - self._held > AHEAD_MIN:   # window for all of it now
            await open_ahead(self._stream.muxed_stream, length - self._held)  # type: ignore[attr-defined]
        until = None if self._gate is None else \
            trio.current_time() + self._gate.deadlines.frame_time(length)
        body = await self._read_exact(length, in_frame=True, until=until)
        self._frames += 1
        return body

    async def recv(self, *, max_size: int | None = None) -> Any:
        """Read one frame and decode it with wire.unpack (no ext types). Raises as recv_bytes,
        plus RemoteProtocolError for bad msgpack."""
        data = await self.recv_bytes(max_size=max_size)
        try:
            return unpack(data, max_size=len(data) + 1, what=f"frame on {self.protocol_id}")
        except RemoteProtocolError as e:
            raise RemoteProtocolError(str(e), peer=self.remote_peer) from None

    async def _read_exact(self, n: int, *, in_frame: bool, until: float | None = None) -> bytes:
        """`n` bytes from the buffer, reading the rest as it arrives: each read is at most what
        the peer's budget allows and waits at most its deadline (and not past `until`, the
        frame's own deadline on trio's clock). Raises StreamClosed at EOF,
        StreamDeadline or StreamRefused (the stream is reset then)."""
        while self._held < n:
            held = self._held
            need = n - held
            want = min(_READ_CHUNK, max(need, 1 << 16))
            if self._account is not None:
                room = self._account.room()
                if room <= 0:
                    self._account.resize(held + need)   # refused: counts the reason
                    await self._refuse(f"its buffer budget is spent ({held} bytes "
                                       f"of a {n}-byte read held)")
                want = min(want, room)
            chunk = await self._read_some(want, in_frame=in_frame or held > 0, until=until)
            if not chunk:
                self._drop_buffer()
                raise StreamClosed(
                    f"stream from {self.remote_peer} ({self.protocol_id}) ended"
                    + (f" after {held} of {n} bytes of a frame" if held else ""))
            self._buf.append(chunk)
            self._held = held + len(chunk)
            if self._account is not None and self._account.resize(self._held) is not None:
                await self._refuse(f"{self._held} bytes would be over its buffer budget")
        out = self._pop(n)
        if self._account is not None:
            self._account.resize(self._held)
        return out

    def _pop(self, n: int) -> bytes:
        """The first `n` held bytes (at least that many are held). Copies only what it
        returns (once, through views of the chunks), and nothing when that is a whole `bytes`
        chunk as read; never moves what is left."""
        if n == 0:
            return b""
        parts, off = self._buf, self._off
        first = parts[0]
        self._held -= n
        if len(first) - off >= n:
            end = off + n
            if end == len(first):
                del parts[0]
                self._off = 0
                if off == 0 and type(first) is bytes:
                    return first
                return bytes(memoryview(first)[off:])
            self._off = end
            return bytes(memoryview(first)[off:end])
        pieces: list[bytes | bytearray | memoryview] = [memoryview(first)[off:] if off else first]
        got = len(first) - off
        i = 1
        self._off = 0
        while got < n:
            part = parts[i]
            need = n - got
            if len(part) > need:
                pieces.append(memoryview(part)[:need])
                self._off = need
                break
            pieces.append(part)
            got += len(part)
            i += 1
        del parts[:i]
        return b"".join(pieces)

    async def _read_some(self, want: int, *, in_frame: bool,
                         until: float | None) -> bytes | bytearray:
        """One read of at most `want` bytes under this read's deadline; b"" at EOF/reset. A
        QuickYamux stream hands over its buffer, a bytearray (kept as it is: `_pop` copies
        a frame out of the chunks once)."""
        dl = None
        if self._gate is not None and not self._muxer_has_data():
            dl = self._gate.deadlines.for_read(inbound=self._inbound, frames_received=self._frames,
                                               in_frame=in_frame)
        if dl is not None and until is not None and until - trio.current_time() < dl[1]:
            dl = (Wait.SLOW_FRAME, max(0.0, until - trio.current_time()))
        try:
            if dl is None:
                return _held(await self._stream.read(want))
            with trio.move_on_after(dl[1]):
                return _held(await self._stream.read(want))
        except _CLOSED_ERRORS:
            return b""
        assert self._gate is not None and dl is not None
        phase, seconds = dl
        what = (f"its frame came slower than {self._gate.deadlines.min_rate:g} bytes/s"
                if phase is Wait.SLOW_FRAME else f"nothing for {seconds:g} s ({phase.value})")
        self._gate.deadline_missed(phase, self.remote_peer, self.protocol_id, what)
        await self.reset()
        raise StreamDeadline(f"stream from {self.remote_peer} ({self.protocol_id}): {what}; reset")

    def _muxer_has_data(self) -> bool:
        """The muxer holds bytes of this stream, so a read returns them at once: no deadline
        (and no cancel scope) needed."""
        muxed = getattr(self._stream, "muxed_stream", None)
        return isinstance(muxed, QuickYamuxStream) and muxed.has_data()

    async def _refuse(self, why: str) -> None:
        await self.reset()
        raise StreamRefused(f"stream from {self.remote_peer} ({self.protocol_id}) reset: {why}")

    def _drop_buffer(self) -> None:
        self._buf = []
        self._off = self._held = 0
        if self._account is not None:
            self._account.release()

    @property
    def buffered(self) -> int:
        """Bytes of unfinished frames this stream holds."""
        return self._held

    async def close(self) -> None:
        """Half-close our side (the peer reads EOF) and free the stream. Never raises, and a
        cancelled caller's close goes out too, within p2pfix_yamux.END_BOUND (`end_uncut`).
        Callers close in `finally` blocks of timed-out scopes (a gossip pull, a registry ask):
        unshielded, the FIN was never written (node/p2pfix_noiseio.py, "A cancelled write":
        before that fix it was sealed and not sent, which broke the connection; after it, the
        peer's handler would wait for its idle deadline and our side would keep the stream
        until the muxer's sweep)."""
        self._drop_buffer()
        await end_uncut(self._stream.close)

    async def reset(self) -> None:
        """Abort the stream in both directions. Never raises; as `close` when cancelled."""
        self._drop_buffer()
        await end_uncut(self._stream.reset)


FramedHandler = Callable[[Libp2pFramedStream], Awaitable[None]]
RawHandler = Callable[[INetStream], Awaitable[None]]


def guard_handler(protocol_id: str, handler: FramedHandler, *,
                  max_frame: int = DEFAULT_MAX_FRAME,
                  on_remote_error: Callable[[str, RemoteProtocolError], None] | None = None,
                  gate: ResourceGate | None = None) -> RawHandler:
    """Wrap a role's handler so nothing it raises reaches py-libp2p (bite 2: an exception
    escaping a handler took the whole host down with an ExceptionGroup from `host.run()`).

    With a `gate`, the stream first takes a slot (per peer, protocol, peer+protocol, subnet and
    in total); a refused stream is reset before the handler runs, and the slot is given back
    when the handler ends. The handler's stream has the inbound deadlines and buffer budget.
    RemoteProtocolError is the peer's fault: reported to `on_remote_error` (the host's logs a
    rate-limited WARNING, counts it and lowers the peer's score; without one it is logged at
    WARNING here), stream reset. StreamClosed (also a missed deadline or a spent budget,
    counted by the gate) is logged at DEBUG. Anything else is our bug: logged with its
    traceback at ERROR, stream reset. Cancellation passes through. After a normal return the
    stream is closed.
    """

    async def run(raw: INetStream) -> None:
        slot = None
        if gate is not None:
            slot = gate.open_stream(str(raw.muxed_conn.peer_id), protocol_id, raw.muxed_conn)
            if slot is None:
                await _reset_raw(raw)
                return
        fs = Libp2pFramedStream(raw, max_frame=max_frame, gate=gate, inbound=True,
                                protocol_id=protocol_id)
        try:
            await handler(fs)
        except trio.Cancelled:
            await fs.reset()
            raise
        except RemoteProtocolError as e:
            if on_remote_error is not None:   # logs (rate-limited), counts and penalises
                on_remote_error(fs.remote_peer, e)
            else:
                log.warning("%s: %s; stream reset", protocol_id, e)
            await fs.reset()
        except StreamClosed as e:
            log.debug("%s: %s", protocol_id, e)
            await fs.reset()
        except Exception:
            log.exception("%s: handler failed on a stream from %s; stream reset",
                          protocol_id, fs.remote_peer)
            await fs.reset()
        except BaseException:
            await fs.reset()
            raise
        else:
            await fs.close()
        finally:
            fs._drop_buffer()
            if slot is not None:
                slot.release()

    return run


def guard_raw(protocol: str, fn: RawHandler, *, gate: ResourceGate | None = None,
              on_error: Callable[[str, Exception], bool] | None = None) -> RawHandler:
    """The same guard for one of libp2p's own handlers (pubsub, DHT, identify, ping): a slot
    from `gate` first (refused: reset), nothing raised reaches the host, the slot is given back
    after. Their own framing reads their streams, so no deadline or buffer budget applies.
    `on_error(peer, exc)` returns True when it took the exception as the peer's fault (and
    reported it); anything else is logged with its traceback as our bug."""

    async def guarded(stream: INetStream) -> None:
        slot = None
        if gate is not None:
            slot = gate.open_stream(str(stream.muxed_conn.peer_id), protocol, stream.muxed_conn)
            if slot is None:
                await _reset_raw(stream)
                return
        try:
            await fn(stream)
        except Exception as e:
            if on_error is None or not on_error(str(stream.muxed_conn.peer_id), e):
                log.exception("libp2p handler for %s failed; stream reset", protocol)
            await _reset_raw(stream)
        finally:
            if slot is not None:
                slot.release()

    guarded._fognode_guarded = True  # type: ignore[attr-defined]
    return guarded


async def _reset_raw(stream: INetStream) -> None:
    try:
        await stream.reset()
    except Exception:  # already gone
        pass


COALESCE_BYTES = 60 * 1024  # at most this much in one muxer write of send_frames (one yamux frame: 64 KiB)


async def send_frames(stream: FramedStream, frames: list[bytes]) -> None:
    """Write `frames` (each one frame's body) in order with as few muxer writes as they fit in:
    their headers and bodies are joined into writes of at most COALESCE_BYTES (a frame over it
    is written alone), so replies that are ready together cost one yamux frame, one Noise
    message and one TCP write instead of one each. The peer reads the same frames as from
    `send_bytes` one by one. Raises as `send_bytes` (LocalProtocolError for a frame over
    `max_frame`, checked before anything is written; StreamClosed). A cancel may cut the
    frames off at any frame boundary or inside a frame, as with `send_bytes`. Any other
    FramedStream (node/overlay.py) gets its frames by `send_bytes`, one by one."""
    if not isinstance(stream, Libp2pFramedStream):
        for data in frames:
            await stream.send_bytes(data)
        return
    for data in frames:
        if len(data) > stream.max_frame:
            raise LocalProtocolError(
                f"frame of {len(data)} bytes is over this stream's {stream.max_frame}-byte limit")
    parts: list[bytes] = []
    size = 0
    try:
        for data in frames:
            if parts and size + _HEADER.size + len(data) > COALESCE_BYTES:
                await stream.raw.write(b"".join(parts))
                parts, size = [], 0
            parts.append(_HEADER.pack(len(data)))
            parts.append(bytes(data))
            size += _HEADER.size + len(data)
        if parts:
            await stream.raw.write(b"".join(parts))
    except _CLOSED_ERRORS as e:
        raise StreamClosed(f"stream to {stream.remote_peer} closed while writing: "
                           f"{type(e).__name__}") from None
