"""py-libp2p 0.8.1 fix: buffered TCP reads and no scheduler hop for an uncontended I/O lock.

Symptom (upstream report form). `libp2p/io/trio.py: TrioTCPStream` reads exactly what it is
asked for: Noise asks for a frame's 2-byte length, then for the frame, so every Noise frame
costs two `receive_some` calls. Each read and each write also takes a `trio.Lock` first, and
an uncontended `trio.Lock.acquire` still yields to the scheduler (`cancel_shielded_checkpoint`)
before the socket call yields again. Opening one stream between two hosts on 127.0.0.1 took 89
trio scheduler iterations; 55 of the task steps in them are `TrioTCPStream.read` and 28 are
`TrioTCPStream.write`. On a loop busy with other work each iteration costs milliseconds, so a
stream open costs hundreds of milliseconds to seconds. Reproduction: two hosts (TCP, Noise,
Yamux) in one `trio.run`, a `trio.abc.Instrument` counting `before_io_wait` around
`host.new_stream(peer, [proto])` (fognode: `python -m fognode.tools.bench.stream_open`).

Fix. `BufferedTCPStream(TrioTCPStream)` reads up to `READ_CHUNK` bytes per `receive_some` and
serves later reads from that buffer (one syscall for up to four full Noise frames: in an
in-process bulk transfer, 3.3 CPU ms per MB against 3.7-4.1 with one frame per read, small
request/reply unchanged), and takes its
locks with `acquire_nowait`, waiting (a real checkpoint) only when another task holds them: the
socket call inside still checkpoints, so cancellation and fairness are as before. It is put in
place by `BufferingNoise`, a subclass of py-libp2p's Noise transport handed to `new_host` as
`sec_opt` (a constructor option): before the Noise handshake it swaps the raw connection's
`TrioTCPStream` for a `BufferedTCPStream` on the same socket. Nothing has been buffered at that
point (the old stream reads only what it is asked for), so no byte is lost or reordered; the
bytes on the wire are the same. The secured connection is marked (`is_buffered`) so that
node/p2pfix_yamux.py knows the connection is one of fognode's. The buffer is the last receive
and an offset into it (a read copies only what it returns; nothing is moved to the front), and
`read_exactly(n)` serves node/p2pfix_noiseio.py's whole Noise messages without a scheduler hop
when they are buffered.
"""
from __future__ import annotations

from types import TracebackType
from typing import Any

import trio
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.io.trio import TrioTCPStream
from libp2p.security.noise.transport import Transport as NoiseTransport

READ_CHUNK = 4 * (65535 + 2)    # up to four whole Noise frames (2-byte length + 65,535 bytes)


class QuickLock:
    """A trio.Lock (or, given one, a trio.Semaphore) whose uncontended acquire does not yield
    to the scheduler; a contended one waits as trio's does. Same mutual exclusion."""

    def __init__(self, inner: trio.Lock | trio.Semaphore | None = None) -> None:
        self._lock = inner if inner is not None else trio.Lock()

    async def acquire(self) -> None:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    def acquire_nowait(self) -> None:
        self._lock.acquire_nowait()

    def release(self) -> None:
        self._lock.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked() if isinstance(self._lock, trio.Lock) \
            else self._lock.value == 0


class BufferedTCPStream(TrioTCPStream):
    """TrioTCPStream with a read buffer and QuickLocks (module doc). Same errors as the base.

    The buffer is the last `receive_some` result and an offset into it: a read served from it
    copies only what it returns (nothing when it returns the whole rest), and nothing is ever
    moved to the front. `read_exactly` gives node/p2pfix_noiseio.py whole Noise frames without
    py-libp2p's read loop."""

    def __init__(self, stream: trio.SocketStream) -> None:
        super().__init__(stream)
        self.read_lock = QuickLock()    # type: ignore[assignment]
        self.write_lock = QuickLock()   # type: ignore[assignment]
        self._data = b""     # the bytes of the last receive not yet read, from _off on
        self._off = 0

    def buffered(self) -> int:
        """Bytes received and not yet read."""
        return len(self._data) - self._off

    def _take(self, n: int | None) -> bytes:
        """Up to `n` (None: all) buffered bytes; the buffer is not empty."""
        data, off = self._data, self._off
        size = len(data)
        end = size if n is None or off + n >= size else off + n
        out = data if off == 0 and end == size else data[off:end]
        if end == size:
            self._data, self._off = b"", 0
        else:
            self._off = end
        return out

    async def _receive(self, size: int) -> bytes:
        """One `receive_some`; b"" at EOF or when closed locally, as TrioTCPStream."""
        try:
            return await self.stream.receive_some(size)
        except trio.BrokenResourceError as error:
            raise ConnectionClosedError(
                f"TCP connection reset by remote peer: {error}", transport="tcp",
            ) from error
        except trio.ClosedResourceError:
            return b""      # closed locally: EOF, as TrioTCPStream

    async def read(self, n: int | None = None) -> bytes:
        if n is not None and n == 0:
            return b""
        async with self.read_lock:
            if self._off < len(self._data):
                return self._take(n)
            data = await self._receive(READ_CHUNK)
            if not data:
                return b""
            self._data, self._off = data, 0
            return self._take(n)

    async def read_exactly(self, n: int) -> bytes:
        """`n` bytes; fewer only at EOF. Served without a scheduler hop when buffered."""
        if len(self._data) - self._off >= n and not self.read_lock.locked():
            return self._take(n)
        async with self.read_lock:
            have = len(self._data) - self._off
            if have >= n:
                return self._take(n)
            parts = [self._take(None)] if have else []
            got = have
            while got < n:
                data = await self._receive(max(READ_CHUNK, n - got))
                if not data:
                    break
                need = n - got
                if len(data) > need:
                    self._data, self._off = data, need
                    data = data[:need]
                parts.append(data)
                got += len(data)
            return parts[0] if len(parts) == 1 else b"".join(parts)


class BufferingNoise(NoiseTransport):
    """py-libp2p's Noise transport that first gives a TCP connection a BufferedTCPStream."""

    @staticmethod
    def _buffer(conn: Any) -> None:
        stream = getattr(conn, "stream", None)
        if type(stream) is TrioTCPStream:
            fast = BufferedTCPStream(stream.stream)
            fast._cached_remote_address = stream._cached_remote_address
            conn.stream = fast

    async def secure_inbound(self, conn: Any) -> Any:
        self._buffer(conn)
        return mark_buffered(await super().secure_inbound(conn))

    async def secure_outbound(self, conn: Any, peer_id: Any) -> Any:
        self._buffer(conn)
        return mark_buffered(await super().secure_outbound(conn, peer_id))


_MARK = "_fognode_buffered_tcp"


def mark_buffered(secure_conn: Any) -> Any:
    """Mark a secured connection as one of BufferingNoise's (see is_buffered)."""
    setattr(secure_conn, _MARK, True)
    return secure_conn


def is_buffered(secure_conn: Any) -> bool:
    """True for a connection secured by BufferingNoise (node/p2pfix_yamux.py asks)."""
    return getattr(secure_conn, _MARK, False) is True
