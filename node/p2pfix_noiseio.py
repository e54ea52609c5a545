"""py-libp2p 0.8.1 fix: Noise transport messages read and written without three layers of
read loops and copies, and a large Yamux frame in one TCP write.

Symptom (upstream report form). A secured connection's read goes
`SecureSession.read(n)` (an io.BytesIO buffer, a bytearray it extends, `bytes()` of it) ->
`NoiseTransportReadWriter.read_msg` -> `FixedSizeLenMsgReadWriter.read_msg` ->
`read_exactly(conn, 2)` and `read_exactly(conn, length)` (each a bytearray, its `bytes()`,
and a `RawConnection.read` with its own try block) -> the TCP stream; Yamux then reads each
frame's header and body through `read_exactly(secured_conn, n)` once more (another bytearray
and `bytes()` of up to 256 KiB) under a `trio.fail_after` per body. A write goes
`SecureSession.write` -> `write_msg`, which cuts frames over 65,519 bytes into Noise messages
and sends each with its own `send_all` (a 256 KiB Yamux frame: 5 socket writes, each taking
the TCP write lock). During `python -m fognode.tools.bench.onion` (256 KiB link frames), the
Yamux reader's secure-session read path was 14 % of the daemons' GIL-holding samples and the
whole write path 12 %; a byte was copied about ten times between the socket and a stream's
buffer. Reproduction: py-spy `--gil` on the daemons of that benchmark, or
tests/node/test_p2pfix_noiseio.py.

Fix. `QuickNoiseSession(SecureSession)` replaces the SecureSession that py-libp2p's Noise
handshake returns, for connections whose raw stream is node/p2pfix_tcpio.py's
`BufferedTCPStream` (`adopt()`, called by `QuickNoise`, node/p2pfix_tcpio.py's `BufferingNoise`
with this step added, right after the handshake and before any transport message is read;
the handshake's own messages still go through py-libp2p; QuickNoise is handed to `new_host`
as `sec_opt`, a constructor option).
- `read(n)` decrypts whole Noise messages read with `BufferedTCPStream.read_exactly` and keeps
  the plaintext as `bytes` plus an offset: a read copies only what it returns, and returns the
  decrypted message itself when it asks for exactly that. `take(n)` serves a read from that
  plaintext without awaiting (node/p2pfix_yamux.py's `_read_data_body` uses it), `take_view(n)`
  as a view (node/p2pfix_yamux_reader.py copies a DATA body into its stream's buffer from it).
  A message wholly in the TCP receive buffer is decrypted from a view of that buffer
  (`BufferedTCPStream.view`), not from a copy: a bulk transfer's bytes are copied twice less
  between the socket and a stream's buffer (`python -m fognode.tools.bench.stream_bulk`).
- `write(data)` seals `data` in Noise messages of at most 65,519 plaintext bytes (as go-libp2p
  and py-libp2p cut them) and sends them with one TCP write; `write_messages(frames)` makes
  each frame one Noise message and sends them all with one TCP write (straight to the
  BufferedTCPStream, with RawConnection.write's error mapping; the lengths and ciphertexts go
  to one `os.writev` unjoined, node/p2pfix_tcpio.py). The caller serialises writers,
  as for py-libp2p's session (Yamux's `_write_frame` holds its write lock): the nonces must
  go out in the order they were used.
A cancelled write (session 31). py-libp2p's `NoiseTransportReadWriter.write_msg` encrypts a
message (the session's next nonce is spent) and then awaits the TCP write, where a cancelled
task raises before a byte is written (trio's `send_all` checks first), and a write waiting for
the kernel to take its rest is cut after part of a message. Either way the peer expects a
nonce that never comes, or reads a message's length and then the next message's bytes: every
later message fails authentication and the peer drops the connection (or, the message cut,
its reader waits for bytes that belong to later messages and the connection hangs). A Yamux
stream write is cut whenever a deadline or a nursery cancels its task mid-write: a stream
closed in the `finally` of a timed-out scope seals a FIN and sends nothing, and an FL update
sender stops its chunk pump when the aggregator's refusal ("unknown round") arrives
(protocols/fl/transfer/updates.py). In the FL benchmark (`python -m fognode.tools.bench.fl
--part rounds`) that refusal was followed, 3 times in about 40 runs of session 30, by "No
valid connections available" to the live aggregator on the retry and a 5-7 s round. A
logging copy of the tree (session 31) saw 12 such cut writes in 1 of 4 runs of 20 rounds: 9
FINs of gossip pulls, 2 of registry asks, 1 update pump; 9 connections dropped, 7 of them one
daemon's within 2 s. Reproduction: tests/node/test_p2pfix_cancelwrite.py (a write in a cancelled scope, and a
write cancelled while the kernel holds its rest: without the fix the connection is lost).
Fix: `write` and `write_messages` check for cancellation before they seal anything, and the
TCP write of sealed messages is not cut by a cancellation (BufferedTCPStream.write_parts, node/
p2pfix_tcpio.py: it completes, or the connection is closed after WRITE_BOUND seconds). The
stream write above still raises Cancelled at its next checkpoint; its stream loses the frames
it had not handed over, as before, but the connection and its other streams live on.
A message that fails authentication is logged (a WARNING naming the peer, at most one a minute
per peer): py-libp2p drops the connection without a word, and in session 30 nothing in the
daemons' logs showed why a connection between two live daemons had gone.
Errors are the base session's: `IncompleteReadError` at EOF (received_bytes 0 between
messages: Yamux's clean close), `NoiseInvalidMessage` for a message that fails
authentication, `RawConnError` / `ConnectionClosedError` from the TCP stream. The bytes on the
wire are the same Noise transport messages.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import trio
from cryptography.exceptions import InvalidTag
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError, IOException
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
from libp2p.security.secure_session import SecureSession
from noise.exceptions import NoiseInvalidMessage

from fognode.node.faults import LogRateLimiter
from fognode.node.p2pfix_tcpio import BufferedTCPStream, BufferingNoise, mark_buffered

log = logging.getLogger("fognode.host")
_AUTH_FAILURES = LogRateLimiter(interval=60.0)     # peer -> one WARNING a minute

_LENGTH_SIZE = 2    # a Noise transport message's big-endian length prefix


class QuickNoiseSession(SecureSession):
    """SecureSession reading and writing Noise transport messages directly (module doc)."""

    def __init__(self, old: SecureSession, tcp: BufferedTCPStream) -> None:
        super().__init__(local_peer=old.local_peer, local_private_key=old.local_private_key,
                         remote_peer=old.remote_peer,
                         remote_permanent_pubkey=old.remote_permanent_pubkey,
                         is_initiator=old.is_initiator, conn=old.conn)
        proto = old.conn.noise_state.noise_protocol
        self._encrypt = proto.cipher_state_encrypt.encrypt_with_ad
        self._decrypt = proto.cipher_state_decrypt.decrypt_with_ad
        self._tcp = tcp
        self._plain = b""       # the last decrypted message, read up to _pos
        self._pos = 0
        self.muxer: Any = None  # its Yamux connection, for node/p2pfix_yamux_reader.py

    def buffered(self) -> int:
        """Plaintext bytes decrypted and not yet read."""
        return len(self._plain) - self._pos

    def _consume(self, n: int) -> tuple[bytes, int, int] | None:
        """The decrypted message and the range of its next `n` bytes, marked read, if that
        many are buffered; else None."""
        plain, pos = self._plain, self._pos
        if len(plain) - pos < n:
            return None
        end = pos + n
        if end == len(plain):
            self._plain, self._pos = b"", 0
        else:
            self._pos = end
        return plain, pos, end

    def take(self, n: int) -> bytes | None:
        """`n` bytes of decrypted plaintext if that many are buffered, else None."""
        got = self._consume(n)
        if got is None:
            return None
        plain, pos, end = got
        return plain if pos == 0 and end == len(plain) else plain[pos:end]

    def take_view(self, n: int) -> memoryview | None:
        """As `take`, as a view of the decrypted message (no copy): for
        node/p2pfix_yamux_reader.py, which copies a DATA body into its stream's buffer."""
        got = self._consume(n)
        return None if got is None else memoryview(got[0])[got[1]:got[2]]

    async def _tcp_read_exactly(self, n: int) -> bytes:
        try:
            return await self._tcp.read_exactly(n)
        except ConnectionClosedError:
            raise
        except (IOException, ConnectionResetError) as error:    # as RawConnection.read
            raise RawConnError from error

    async def _next_message(self) -> bytes:
        """Read and decrypt one Noise transport message."""
        head = await self._tcp_read_exactly(_LENGTH_SIZE)
        if len(head) < _LENGTH_SIZE:
            raise IncompleteReadError(
                f"connection closed: {len(head)} of a Noise message's {_LENGTH_SIZE}-byte "
                f"length", expected_bytes=_LENGTH_SIZE, received_bytes=len(head))
        length = int.from_bytes(head, "big")
        body: Any = self._tcp.view(length)    # decrypted from the receive buffer, no copy
        if body is None:
            body = await self._tcp_read_exactly(length)
        if len(body) < length:
            raise IncompleteReadError(
                f"connection closed: {len(body)} of a {length}-byte Noise message",
                expected_bytes=length, received_bytes=len(body) + _LENGTH_SIZE)
        try:
            return self._decrypt(None, body)
        except InvalidTag:
            _report_auth_failure(str(self.remote_peer))
            raise NoiseInvalidMessage("Failed authentication of message") from None

    async def read(self, n: int | None = None) -> bytes:
        if n == 0:
            return b""
        if n is None:
            if self._pos < len(self._plain):
                out = self._plain[self._pos:] if self._pos else self._plain
                self._plain, self._pos = b"", 0
                return out
            return await self._next_message()
        out = self.take(n)
        if out is not None:
            return out
        parts = []
        got = len(self._plain) - self._pos
        if got:
            parts.append(self._plain[self._pos:] if self._pos else self._plain)
        self._plain, self._pos = b"", 0
        while got < n:
            try:
                msg = await self._next_message()
            except IncompleteReadError:
                if not parts:
                    raise
                return b"".join(parts)      # as SecureSession: what was assembled
            need = n - got
            if len(msg) > need:
                self._plain, self._pos = msg, need
                msg = msg[:need]
            parts.append(msg)
            got += len(msg)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _seal_into(self, data: Any, parts: list[bytes]) -> None:
        """Append `data` (bytes-like) to `parts` as Noise transport messages, each a 2-byte
        length and its ciphertext, cut at 65,519 plaintext bytes."""
        size = len(data)
        if size <= MAX_PLAINTEXT_LENGTH:
            ct = self._encrypt(None, data)
            parts.append(len(ct).to_bytes(_LENGTH_SIZE, "big"))
            parts.append(ct)
            return
        view = memoryview(data)
        for start in range(0, size, MAX_PLAINTEXT_LENGTH):
            ct = self._encrypt(None, view[start:start + MAX_PLAINTEXT_LENGTH])
            parts.append(len(ct).to_bytes(_LENGTH_SIZE, "big"))
            parts.append(ct)

    def seal(self, data: Any) -> bytes:
        """`data` (bytes-like) as length-prefixed Noise transport messages, joined."""
        parts: list[bytes] = []
        self._seal_into(data, parts)
        return b"".join(parts)

    async def _tcp_write(self, parts: list[bytes]) -> None:
        """One TCP write of `parts` (not joined: BufferedTCPStream.write_parts), with
        RawConnection.write's error mapping (its layer skipped)."""
        try:
            await self._tcp.write_parts(parts)
        except ConnectionClosedError:
            raise
        except (IOException, ConnectionResetError) as error:
            raise RawConnError from error

    async def write(self, data: bytes) -> None:
        """`data` sealed and sent in one TCP write: a cancelled task raises Cancelled before
        a nonce is spent; once sealed, the write is not cut (module doc, "A cancelled write")."""
        await trio.lowlevel.checkpoint_if_cancelled()
        parts: list[bytes] = []
        self._seal_into(data, parts)
        await self._tcp_write(parts)

    async def write_messages(self, messages: list[bytes]) -> None:
        """Each of `messages` as one Noise message if it fits (else cut as `seal` cuts it),
        all in one TCP write; cancellation as for `write`. The caller serialises writers, as
        for `write`."""
        await trio.lowlevel.checkpoint_if_cancelled()
        parts: list[bytes] = []
        for msg in messages:
            self._seal_into(msg, parts)
        await self._tcp_write(parts)


def _report_auth_failure(peer: str) -> None:
    """A WARNING (at most one per peer per minute, node/faults.py's limiter): the connection
    is about to drop, and nothing else says why. Between fognode peers it means a write was cut
    mid-message on one side ("A cancelled write"), a bug; else a peer sending garbage."""
    held = _AUTH_FAILURES.admit(peer, time.monotonic())
    if held is not None:
        log.warning("connection with %s dropped: a Noise message failed authentication (its "
                    "byte stream is corrupt)%s", peer, f"; {held} more since" if held else "")


def adopt(session: Any) -> Any:
    """`session` as a QuickNoiseSession when it is py-libp2p's Noise session over a
    BufferedTCPStream with nothing read yet; anything else is returned as it is."""
    if type(session) is not SecureSession or type(session.conn) is not NoiseTransportReadWriter:
        return session
    raw = session.conn.read_writer.read_write_closer
    tcp = getattr(raw, "stream", None)
    if not isinstance(raw, RawConnection) or not isinstance(tcp, BufferedTCPStream) \
            or session.low_watermark != session.high_watermark:
        return session
    return QuickNoiseSession(session, tcp)


class QuickNoise(BufferingNoise):
    """BufferingNoise whose secured connections are QuickNoiseSessions (module doc)."""

    async def secure_inbound(self, conn: Any) -> Any:
        return mark_buffered(adopt(await super().secure_inbound(conn)))

    async def secure_outbound(self, conn: Any, peer_id: Any) -> Any:
        return mark_buffered(adopt(await super().secure_outbound(conn, peer_id)))
