"""The py-libp2p fixes of node/p2pfix_*.py (issue 16): each against real hosts on 127.0.0.1,
and a pin of every py-libp2p function they replace or rely on, so a py-libp2p upgrade that
changes one fails here first (re-read the fix's docstring, re-check, then re-pin)."""
from __future__ import annotations

import inspect
import logging
import os
import re
import statistics
from contextlib import AsyncExitStack, asynccontextmanager
from importlib.metadata import version
from typing import Any, AsyncIterator

import libp2p.network.connection.swarm_connection as swarm_connection
import libp2p.pubsub.gossipsub as gossipsub_mod
import libp2p.pubsub.pubsub as pubsub_mod
import libp2p.stream_muxer.muxer_multistream as muxer_multistream
import libp2p.stream_muxer.yamux.yamux as yamux_mod
import pytest
import trio
import trio.testing
from libp2p.custom_types import TProtocol
from libp2p.io.trio import TrioTCPStream
from libp2p.io.utils import read_exactly
from libp2p.host.basic_host import _IdentifyNotifee
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.swarm import Swarm
from libp2p.network.tag_store import TagStoreNotifee
from libp2p.network.stream.net_stream import NetStream
from libp2p.peer import peerstore
from libp2p.protocol_muxer.multiselect_client import MultiselectClient
from libp2p.pubsub import utils as pubsub_utils
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.pubsub_notifee import PubsubNotifee
from libp2p.utils.varint import encode_uvarint, read_varint_prefixed_bytes_limited
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.security.noise.io import BaseNoiseMsgReadWriter, NoiseTransportReadWriter
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.rw_lock import ReadWriteLock
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from nacl.signing import SigningKey
from noise.connection import NoiseConnection
from noise.state import CipherState
from prometheus_client import CollectorRegistry

from fognode.node import p2pfix_copies, p2pfix_records, scored_pubsub
from fognode.node.connmgr import DialError
from fognode.node.events import EventBus
from fognode.node.host import Libp2pOverlay, OverlayConfig, open_overlay
from fognode.node.p2pfix_netstream import QuickNetStream
from fognode.node.p2pfix_tcpio import BufferedTCPStream, QuickLock
from fognode.node.p2pfix_yamux import QuickYamux, QuickYamuxStream
from tests import pins
from tests.polling import wait_until

ECHO = "/fognode/test/p2pfix-echo/1.0.0"
TOPIC = "fognode/test/p2pfix/1"

# sha256 (first 16 hex digits) of the source of each py-libp2p 0.8.1 function a fix replaces,
# wraps or relies on (node/p2pfix_*.py says how)
PINNED: dict[Any, str] = {
    pubsub_utils.maybe_consume_signed_record: "11b2181c27d75df4",
    peerstore.env_to_send_in_RPC: "9fea9d702c187d22",
    GossipSub.publish: "b978282af46297f7",
    GossipSub._emit_idontwant_for_message: "54753ff6cf35dec6",
    GossipSub.emit_idontwant: "e87d7cb9d4eda733",     # p2pfix_idontwant sends through it
    Pubsub.continuously_read_stream: "ac0c4ad87ca39288",
    TrioTCPStream.read: "c606ac89ec9d0eae",
    TrioTCPStream.write: "4b00ddfa20520320",    # BufferedTCPStream.write: its errors kept
    TrioTCPStream.__init__: "4222fa993846189e",
    Yamux.__init__: "3b11a2a71ca444ca",
    Yamux._write_frame: "16ff969cdd0d2b1b",
    Yamux.open_stream: "f3e0ef79ec21d0cb",
    YamuxStream.__init__: "ab24c0709285d573",
    YamuxStream._auto_tune_and_send_window_update: "6ebcbd822fe7f996",
    # node/p2pfix_yamux.py window budget: the growth it copies, the reset whose unread bytes it
    # drops, and the paths that remove a stream from `streams` (its table gives charges back)
    YamuxStream._apply_autotune_epoch: "30126bc3d0c140c4",
    YamuxStream.reset: "8e40f901761d3ac0",
    Yamux._finalize_stream_locked: "95b60e92421133b4",
    Yamux._sweep_stale_streams: "0b1a5033e707e138",
    MuxerMultistream.new_conn: "91d21f40f524ad99",
    NetStream.__init__: "c1bafd9d5782acb4",
    NetStream.write: "b0662734215dfe68",    # hands a PrefixedData to QuickYamuxStream untouched
    NetStream.read: "cc3b280850abe4b3",     # hands a hand_over stream's bytearray on untouched
    SwarmConn._add_stream: "1c9c31442d6a25ef",
    MultiselectClient.select_one_of: "a0dda8ab1ebd1006",
    MultiselectClient.try_select: "0d6c7ecb28d96b5a",
    NoiseTransport.secure_inbound: "4c447c4ea56267b1",
    NoiseTransport.secure_outbound: "f5be8851b898cbf1",
    ReadWriteLock.__init__: "33a61b81bdceb44f",
    # node/scored_pubsub.py's admission and node/gossip_inbox.py: the reader task is the
    # stream handler's, `_is_subscribed_to_msg` is asked before a message's task is spawned,
    # validators run before the 32-slot subscription channel
    Pubsub.stream_handler: "4be06aba2f448b7b",
    Pubsub._is_subscribed_to_msg: "fb0271117bb6936e",
    Pubsub.notify_subscriptions: "2fb1385e4bbf3c0a",
    Pubsub.push_msg: "1531483ab4d77674",
    Pubsub._is_msg_seen: "e951b38458884cbd",     # scored_pubsub drops seen copies before the task
    # node/p2pfix_pubsubwrite.py: the loop it replaces, and the framing it copies
    Pubsub.handle_sending_messages: "4eb0b978f9c4b142",
    Pubsub.write_msg: "ee86b14b4181afff",
    # node/p2pfix_noiseio.py: the session it replaces, the Noise framing and cipher calls it
    # makes directly, the raw connection's error mapping it copies; node/p2pfix_yamux.py: the
    # read and write paths it replaces, and handle_incoming, which must go on reading a frame's
    # header with read_exactly(secured_conn, 12) and its body with _read_data_body
    SecureSession.__init__: "b076c07a6dc2251b",
    SecureSession.read: "eeba14a89cf12325",
    SecureSession.write: "0298b065574caeda",
    BaseNoiseMsgReadWriter.read_msg: "b2fa218c135c82c0",
    BaseNoiseMsgReadWriter.write_msg: "00818920318f86aa",
    NoiseTransportReadWriter.encrypt: "c03978a143638cd3",
    NoiseTransportReadWriter.decrypt: "d9d398b4d8b92c75",
    NoiseConnection.encrypt: "f271e53c675ea6f3",
    NoiseConnection.decrypt: "dbc6207480747631",
    CipherState.encrypt_with_ad: "b4ed12be2ee3e9a3",
    CipherState.decrypt_with_ad: "1493b737bc5cf71f",
    RawConnection.read: "fc5cc670c47db302",
    RawConnection.write: "1a486aa01639d127",
    # node/p2pfix_yamux_reader.py: handle_incoming's DATA and WINDOW_UPDATE branches for frames
    # without flags, done before it sees them; it reads headers as read_exactly(conn, 12)
    Yamux.handle_incoming: "ad15ff6943feac20",
    read_exactly: "ae12723eff6b556d",
    Yamux._read_data_body: "54cc06c91ba6ee15",
    Yamux.read_stream: "d07c99299384666d",
    YamuxStream.read: "ca585f2199fd4e83",
    YamuxStream.write: "d87f74dfb53ab194",
    YamuxStream._grow_threshold: "fde3988bca54745c",
    # node/p2pfix_streamopen.py: the fan-out it copies, the stream notifications it skips as
    # no-ops (a py-libp2p that gives one of them work must fail here), the stream semaphore it
    # replaces and the three places that use it (acquire, release, value only)
    Swarm._notify: "36afe611751a4cb8",
    Swarm.set_resource_manager: "ba5593b3f671fb6a",
    Swarm.new_stream: "125812a9745b972b",
    SwarmConn._handle_muxed_stream: "fb51f8a3e37c9800",
    Swarm.notify_closed_stream: "a34ffe3b8041e823",
    TagStoreNotifee.opened_stream: "a2478e3d7b583991",
    TagStoreNotifee.closed_stream: "8645d788a5abcd8b",
    _IdentifyNotifee.opened_stream: "7202a6f0b3faf393",
    _IdentifyNotifee.closed_stream: "2ca1ed587438b50a",
    PubsubNotifee.opened_stream: "b0e08b02576cb4d4",
    PubsubNotifee.closed_stream: "21a58180cbef9594",
    ReadWriteLock.acquire_write: "26db183f402eee45",
    ReadWriteLock.release_write: "3f06e1b08c17ac15",
}


def test_pinned_py_libp2p_is_the_one_the_fixes_were_written_for() -> None:
    assert version("libp2p") == "0.8.1"
    assert version("noiseprotocol") == "0.3.1"     # node/p2pfix_noiseio.py calls its ciphers
    changed = pins.changed(PINNED)
    assert not changed, f"py-libp2p changed under node/p2pfix_*.py: {changed}"
    # the names the monkeypatches rebind still exist where they are looked up
    for mod, name in ((pubsub_mod, "maybe_consume_signed_record"),
                      (gossipsub_mod, "maybe_consume_signed_record"),
                      (pubsub_mod, "env_to_send_in_RPC"), (gossipsub_mod, "env_to_send_in_RPC"),
                      (muxer_multistream, "Yamux"), (yamux_mod, "YamuxStream"),
                      (yamux_mod, "read_exactly"),
                      (swarm_connection, "NetStream")):
        assert hasattr(mod, name), (mod.__name__, name)
    # p2pfix_idontwant relies on publish() not awaiting before it emits IDONTWANT
    src = inspect.getsource(GossipSub.publish)
    head = src[:src.index("await self._emit_idontwant_for_message")]
    assert not re.search(r"\bawait\b", head.split('"""')[-1])


@asynccontextmanager
async def overlays(n: int, **kw: Any) -> AsyncIterator[list[Libp2pOverlay]]:
    """n overlays on 127.0.0.1, each bootstrapped to the first."""
    async with AsyncExitStack() as stack:
        nodes: list[Libp2pOverlay] = []
        for _ in range(n):
            reg = CollectorRegistry()
            boot = [nodes[0].listen_addrs()[0]] if nodes else []
            cfg = OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=boot, **kw)
            nodes.append(await stack.enter_async_context(
                open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(reg), reg)))
        await wait_until(lambda: all(len(x.peers()) >= 1 for x in nodes), what="connected")
        yield nodes


async def echo(fs: Any) -> None:
    while True:
        try:
            data = await fs.recv_bytes()
        except Exception:
            return
        await fs.send_bytes(data)


class _Iterations(trio.abc.Instrument):
    def __init__(self) -> None:
        self.count = 0
        self.on = False

    def before_io_wait(self, timeout: float) -> None:
        if self.on:
            self.count += 1


async def test_fognode_connections_use_the_fixed_classes_and_a_stream_open_is_short() -> None:
    inst = _Iterations()
    async with overlays(2) as (a, b):
        b.set_stream_handler(ECHO, echo)
        (conn,) = a.host.get_network().get_connections(b.host.get_id())
        assert isinstance(conn.muxed_conn, QuickYamux)
        assert isinstance(conn.muxed_conn.streams_lock, QuickLock)
        raw = conn.muxed_conn.secured_conn.conn.read_writer.read_write_closer
        assert isinstance(raw.stream, BufferedTCPStream)
        await trio.sleep(0.5)       # identify and the pubsub streams settle
        trio.lowlevel.add_instrument(inst)
        try:
            counts = []
            for _ in range(7):
                inst.count, inst.on = 0, True
                fs = await a.open_stream(b.peer_id, ECHO)
                inst.on = False
                counts.append(inst.count)
                assert isinstance(fs._stream, QuickNetStream)
                assert isinstance(fs._stream.muxed_stream, QuickYamuxStream)
                await fs.send_bytes(b"ping")
                assert await fs.recv_bytes() == b"ping"
                await fs.close()
        finally:
            trio.lowlevel.remove_instrument(inst)
        # py-libp2p 0.8.1 alone: 89 iterations. Idle, these fixes take 12 or 13 (issue 16's
        # target is 12): that figure is tools/bench/stream_open.py's to report. This test
        # guards against a regression, with room for another task's wake-up in the middle
        # (on 2 loaded cores the median was 13 in 8 of 60 runs)
        assert statistics.median(counts) <= 16, counts


async def test_bulk_both_ways_with_go_yamux_window_updates() -> None:
    """4 MiB each way through one stream: window updates only at half the window, no stall."""
    blob = os.urandom(4 << 20)
    async with overlays(2, max_frame=8 << 20) as (a, b):
        b.set_stream_handler(ECHO, echo)
        with trio.fail_after(60):
            fs = await a.open_stream(b.peer_id, ECHO)
            await fs.send_bytes(blob)
            assert await fs.recv_bytes() == blob
            await fs.close()


async def test_quick_lock_excludes_hands_over_in_order_and_drops_a_cancelled_waiter() -> None:
    lock = QuickLock()
    await lock.acquire()            # free: taken without a checkpoint
    assert lock.locked()
    with pytest.raises(trio.WouldBlock):
        lock.acquire_nowait()
    order: list[int] = []

    async def waiter(i: int, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            async with lock:
                order.append(i)
                await trio.sleep(0)     # still held across a checkpoint

    gone = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        for i, scope in ((0, None), (99, gone), (1, None), (2, None)):
            nursery.start_soon(waiter, i, scope)
            await trio.testing.wait_all_tasks_blocked()     # queued in this order
        gone.cancel()               # the second waiter leaves the queue
        await trio.testing.wait_all_tasks_blocked()
        lock.release()              # any task may release; the first waiter gets the lock
    assert order == [0, 1, 2] and not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()


async def test_small_writes_in_a_row_yield_every_sixteen_and_arrive_in_order() -> None:
    """BufferedTCPStream.write: a small write the kernel takes returns without a checkpoint,
    but every 16th checkpoints, so a task writing small frames cannot hold the loop."""
    got: list[bytes] = []
    done = trio.Event()

    async def sink(fs: Any) -> None:
        for _ in range(160):
            got.append(await fs.recv_bytes())
        done.set()

    async with overlays(2) as (a, b):
        b.set_stream_handler(ECHO, sink)
        with trio.fail_after(30):
            fs = await a.open_stream(b.peer_id, ECHO)
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await trio.sleep(0)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker)
                await trio.sleep(0.05)
                start = ticks
                for i in range(160):
                    await fs.send_bytes(b"%d" % i + bytes(200))
                ran = ticks - start
                nursery.cancel_scope.cancel()
            await done.wait()
    assert got == [b"%d" % i + bytes(200) for i in range(160)]
    assert 160 // 16 - 2 <= ran < 160, ran     # yields about every 16 writes, not every one


class _Frames(logging.Handler):
    """The frames py-libp2p's handle_incoming saw (its debug line per frame)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("YAMUX RX"):
            self.seen.append(msg)


async def test_plain_frames_skip_handle_incoming_and_flagged_ones_reach_it() -> None:
    """node/p2pfix_yamux_reader.py: DATA frames without flags whose body came with the header,
    and WINDOW_UPDATEs without flags, are handled before handle_incoming; a FIN still reaches
    it, and the bytes arrive in order."""
    yamux_log = logging.getLogger(yamux_mod.__name__)
    frames = _Frames()
    async with overlays(2) as (a, b):
        b.set_stream_handler(ECHO, echo)
        with trio.fail_after(30):
            fs = await a.open_stream(b.peer_id, ECHO)
            level = yamux_log.level
            yamux_log.setLevel(logging.DEBUG)
            yamux_log.addHandler(frames)
            try:
                for i in range(50):
                    await fs.send_bytes(b"%d" % i + bytes(300))
                    assert await fs.recv_bytes() == b"%d" % i + bytes(300)
                big = os.urandom(600_000)       # window updates both ways
                await fs.send_bytes(big)
                assert await fs.recv_bytes() == big
                await fs.close()
                await wait_until(lambda: any("FIN" in m for m in frames.seen), what="FIN seen")
            finally:
                yamux_log.removeHandler(frames)
                yamux_log.setLevel(level)
    assert not [m for m in frames.seen if "flags=0 " in m and "DATA" in m and "length=3" in m]
    assert not [m for m in frames.seen if "WINDOW_UPDATE flags=0 " in m], frames.seen


async def test_multistream_falls_back_to_the_next_protocol_and_refuses_unknown_ones() -> None:
    async with overlays(2) as (a, b):
        b.set_stream_handler(ECHO, echo)
        with trio.fail_after(20):
            raw = await a.host.new_stream(b.host.get_id(),
                                          [TProtocol("/fognode/test/nobody/1.0.0"),
                                           TProtocol(ECHO)])
            assert raw.get_protocol() == ECHO
            await raw.reset()
            with pytest.raises(DialError, match="failed"):
                await a.open_stream(b.peer_id, "/fognode/test/nobody/1.0.0")


async def test_a_peer_record_is_verified_once_not_per_rpc() -> None:
    got: list[bytes] = []
    async with overlays(2) as (a, b):
        async def on_msg(msg: Any) -> None:
            got.append(msg.data)

        await b.subscribe(TOPIC, on_msg)
        await a.subscribe(TOPIC, on_msg)
        await wait_until(lambda: len(a.gossipsub.mesh.get(TOPIC, ())) >= 1, what="mesh")
        before = b.peer_records.verified
        for i in range(40):      # one at a time: a burst would leave as one batch (one RPC)
            await a.publish(TOPIC, b"m%d" % i)
            await wait_until(lambda: len(got) > i, what=f"message {i} at b")
        # every RPC carried a's record; b verified it at most once more (a's first RPC on a
        # new stream may come before this point), and accepted the rest from its cache
        assert b.peer_records.verified - before <= 1
        assert b.peer_records.skipped >= 40
        assert a.host.get_id() in b.peer_records.accepted


def test_a_changed_or_forged_record_is_verified_again() -> None:
    cache = p2pfix_records.RecordCache(reverify_after=600.0, clock=lambda: 0.0)
    cache.remember("peer", b"record-1")
    assert cache.known("peer", b"record-1")
    assert not cache.known("peer", b"record-2")          # changed: verified again
    assert not cache.known("other", b"record-1")         # another peer: verified again
    late = p2pfix_records.RecordCache(reverify_after=600.0, clock=lambda: 601.0)
    late.accepted["peer"] = (b"record-1", 0.0)
    assert not late.known("peer", b"record-1")           # old acceptance: verified again
    # a forged record is refused by py-libp2p's own check and is not remembered
    host: Any = type("NotAHost", (), {})()     # only its identity is used here
    cache2 = p2pfix_records.enroll(host)
    rpc = rpc_pb2.RPC(senderRecord=b"\x0a\x03not an envelope")
    assert p2pfix_records.maybe_consume_signed_record_once(rpc, host, "peer") is False
    assert p2pfix_records.maybe_consume_signed_record_once(rpc, host, "peer") is False
    assert cache2.verified == 2 and cache2.skipped == 0 and not cache2.accepted


async def test_idontwant_only_where_it_can_save_a_copy() -> None:
    got: dict[int, int] = {}
    async with overlays(3) as nodes:
        async def on_msg(msg: Any) -> None:
            got[len(msg.data)] = got.get(len(msg.data), 0) + 1

        for n in nodes:
            await n.subscribe(TOPIC, on_msg)
        await wait_until(lambda: all(len(n.gossipsub.mesh.get(TOPIC, ())) >= 2 for n in nodes),
                         what="a full mesh of 3")
        a = nodes[0]

        def idontwant_seen() -> int:
            return sum(len(ids) for n in nodes
                       for ids in n.gossipsub.dont_send_message_ids.values())

        for i in range(10):      # one at a time: a burst would leave as one (large) batch
            await a.publish(TOPIC, b"s" * 200 + bytes([i]))
            await wait_until(lambda: sum(got.values()) >= 2 * (i + 1),
                             what=f"small message {i} at both others")
        skipped = sum(n.gossipsub.idontwant_skipped for n in nodes)
        assert skipped >= 10 and idontwant_seen() == 0
        # large, but a full mesh of 3 (<= D): every copy comes from the origin in the first hop
        for i in range(5):
            await a.publish(TOPIC, b"L" * 2000 + bytes([i]))
        await wait_until(lambda: sum(got.values()) >= 30, what="large messages at both others")
        # (the burst may leave as one batch: at least the two receivers each skipped one)
        assert sum(n.gossipsub.idontwant_full_mesh for n in nodes) >= 2
        assert idontwant_seen() == 0
        # with the full-mesh rule off: sent, but never back to the origin (also the forwarder)
        for n in nodes:
            n.gossipsub.full_mesh_max = 0
        for i in range(5):
            await a.publish(TOPIC, b"M" * 2000 + bytes([i]))
        await wait_until(lambda: sum(got.values()) >= 40, what="more large messages at both others")
        await wait_until(lambda: idontwant_seen() > 0, what="an IDONTWANT for a large message")
        assert not any(a.gossipsub.dont_send_message_ids.values())
        assert sum(n.gossipsub.idontwant_sent for n in nodes) >= 1


async def test_a_copy_already_seen_is_dropped_before_its_task() -> None:
    """scored_pubsub: py-libp2p asks `_is_subscribed_to_msg` before it spawns a message's task;
    a copy of a message already seen is refused there (push_msg would drop it after the spawn)."""
    async with overlays(2) as (a, b):
        got: list[bytes] = []
        seen_msgs: list[Any] = []

        async def on_msg(msg: Any) -> None:
            got.append(msg.data)

        for n in (a, b):
            await n.subscribe(TOPIC, on_msg)
        await wait_until(lambda: len(a.gossipsub.mesh.get(TOPIC, ())) >= 1, what="a mesh")
        push = b.pubsub.push_msg

        async def spy(forwarder: Any, msg: Any) -> None:   # records, then the real push_msg
            seen_msgs.append(msg)
            await push(forwarder, msg)
        b.pubsub.push_msg = spy  # type: ignore[method-assign]
        await a.publish(TOPIC, b"once")
        await wait_until(lambda: b"once" in got and bool(seen_msgs), what="the message at b")
        msg = seen_msgs[0]
        assert b.pubsub._is_msg_seen(msg)
        token = scored_pubsub._READING_FROM.set((a.host.get_id(), str(a.host.get_id())))
        try:
            assert b.pubsub._is_subscribed_to_msg(msg) is False     # as read from a's stream
        finally:
            scored_pubsub._READING_FROM.reset(token)


# node/p2pfix_copies.py: the forward's peer selection it filters (a generator read after
# publish's IDONTWANT await) and the disconnect it forgets a peer on
PINNED[GossipSub._get_peers_to_send] = "1d2d334126ca87ec"
PINNED[GossipSub.remove_peer] = "bc0ead5b37c88dc3"


async def test_no_copy_goes_back_to_a_peer_that_sent_one() -> None:
    """p2pfix_copies: in a full mesh of 4 every copy read from a peer is noted; a noted peer is
    left out of the forward and out of a queued RPC; no message is lost."""
    got: dict[int, list[bytes]] = {}
    async with overlays(4) as nodes:
        for i, n in enumerate(nodes):
            async def on_msg(msg: Any, i: int = i) -> None:
                got.setdefault(i, []).append(msg.data)
            await n.subscribe(TOPIC, on_msg)
        await wait_until(lambda: all(len(n.gossipsub.mesh.get(TOPIC, ())) >= 3 for n in nodes),
                         what="a full mesh of 4")
        for k in range(20):
            await nodes[k % 4].publish(TOPIC, b"c" * 1500 + bytes([k]))
        await wait_until(lambda: all(len(got.get(i, [])) == 15 for i in range(4)),
                         what="every other node's 15 messages at every node")
        a, b, c = nodes[0], nodes[1], nodes[2]
        a_id, b_id, c_id = (n.host.get_id() for n in (a, b, c))
        # b noted the copies c sent it (c forwarded messages of a, or published its own)
        copies = b.gossipsub.copies
        assert any(copies.has(c_id, b.pubsub._msg_id_constructor(m))
                   for m in b.gossipsub.mcache.msgs.values()), "b noted no copy from c"
        d_id = nodes[3].host.get_id()
        assert set(b.gossipsub._get_peers_to_send([TOPIC], a_id, a_id, b"new")) == {c_id, d_id}
        copies.note(c_id, b"new")
        assert set(b.gossipsub._get_peers_to_send([TOPIC], a_id, a_id, b"new")) == {d_id}
        # a queued RPC holding a message c has and one it has not: only the second is written
        msgs = [rpc_pb2.Message(from_id=a_id.to_bytes(), seqno=bytes([1, k]), data=b"x",
                                topicIDs=[TOPIC]) for k in range(2)]
        copies.note(c_id, b.pubsub._msg_id_constructor(msgs[0]))
        rpc = rpc_pb2.RPC(publish=msgs)
        trimmed = p2pfix_copies.without_held(rpc, c_id, b.gossipsub, b.pubsub._msg_id_constructor)
        assert trimmed is not None and list(trimmed.publish) == [msgs[1]]
        assert len(rpc.publish) == 2          # the shared RPC (other peers') is untouched
        assert p2pfix_copies.without_held(rpc_pb2.RPC(publish=msgs[:1]), c_id, b.gossipsub,
                                          b.pubsub._msg_id_constructor) is None
        assert p2pfix_copies.without_held(rpc, a_id, b.gossipsub,
                                          b.pubsub._msg_id_constructor) is rpc


async def test_pubsub_reader_reads_ahead_and_serves_whole_rpcs() -> None:
    """scored_pubsub._FairReads: py-libp2p's RPC reader (varint a byte at a time, then the
    body) gets the same RPCs through the read-ahead, small, large (> READ_AHEAD) and mixed."""
    raw = TProtocol("/fognode/test/p2pfix-readahead/1.0.0")
    async with overlays(2) as (a, b):
        got: list[bytes] = []
        done = trio.Event()

        async def handler(stream: Any) -> None:
            reads = scored_pubsub._FairReads(stream)
            for _ in range(5):
                got.append(await read_varint_prefixed_bytes_limited(reads, 1 << 20))
            done.set()
        b.host.set_stream_handler(raw, handler)
        s = await a.host.new_stream(b.host.get_id(), [raw])
        bodies = [b"x", b"y" * 300, b"z" * (scored_pubsub.READ_AHEAD + 10), b"w" * 5,
                  b"v" * 200]
        framed = [encode_uvarint(len(x)) + x for x in bodies]
        await s.write(b"".join(framed[:4]))
        await s.write(framed[4])
        with trio.fail_after(10):
            await done.wait()
        assert got == bodies
        await s.close()
