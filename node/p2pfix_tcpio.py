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

Per small message (issue 16, session 25). `TrioTCPStream.write` goes through trio's
`SocketStream.send_all` (a conflict detector, a contextlib error translator, a memoryview, the
socket wrapper's `_try_sync`, then a checkpoint) and ends every write with a scheduler
checkpoint, so a task that writes many small frames runs one scheduler iteration per frame,
and so does the reader woken for each. 200-byte frames written one after the other on one
stream cost 74-83 CPU us per frame for both ends; 200-byte round trips 200 us
(`python -m fognode.tools.bench.stream_msgs`, both ends in one loop; one TCP round trip on a
bare socket pair in the same run: 25 and 50 us). `BufferedTCPStream.write` hands the bytes to
the kernel with one `os.writev` on the non-blocking socket (`write_parts`: the Noise lengths
and ciphertexts of a Yamux batch are not joined first) and uses `send_all` only for what the
kernel did not take (the control socket's replies do the same, node/rpc/connection.py). A
write the kernel takes whole, of at most QUIET_WRITE_BYTES, returns without a checkpoint, except
every (QUIET_WRITES + 1)-th on the connection, which checkpoints as before: a task writing
small frames in a row yields every 16 writes instead of every write, and its reader finds
several frames per wake-up (one way: 31 CPU us per frame); a larger write or one the kernel
does not take whole checkpoints as before. A task that only writes small frames without reading
can hold the loop for at most 16 of them.
A cancelled write (session 31). `write_parts` carries Noise messages whose nonces are spent:
cut by a cancellation (before its first byte or, waiting in `send_all`, after some), it leaves
the peer a nonce gap or half a message, so the peer fails to decrypt whatever follows and
drops the connection, with every stream on it (node/p2pfix_noiseio.py, "A cancelled write",
has the symptom and the reproduction). So `write_parts` is not cut by a cancellation: its
callers check before they seal, and a write that has begun completes; a rest the peer does not
take within WRITE_BOUND seconds closes the connection (as go-yamux's write timeout does).
`write` (TrioTCPStream's, for py-libp2p's own callers) still raises Cancelled before it writes.
`QuickLock` is a flag and a parking lot: trio.Lock's uncontended `acquire_nowait` and
`release` (owner bookkeeping, a parking-lot breaker per acquire) were 10 % of the CPU of those
round trips (py-spy), for about ten locks per message through both ends.
"""
from __future__ import annotations

import os
from types import TracebackType
from typing import Any

import trio
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.io.trio import TrioTCPStream
from libp2p.security.noise.transport import Transport as NoiseTransport

READ_CHUNK = 4 * (65535 + 2)    # up to four whole Noise frames (2-byte length + 65,535 bytes)
# A write the kernel takes whole, of at most QUIET_WRITE_BYTES, returns without a scheduler
# checkpoint, except every (QUIET_WRITES + 1)-th one on the connection (module doc)
QUIET_WRITE_BYTES = 16 * 1024
QUIET_WRITES = 15
MAX_PARTS = 512     # buffers of one os.writev (Linux allows 1024); more are joined first
# A write that has begun completes whatever cancels its task (module doc, "A cancelled write"),
# unless the peer has not taken its rest after this long: then the connection is closed
# (go-yamux closes a connection whose write takes longer than its ConnectionWriteTimeout, 10 s)
WRITE_BOUND = 10.0


class QuickLock:
    """A lock whose uncontended acquire does not yield to the scheduler and costs a flag test;
    a contended one parks until the holder hands the lock over (as trio.Lock: first come,
    first served, cancellable while waiting). Same mutual exclusion as trio.Lock.

    Unlike trio.Lock it keeps no owner: any task may release it (so it also stands in for the
    `trio.Semaphore(1)` of py-libp2p's ReadWriteLock, which whichever reader leaves last
    releases), and it does not break its waiters when a holder exits without releasing.
    trio.Lock's uncontended `acquire_nowait` and `release` (owner bookkeeping, a
    parking-lot breaker per acquire) were 10 % of the CPU of 200-byte round trips on one
    stream (`python -m fognode.tools.bench.stream_msgs`, py-spy): a message takes and
    releases about ten of these locks on its way through both ends."""

    __slots__ = ("_held", "_lot")

    def __init__(self) -> None:
        self._held = False
        self._lot = trio.lowlevel.ParkingLot()

    async def acquire(self) -> None:
        if not self._held:
            self._held = True
            return
        await self._lot.park()      # release() hands the lock over: _held stays True

    def acquire_nowait(self) -> None:
        if self._held:
            raise trio.WouldBlock
        self._held = True

    def release(self) -> None:
        if not self._held:
            raise RuntimeError("release of a QuickLock that is not held")
        if self._lot:
            self._lot.unpark()
        else:
            self._held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.release()

    def locked(self) -> bool:
        return self._held


class QuickSemaphore:
    """trio.Semaphore as QuickLock is trio.Lock: a free slot is taken without a scheduler hop;
    with none free the caller parks (cancellable) until a `release` hands it one, first come,
    first served. Same counting as trio.Semaphore without `max_value` (py-libp2p's stream
    semaphores, node/p2pfix_streamopen.py)."""

    __slots__ = ("_value", "_lot")

    def __init__(self, initial_value: int) -> None:
        self._value = initial_value
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def value(self) -> int:
        return self._value

    async def acquire(self) -> None:
        if self._value > 0:
            self._value -= 1
            return
        await self._lot.park()      # release() hands its slot over: _value stays as it is

    def acquire_nowait(self) -> None:
        if self._value <= 0:
            raise trio.WouldBlock
        self._value -= 1

    def release(self) -> None:
        if self._lot:
            self._lot.unpark()
        else:
            self._value += 1


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
        self._quiet_writes = 0   # small writes since the last one that checkpointed

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

    async def write(self, data: bytes) -> None:
        """TrioTCPStream's write: `write_parts([data])`, after a cancellation check (a
        cancelled task writes nothing, as with `send_all`)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        await self.write_parts([data])

    async def write_parts(self, parts: list[bytes]) -> None:
        """Write `b"".join(parts)` as TrioTCPStream's write would (same errors:
        ConnectionClosedError when the peer reset the connection, nothing when it was closed
        locally), without joining them: one `os.writev` on the non-blocking socket hands the
        kernel what it takes, and only the rest goes through trio's `send_all`. A write the
        kernel takes whole, of at most QUIET_WRITE_BYTES, skips the closing checkpoint except
        every (QUIET_WRITES + 1)-th one; any other write ends with one, as `send_all` does
        (module doc).

        Whole or not at all (module doc, "A cancelled write"): a cancellation does not cut
        this write. The caller checks for cancellation before it seals the Noise messages in
        `parts` (node/p2pfix_noiseio.py), and from here on the write completes; a rest the
        kernel does not take within WRITE_BOUND seconds closes the connection
        (ConnectionClosedError), since a message cut in two leaves the peer nothing it can
        decrypt. A cancel that came meanwhile is seen at the caller's next checkpoint."""
        if len(parts) > MAX_PARTS:
            parts = [b"".join(parts)]
        lock = self.write_lock
        if lock.locked():       # free while Yamux's write lock is held above; else wait uncut
            with trio.CancelScope(shield=True):
                await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            sent = 0
            total = sum(map(len, parts))
            fd = self.stream.socket.fileno()    # -1 once closed: send_all says so below
            if fd >= 0:
                try:
                    sent = os.writev(fd, parts)
                except OSError:     # full (BlockingIOError), or broken: send_all tells which
                    sent = 0
                if sent == total:
                    if sent <= QUIET_WRITE_BYTES and self._quiet_writes < QUIET_WRITES:
                        self._quiet_writes += 1
                        return
                    self._quiet_writes = 0
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            with trio.CancelScope(shield=True):
                with trio.move_on_after(WRITE_BOUND) as bound:
                    try:
                        await self.stream.send_all(memoryview(data)[sent:] if sent else data)
                    except trio.BrokenResourceError as error:
                        raise ConnectionClosedError(
                            f"TCP connection reset by remote peer: {error}", transport="tcp",
                        ) from error
                    except trio.ClosedResourceError:
                        return      # closed locally: as TrioTCPStream, nothing to report
                if bound.cancelled_caught:
                    await self.stream.aclose()      # the reader sees EOF: the connection ends
                    raise ConnectionClosedError(
                        f"TCP write of {total} bytes not taken by the peer in {WRITE_BOUND:g} s;"
                        " connection closed", transport="tcp")
        finally:
            lock.release()

    def view(self, n: int) -> memoryview | None:
        """The next `n` bytes as a view of the receive buffer, consumed without a copy, when
        that many are buffered and no read is under way; else None (then `read_exactly`)."""
        data, off = self._data, self._off
        if len(data) - off < n or self.read_lock.locked():
            return None
        end = off + n
        if end == len(data):
            self._data, self._off = b"", 0
        else:
            self._off = end
        return memoryview(data)[off:end]

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
