"""Framed streams over libp2p streams, and the one wrapper every stream handler runs in.

Frame: u32 big-endian length, then that many bytes. `send`/`recv` carry one canonical msgpack
value per frame (node/wire.py). Workarounds for py-libp2p 0.8.1 that live here:

- bite 3: `stream.read()` raises `StreamEOF` at end of stream (and the unframed peer hung for
  240 s): every read goes through `_read_exact`, which turns EOF/reset into `StreamClosed`.
- bite 2: an exception escaping a stream handler kills the whole host (`host.run()` raised an
  ExceptionGroup): `guard_handler` catches everything, resets the stream and logs.
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
from fognode.node.wire import pack, unpack

log = logging.getLogger("fognode.streams")

DEFAULT_MAX_FRAME = 4 * 1024 * 1024  # bytes of one frame unless the caller says otherwise
_HEADER = struct.Struct(">I")
_READ_CHUNK = 1 << 20  # the most we ask the muxer for in one read

# Everything py-libp2p raises when the other side (or the connection) goes away mid-read/write.
_CLOSED_ERRORS: tuple[type[BaseException], ...] = (Libp2pStreamError, MuxedStreamError, EOFError,
                                                   ConnectionError)


class Libp2pFramedStream:
    """`FramedStream` (node/overlay.py) on one py-libp2p stream.

    Not safe for two concurrent readers or two concurrent writers; one of each is fine.
    """

    def __init__(self, stream: INetStream, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._stream = stream
        self._buf = bytearray()
        self.max_frame = max_frame
        self.remote_peer = str(stream.muxed_conn.peer_id)
        self.protocol_id = str(stream.get_protocol() or "")

    @property
    def raw(self) -> INetStream:
        """The underlying py-libp2p stream (for the host only)."""
        return self._stream

    async def send_bytes(self, data: bytes) -> None:
        """Write one frame. Raises LocalProtocolError if over `max_frame`, StreamClosed if the
        stream is gone. Awaits the muxer's flow control; cancellable."""
        if len(data) > self.max_frame:
            raise LocalProtocolError(
                f"frame of {len(data)} bytes is over this stream's {self.max_frame}-byte limit")
        try:
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
        header = await self._read_exact(_HEADER.size)
        (length,) = _HEADER.unpack(header)
        if length > limit:
            await self.reset()
            raise RemoteProtocolError(
                f"frame of {length} bytes on {self.protocol_id} is over the {limit}-byte limit",
                peer=self.remote_peer)
        return await self._read_exact(length)

    async def recv(self, *, max_size: int | None = None) -> Any:
        """Read one frame and decode it with wire.unpack (no ext types). Raises as recv_bytes,
        plus RemoteProtocolError for bad msgpack."""
        data = await self.recv_bytes(max_size=max_size)
        try:
            return unpack(data, max_size=len(data) + 1, what=f"frame on {self.protocol_id}")
        except RemoteProtocolError as e:
            raise RemoteProtocolError(str(e), peer=self.remote_peer) from None

    async def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            try:
                chunk = await self._stream.read(min(_READ_CHUNK, max(n - len(self._buf), 1 << 16)))
            except _CLOSED_ERRORS:
                chunk = b""
            if not chunk:
                got = len(self._buf)
                raise StreamClosed(
                    f"stream from {self.remote_peer} ({self.protocol_id}) ended"
                    + (f" after {got} of {n} bytes of a frame" if got else ""))
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def close(self) -> None:
        """Half-close our side (the peer reads EOF) and free the stream. Never raises."""
        try:
            await self._stream.close()
        except Exception:  # already reset or the connection is gone: nothing left to free
            pass

    async def reset(self) -> None:
        """Abort the stream in both directions. Never raises."""
        try:
            await self._stream.reset()
        except Exception:  # already gone
            pass


FramedHandler = Callable[[Libp2pFramedStream], Awaitable[None]]
RawHandler = Callable[[INetStream], Awaitable[None]]


def guard_handler(protocol_id: str, handler: FramedHandler, *,
                  max_frame: int = DEFAULT_MAX_FRAME,
                  on_remote_error: Callable[[str, RemoteProtocolError], None] | None = None,
                  ) -> RawHandler:
    """Wrap a role's handler so nothing it raises reaches py-libp2p (bite 2: an exception
    escaping a handler took the whole host down with an ExceptionGroup from `host.run()`).

    RemoteProtocolError is the peer's fault: reported to `on_remote_error` (the host's logs a
    rate-limited WARNING, counts it and lowers the peer's score; without one it is logged at
    WARNING here), stream reset. StreamClosed is logged at DEBUG.
    Anything else is our bug: logged with its traceback at ERROR, stream reset. Cancellation
    passes through. After a normal return the stream is closed.
    """

    async def run(raw: INetStream) -> None:
        fs = Libp2pFramedStream(raw, max_frame=max_frame)
        fs.protocol_id = protocol_id
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

    return run
