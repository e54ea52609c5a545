"""A cancelled stream write keeps its connection (node/p2pfix_noiseio.py and
node/p2pfix_tcpio.py, "A cancelled write"): between two fognode overlays on 127.0.0.1, a write
in a cancelled scope, and a write cancelled while the kernel holds the rest of its Noise
messages, leave the connection whole; it carries the next stream. Before the fix either write
spent Noise nonces it never sent (or sent half a message), the peer failed to decrypt what
followed and dropped the connection (the FL benchmark's 5-7 s rounds, session 31); a nonce
spent on purpose shows that, and the WARNING the peer now logs when it happens. A framed
stream closed or reset in a timed-out scope (node/streams.py) still tells the peer; a write the peer
never takes closes the connection after its bound. The
py-libp2p functions whose order makes the defect (encrypt, then a cancellable TCP write) are
pinned in test_p2pfix.py (SecureSession.write, BaseNoiseMsgReadWriter.write_msg,
TrioTCPStream.write)."""
from __future__ import annotations

import logging
import os
import socket
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.errors import StreamClosed
from fognode.node.events import EventBus
from fognode.node import p2pfix_tcpio
from fognode.node.host import Libp2pOverlay, OverlayConfig, open_overlay, quiet_libp2p_loggers
from fognode.node.p2pfix_noiseio import QuickNoiseSession
from tests.node.test_p2pfix_noiseio import raw_echo

ECHO = "/fognode/test/cancelwrite-echo/1.0.0"
SINK = "/fognode/test/cancelwrite-sink/1.0.0"
FRAMED = "/fognode/test/cancelwrite-framed/1.0.0"
BATCH = 256 * 1024      # a stream's initial send window (Yamux)


@asynccontextmanager
async def _pair() -> AsyncIterator[tuple[Libp2pOverlay, Libp2pOverlay, Any, Any]]:
    """Two overlays, A connected to B; yields A, B and the connection as each side holds it."""
    quiet_libp2p_loggers()
    cfg = OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], peers_low=0)
    ra, rb = CollectorRegistry(), CollectorRegistry()
    async with open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(ra), ra) as a, \
            open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(rb), rb) as b:
        b.host.set_stream_handler(TProtocol(ECHO), raw_echo)
        await a.connect(b.listen_addrs()[0])
        (ab,) = a.host.get_network().get_connections(ID.from_base58(b.peer_id))
        with trio.fail_after(5):
            while not b.host.get_network().get_connections(ID.from_base58(a.peer_id)):
                await trio.sleep(0.01)
        (ba,) = b.host.get_network().get_connections(ID.from_base58(a.peer_id))
        assert isinstance(ab.muxed_conn.secured_conn, QuickNoiseSession)
        yield a, b, ab, ba


async def _echo_once(a: Libp2pOverlay, b: Libp2pOverlay, payload: bytes) -> bytes:
    stream = await a.host.new_stream(ID.from_base58(b.peer_id), [TProtocol(ECHO)])
    await stream.write(payload)
    got = b""
    while len(got) < len(payload):
        data = await stream.read(len(payload) - len(got))
        assert data, f"EOF after {len(got)} of {len(payload)} bytes"
        got += data
    await stream.close()
    return got


async def test_a_write_in_a_cancelled_scope_writes_nothing_and_keeps_the_connection() -> None:
    async with _pair() as (a, b, ab, ba):
        stream = await a.host.new_stream(ID.from_base58(b.peer_id), [TProtocol(ECHO)])
        await stream.write(b"one")
        with trio.fail_after(5):
            assert await stream.read(3) == b"one"
        with trio.CancelScope() as scope:
            scope.cancel()
            await stream.write(b"x" * 1000)
        assert scope.cancelled_caught
        with trio.fail_after(5):
            assert await _echo_once(a, b, b"after the cancelled write") == b"after the cancelled write"
        await trio.sleep(0.3)       # a dropped connection would be gone from the swarm by now
        assert a.host.get_network().get_connections(ID.from_base58(b.peer_id)) == [ab]
        assert not ab.is_closed and not ba.is_closed


async def test_a_write_cancelled_while_the_kernel_holds_its_rest_completes_whole() -> None:
    """B's frame reader is held (its Yamux streams lock taken) and both kernel buffers are
    small, so A's write of a whole send window (about 256 KiB: one write batch) waits in
    `send_all` with most of it unsent; then its task is cancelled. The write still completes once B reads again: B's handler receives every
    byte, and the connection carries another stream."""
    got: list[int] = []
    first = trio.Event()
    go = trio.Event()

    async def sink(stream: Any) -> None:
        n = len(await stream.read(1))
        first.set()
        await go.wait()
        try:
            while True:
                data = await stream.read(1 << 16)
                if not data:
                    break
                n += len(data)
        except Exception:
            pass
        got.append(n)

    async with _pair() as (a, b, ab, ba):
        b.host.set_stream_handler(TProtocol(SINK), sink)
        tcp_a = ab.muxed_conn.secured_conn._tcp
        tcp_a.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        ba.muxed_conn.secured_conn._tcp.stream.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        stream = await a.host.new_stream(ID.from_base58(b.peer_id), [TProtocol(SINK)])
        await stream.write(b"s")
        with trio.fail_after(5):
            await first.wait()
        held = ba.muxed_conn.streams_lock
        held.acquire_nowait()       # B's reader stops at the next frame: the kernel fills up
        cut = trio.CancelScope()
        window = stream.muxed_stream.send_window    # all of it: one write batch
        assert window > BATCH // 2

        async def writer() -> None:
            with cut:
                await stream.write(os.urandom(window))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                while not tcp_a.write_lock.locked():
                    await trio.sleep(0.005)
                await trio.sleep(0.1)
                assert tcp_a.write_lock.locked(), "the write should wait for the kernel"
                cut.cancel()
                await trio.sleep(0.1)
                assert tcp_a.write_lock.locked(), "the cancel should not cut the write"
                held.release()
            go.set()
            await stream.close()
            while not got:
                await trio.sleep(0.01)
            assert got == [1 + window]
            assert await _echo_once(a, b, b"after the cut write") == b"after the cut write"
        assert not ab.is_closed and not ba.is_closed


async def test_a_spent_nonce_drops_the_connection_and_the_peer_says_why(caplog: Any) -> None:
    """What a cut write did before the fix, on purpose: A seals a message it never sends (a
    nonce spent), so B cannot authenticate A's next message; B logs a WARNING naming A and
    the connection drops on both sides."""
    async with _pair() as (a, b, ab, ba):
        with trio.fail_after(5):
            assert await _echo_once(a, b, b"before") == b"before"
        ab.muxed_conn.secured_conn.seal(b"never sent")
        with caplog.at_level(logging.WARNING, logger="fognode.host"):
            with trio.fail_after(10):
                with pytest.raises(Exception):
                    await _echo_once(a, b, b"after")
                while not (ab.is_closed and ba.is_closed):
                    await trio.sleep(0.01)
        assert any(f"connection with {a.peer_id} dropped: a Noise message failed authentication"
                   in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("end", ["close", "reset"])
async def test_a_framed_stream_ended_in_a_timed_out_scope_still_tells_the_peer(end: str) -> None:
    """The commonest cut write in the daemons' logs: `finally: await stream.close()` in a scope
    whose deadline has passed (a gossip pull, a registry ask). The close (or reset: ledger order
    streams, FL sessions, onion links) still goes out, as node/overlay.py's FramedStream
    promises, with no shield at the call site: the peer's handler sees the end at once, not at
    its idle deadline, and the connection lives."""
    ended: list[str] = []

    async def handler(fs: Any) -> None:
        await fs.send(await fs.recv())
        try:
            await fs.recv()
        except StreamClosed:
            ended.append("eof")

    async with _pair() as (a, b, ab, ba):
        b.set_stream_handler(FRAMED, handler)
        with trio.move_on_after(0.5) as scope:
            fs = await a.open_stream(b.peer_id, FRAMED)
            try:
                await fs.send({"ask": 1})
                assert await fs.recv() == {"ask": 1}
                await trio.sleep_forever()          # the scope's deadline passes here
            finally:
                await getattr(fs, end)()
        assert scope.cancelled_caught
        with trio.fail_after(2):
            while not ended:
                await trio.sleep(0.01)
            assert await _echo_once(a, b, b"after the close") == b"after the close"
        assert ended == ["eof"]
        assert not ab.is_closed and not ba.is_closed


async def test_a_write_the_peer_does_not_take_within_the_bound_closes_the_connection(
        monkeypatch: Any) -> None:
    """A write that has begun is not cut by a cancel, so it has a bound of its own
    (WRITE_BOUND, 10 s; 0.5 s here): B's reader is held for good, A's write of a send window
    fails after the bound and A's connection to B is closed, not left with half a message."""
    monkeypatch.setattr(p2pfix_tcpio, "WRITE_BOUND", 0.5)
    async with _pair() as (a, b, ab, ba):
        b.host.set_stream_handler(TProtocol(SINK), _hold)
        ab.muxed_conn.secured_conn._tcp.stream.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        ba.muxed_conn.secured_conn._tcp.stream.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stream = await a.host.new_stream(ID.from_base58(b.peer_id), [TProtocol(SINK)])
        await stream.write(b"s")
        await trio.sleep(0.2)
        held = ba.muxed_conn.streams_lock
        held.acquire_nowait()       # B reads nothing more until the end
        t0 = trio.current_time()
        try:
            with trio.fail_after(5):
                with pytest.raises(Exception):
                    await stream.write(os.urandom(stream.muxed_stream.send_window))
                while not ab.is_closed:
                    await trio.sleep(0.01)
            took = trio.current_time() - t0
        finally:
            held.release()
        assert 0.5 <= took < 3.0


async def _hold(stream: Any) -> None:
    await stream.read(1)
    await trio.sleep_forever()
