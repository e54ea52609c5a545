"""node/p2pfix_noiseio.py (Noise messages read and written directly, a Yamux write batch in one
TCP write), node/p2pfix_tcpio.py's `read_exactly`, node/p2pfix_yamux.py's read and write paths
and node/streams.py's frame reads (issue 16): against a plain py-libp2p host (py-libp2p's own
Noise and Yamux, the wire they must stay compatible with) and between fognode overlays, on
127.0.0.1. The pins of the py-libp2p functions these replace are in test_p2pfix.py."""
from __future__ import annotations

import os
import random
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import IncompleteReadError
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as Noise
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from nacl.signing import SigningKey
from noise.exceptions import NoiseInvalidMessage
from prometheus_client import CollectorRegistry
from tests.node.test_p2pfix import ECHO, echo, overlays

from fognode.node.events import EventBus
from fognode.node.host import OverlayConfig, open_overlay, quiet_libp2p_loggers
from fognode.node.p2pfix_noiseio import QuickNoise, QuickNoiseSession
from fognode.node.p2pfix_tcpio import BufferedTCPStream
from fognode.node.p2pfix_yamux import FRAME_DATA, PrefixedData, QuickYamux, QuickYamuxStream

RAW_ECHO = "/fognode/test/noiseio-raw-echo/1.0.0"
# sizes around every boundary the fixes cut at: a Noise message's 65,519 plaintext bytes, a
# Yamux frame's 65,524 data bytes, the 64 KiB + 2 TCP read, several frames in one batch
SIZES = [1, 12, 65_507, 65_519, 65_520, 65_524, 65_525, 131_048, 300_001, 1_100_000]


async def raw_echo(stream: Any) -> None:
    """Echo each read back, until EOF or reset."""
    try:
        while True:
            data = await stream.read(1 << 20)
            if not data:
                break
            await stream.write(data)
    except Exception:   # EOF or reset: the end of the test's stream
        pass
    try:
        await stream.close()
    except Exception:
        pass


async def _read_n(stream: Any, n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        data = await stream.read(n - got)
        assert data, f"EOF after {got} of {n} bytes"
        parts.append(data)
        got += len(data)
    return b"".join(parts)


async def test_bytes_cross_a_plain_py_libp2p_host_both_ways_byte_for_byte() -> None:
    """The wire is py-libp2p's: a plain host (its own Noise and Yamux classes) echoes what an
    overlay with every fix writes, at every size boundary, each direction dialled once."""
    quiet_libp2p_loggers()
    kp = create_new_key_pair(os.urandom(32))
    plain = new_host(key_pair=kp,
                     sec_opt={NOISE_ID: Noise(kp, noise_privkey=x25519().private_key)},
                     muxer_opt={TProtocol(YAMUX_ID): Yamux})
    plain.set_stream_handler(TProtocol(RAW_ECHO), raw_echo)
    rng = random.Random(16)
    with trio.fail_after(120):
        reg = CollectorRegistry()
        async with plain.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]), \
                open_overlay(OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], peers_low=0),
                             SigningKey(os.urandom(32)), EventBus(reg), reg) as ov:
            ov.host.set_stream_handler(TProtocol(RAW_ECHO), raw_echo)
            await ov.connect(str(plain.get_addrs()[0]))
            (conn,) = ov.host.get_network().get_connections(plain.get_id())
            assert isinstance(conn.muxed_conn, QuickYamux)
            assert isinstance(conn.muxed_conn.secured_conn, QuickNoiseSession)
            # the plain side runs py-libp2p's own classes
            (back,) = plain.get_network().get_connections(ID.from_base58(ov.peer_id))
            assert type(back.muxed_conn) is Yamux
            assert type(back.muxed_conn.secured_conn) is SecureSession
            for dialer, target in ((ov.host, plain.get_id()),
                                   (plain, ID.from_base58(ov.peer_id))):
                stream = await dialer.new_stream(target, [TProtocol(RAW_ECHO)])
                for size in SIZES:
                    blob = rng.randbytes(size)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(stream.write, blob)
                        assert await _read_n(stream, size) == blob, size
                await stream.close()
            # and the plain host can dial us too (a fresh connection, our listener's side)
            await plain.disconnect(ID.from_base58(ov.peer_id))
            info = info_from_p2p_addr(multiaddr.Multiaddr(ov.listen_addrs()[0]))
            await plain.connect(info)
            stream = await plain.new_stream(ID.from_base58(ov.peer_id), [TProtocol(RAW_ECHO)])
            blob = rng.randbytes(200_000)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.write, blob)
                assert await _read_n(stream, len(blob)) == blob
            await stream.close()


async def test_a_large_write_is_one_tcp_write_and_frames_arrive_whole_in_any_cut() -> None:
    """A 1 MiB frame through a framed stream leaves in one TCP write per send window (py-libp2p
    alone: two Noise messages, so two `send_all`, per 64 KiB Yamux frame: 34), and frames
    written in odd cuts come out whole."""
    writes: list[int] = []
    with trio.fail_after(90):
        async with overlays(2, max_frame=8 << 20) as (a, b):
            b.set_stream_handler(ECHO, echo)
            fs = await a.open_stream(b.peer_id, ECHO)
            await fs.send_bytes(b"warm")        # the window grows during the first transfers
            assert await fs.recv_bytes() == b"warm"
            (conn,) = a.host.get_network().get_connections(b.host.get_id())
            tcp = conn.muxed_conn.secured_conn._tcp
            assert isinstance(tcp, BufferedTCPStream)
            write = tcp.write_parts     # one TCP write: os.writev, send_all for any rest

            async def counting(parts: Any) -> None:
                writes.append(sum(map(len, parts)))
                await write(parts)
            tcp.write_parts = counting  # type: ignore[method-assign]  # counts; the write happens
            blob = os.urandom(1 << 20)
            await fs.send_bytes(blob)
            assert await fs.recv_bytes() == blob
            # the data writes (window updates and other streams' frames are a few dozen bytes):
            # at most one per 256 KiB initial send window, as the window grows fewer
            data = [n for n in writes if n > 4096]
            assert sum(data) >= 1 << 20 and len(data) <= (1 << 20) // (256 * 1024) + 2, writes
            del tcp.write_parts

            # frames written in arbitrary cuts (raw stream writes) are read back whole
            frames = [os.urandom(n) for n in (0, 1, 3, 0, 4, 5, 70_000, 0, 17, 200_000, 2)]
            wire = b"".join(len(f).to_bytes(4, "big") + f for f in frames)
            rng = random.Random(3)
            cuts = sorted(rng.sample(range(1, len(wire)), 40))
            raw = fs.raw
            async with trio.open_nursery() as nursery:
                async def write_cuts() -> None:
                    last = 0
                    for c in cuts + [len(wire)]:
                        await raw.write(wire[last:c])
                        last = c
                nursery.start_soon(write_cuts)
                for f in frames:
                    assert await fs.recv_bytes() == f
            assert fs.buffered == 0
            await fs.close()


async def test_a_prefixed_frame_is_cut_anywhere_as_if_joined() -> None:
    """node/streams.py hands a large frame to QuickYamuxStream as its length and its body
    (PrefixedData): the Yamux frames carry exactly `prefix + body` whatever the send window
    cuts, also inside the prefix; and such frames arrive whole through a framed stream."""
    async with overlays(2, max_frame=8 << 20) as (a, b):
        b.set_stream_handler(ECHO, echo)
        with trio.fail_after(60):
            fs = await a.open_stream(b.peer_id, ECHO)
            muxed = fs.raw.muxed_stream
            assert isinstance(muxed, QuickYamuxStream) and fs._prefixed
            body = os.urandom(3 * FRAME_DATA + 10)
            data = PrefixedData(b"\x00\x01\x02\x03", memoryview(body))
            window = muxed.send_window
            try:
                for cuts in ([1, 2, 1, 7, 10**9], [3, FRAME_DATA, 10**9], [4, 10**9], [10**9]):
                    sent, out = 0, b""
                    for allowed in cuts:
                        muxed.send_window = allowed
                        frames, n = muxed._frames(data, sent)
                        out += b"".join(f[12:] for f in frames)
                        assert n == sum(len(f) - 12 for f in frames)
                        sent += n
                        if sent == len(data):
                            break
                    assert out == data.prefix + body, cuts
            finally:
                muxed.send_window = window
            for size in (16 * 1024, 65_519, 65_520, 300_001):
                blob = os.urandom(size)
                await fs.send_bytes(blob)
                assert await fs.recv_bytes() == blob
            await fs.close()


async def test_a_session_reads_any_cut_and_ends_and_fails_as_py_libp2p_does() -> None:
    """QuickNoiseSession.read against a real peer session over TCP: Noise messages of any size
    read in any cut, a forged message is NoiseInvalidMessage, EOF between messages is a clean
    IncompleteReadError (Yamux's clean close)."""
    quiet_libp2p_loggers()
    kp_a, kp_b = create_new_key_pair(os.urandom(32)), create_new_key_pair(os.urandom(32))
    quick = QuickNoise(kp_a, noise_privkey=x25519().private_key)
    plain = Noise(kp_b, noise_privkey=x25519().private_key)
    rng = random.Random(7)
    with trio.fail_after(60):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            accepted: list[Any] = []

            async def accept() -> None:
                accepted.append(await listeners[0].accept())
            nursery.start_soon(accept)
            client = await trio.open_tcp_stream("127.0.0.1", port)
        (server,) = accepted
        ours_raw = RawConnection(TrioTCPStream(server), initiator=False)
        theirs_raw = RawConnection(TrioTCPStream(client), initiator=True)
        got: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            async def inbound() -> None:
                got["ours"] = await quick.secure_inbound(ours_raw)
            nursery.start_soon(inbound)
            got["theirs"] = await plain.secure_outbound(theirs_raw, ID.from_pubkey(kp_a.public_key))
        ours, theirs = got["ours"], got["theirs"]
        assert isinstance(ours, QuickNoiseSession) and type(theirs) is SecureSession

        # many messages (py-libp2p cuts writes over 65,519 bytes), read back in random cuts
        blobs = [rng.randbytes(n) for n in (1, 100, 65_519, 65_520, 200_000, 5)]
        stream = b"".join(blobs)
        async with trio.open_nursery() as nursery:
            async def send() -> None:
                for b in blobs:
                    await theirs.write(b)
            nursery.start_soon(send)
            out = []
            got_n = 0
            while got_n < len(stream):
                n = min(rng.choice([1, 2, 12, 4096, 65_536, 150_000]), len(stream) - got_n)
                part = await ours.read(n)
                assert len(part) == n
                out.append(part)
                got_n += n
        assert b"".join(out) == stream
        # what we write, the plain session reads
        blob = rng.randbytes(140_000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ours.write, blob)
            assert await theirs.read(len(blob)) == blob

        # a message whose tag does not verify (forged with a valid length prefix)
        await theirs_raw.write((40).to_bytes(2, "big") + os.urandom(40))
        try:
            await ours.read(10)
            raise AssertionError("a forged Noise message was accepted")
        except NoiseInvalidMessage:
            pass

        # EOF between messages: a clean close
        await theirs_raw.close()
        try:
            await ours.read(12)
            raise AssertionError("read after EOF returned")
        except IncompleteReadError as e:
            assert e.is_clean_close
        await ours_raw.close()
        for listener in listeners:
            await listener.aclose()


async def test_the_framed_stream_takes_the_muxers_buffer_and_other_readers_get_bytes() -> None:
    """node/streams.py's framed stream marks its Yamux stream `hand_over` (the muxer gives it
    its bytearray instead of a copy); its frames still come out as bytes, byte for byte, at
    the sizes around the cuts; a stream read without a framed stream still gets bytes."""
    sizes = [0, 1, 12, 65_507, 65_519, 65_520, 200_000, 580_000, 1 << 20, 3]
    with trio.fail_after(90):
        async with overlays(2, max_frame=4 << 20) as (a, b):
            b.set_stream_handler(ECHO, echo)
            b.host.set_stream_handler(TProtocol(RAW_ECHO), raw_echo)
            fs = await a.open_stream(b.peer_id, ECHO)
            muxed = fs.raw.muxed_stream     # type: ignore[attr-defined]
            assert isinstance(muxed, QuickYamuxStream) and muxed.hand_over
            frames = [os.urandom(n) for n in sizes]
            async with trio.open_nursery() as nursery:
                async def send_all() -> None:
                    for f in frames:
                        await fs.send_bytes(f)
                nursery.start_soon(send_all)
                for f in frames:
                    got = await fs.recv_bytes()
                    assert type(got) is bytes and got == f, len(f)
            assert fs.buffered == 0
            await fs.close()
            stream = await a.host.new_stream(b.host.get_id(), [TProtocol(RAW_ECHO)])
            assert not stream.muxed_stream.hand_over
            blob = os.urandom(300_000)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.write, blob)
                got = await _read_n(stream, len(blob))
            assert got == blob
            data = await _read_parts(stream, b"x" * 1000)
            assert all(type(d) is bytes for d in data)
            await stream.close()


async def _read_parts(stream: Any, blob: bytes) -> list[Any]:
    """What each read of `stream` returns while `blob` is echoed back."""
    parts: list[Any] = []
    await stream.write(blob)
    while sum(map(len, parts)) < len(blob):
        parts.append(await stream.read(len(blob)))
    return parts
