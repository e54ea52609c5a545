"""The resource manager on real hosts (127.0.0.1): a hostile peer's silent, half-sent and
surplus streams against an in-process overlay; an honest long-lived stream is left alone."""
from __future__ import annotations

import logging
import os
import struct
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import pytest
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.errors import StreamClosed
from fognode.node.events import EventBus
from fognode.node.host import Libp2pOverlay, OverlayConfig, open_overlay
from fognode.tools.bench.attacks import hostile_peer
from tests.overlays import metric

LOCAL = ["/ip4/127.0.0.1/tcp/0"]
ECHO = "/fognode/test-echo/1.0.0"
OTHER = "/fognode/test-other/1.0.0"


@asynccontextmanager
async def victim(**kw: Any) -> AsyncIterator[Libp2pOverlay]:
    reg = CollectorRegistry()
    cfg = OverlayConfig(listen=LOCAL, peers_low=0, **kw)
    async with open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(reg), reg) as ov:
        async def echo(fs: Any) -> None:
            while True:
                try:
                    obj = await fs.recv()
                except StreamClosed:
                    return
                await fs.send({"echo": obj})
        ov.set_stream_handler(ECHO, echo)
        ov.set_stream_handler(OTHER, echo)
        yield ov



async def reset_by_victim(s: Any) -> bool:
    """Read until the victim resets (or ends) the stream: True then."""
    while True:
        try:
            if not await s.read(4096):
                return True
        except Exception:   # StreamReset and its kin
            return True


async def refused(hp: Any, protocol: str) -> bool:
    """Open a stream the victim should refuse: True when the open fails (the reset came
    during negotiation) or the stream is reset right after."""
    try:
        s = await hp.raw_stream(protocol)
    except Exception:   # StreamFailure: reset while negotiating
        return True
    return await reset_by_victim(s)


async def test_silent_and_half_sent_streams_are_reset_at_their_deadlines() -> None:
    with trio.fail_after(30):
        async with victim(stream_first_frame_timeout=0.5, stream_progress_timeout=0.5,
                          max_frame=65536, buffer_limit_per_peer=65536) as v:
            async with hostile_peer(v.listen_addrs()[0]) as hp:
                silent = await hp.raw_stream(ECHO)
                half = await hp.raw_stream(ECHO)
                await half.write(struct.pack(">I", 60000) + bytes(30000))
                with trio.fail_after(5):   # deadline 0.5 s; bounded wait, not a timing claim
                    while metric(v, "fognode_node_stream_buffered_bytes") < 30000:
                        await trio.sleep(0.02)
                    assert await reset_by_victim(silent) and await reset_by_victim(half)
                    while v.resources.manager.streams_of(hp.peer_id, ECHO) > 0 or \
                            metric(v, "fognode_node_stream_buffered_bytes") > 0:
                        await trio.sleep(0.02)
                assert metric(v, "fognode_node_stream_deadlines_total", phase="first_frame") == 1
                assert metric(v, "fognode_node_stream_deadlines_total", phase="partial_frame") == 1


async def test_a_trickled_frame_is_reset_at_its_frame_deadline() -> None:
    with trio.fail_after(30):
        async with victim(stream_progress_timeout=1.0, stream_min_rate=2000.0) as v:
            async with hostile_peer(v.listen_addrs()[0]) as hp:
                s = await hp.raw_stream(ECHO)
                await s.write(struct.pack(">I", 4000))   # 1 + 4000/2000 = 3 s for the frame
                reset = False
                for _ in range(100):    # 100 bytes every 0.2 s: each chunk in time, 500 B/s
                    try:
                        await s.write(bytes(100))
                    except Exception:   # the victim reset the stream
                        reset = True
                        break
                    await trio.sleep(0.2)
                assert reset or await reset_by_victim(s)
                assert metric(v, "fognode_node_stream_deadlines_total", phase="slow_frame") == 1
                assert metric(v, "fognode_node_stream_deadlines_total", phase="partial_frame") == 0


async def test_long_lived_stream_may_idle_between_frames_but_not_past_idle_limit(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fognode.resources")
    with trio.fail_after(30):
        async with victim(stream_first_frame_timeout=0.3, stream_idle_timeout=2.0,
                          stream_progress_timeout=0.3) as v:
            async with victim() as client:
                await client.connect(v.listen_addrs()[0])
                fs = await client.open_stream(v.peer_id, ECHO)
                await fs.send(1)
                assert await fs.recv() == {"echo": 1}
                await trio.sleep(0.8)   # quiet longer than the first-frame and progress deadlines
                await fs.send(2)
                assert await fs.recv() == {"echo": 2}
                t0 = trio.current_time()
                with trio.fail_after(10):
                    while metric(v, "fognode_node_stream_deadlines_total", phase="idle") == 0:
                        await trio.sleep(0.05)
                assert trio.current_time() - t0 >= 1.5
                try:
                    await fs.send(3)
                    await fs.recv()
                    raise AssertionError("the idle stream was not reset")
                except StreamClosed:
                    pass
                assert metric(v, "fognode_node_stream_deadlines_total", phase="first_frame") == 0
    # housekeeping, not a stall: the idle reset is logged at INFO (it was a WARNING that
    # validators printed for every honest peer's pooled order stream)
    idle = [r for r in caplog.records if "(idle); stream reset" in r.getMessage()]
    assert idle and all(r.levelno == logging.INFO for r in idle), [(r.levelname, r.getMessage()) for r in idle]


async def test_streams_over_a_peer_limit_are_refused_at_once_and_counted() -> None:
    with trio.fail_after(30):
        async with victim(stream_limit_per_peer=4, stream_limit_per_peer_protocol=2,
                          stream_first_frame_timeout=60.0) as v:
            async with hostile_peer(v.listen_addrs()[0]) as hp:
                # py-libp2p's own long-lived streams (pubsub) take slots too: count from there
                with trio.fail_after(5):
                    while metric(v, "fognode_node_inbound_streams") < 1:
                        await trio.sleep(0.02)
                base = int(metric(v, "fognode_node_inbound_streams"))
                held = [await hp.raw_stream(ECHO) for _ in range(2)]
                with trio.fail_after(3):
                    assert await refused(hp, ECHO)
                assert metric(v, "fognode_node_resource_refusals_total",
                              reason="streams_peer_protocol") == 1
                more = [await hp.raw_stream(OTHER) for _ in range(4 - base - 2)]
                with trio.fail_after(3):
                    assert await refused(hp, OTHER)
                assert metric(v, "fognode_node_resource_refusals_total", reason="streams_peer") == 1
                assert metric(v, "fognode_node_inbound_streams") == 4
                # an honest peer is not affected by the hostile one's full scopes
                async with victim() as honest:
                    await honest.connect(v.listen_addrs()[0])
                    fs = await honest.open_stream(v.peer_id, ECHO)
                    await fs.send("hi")
                    assert await fs.recv() == {"echo": "hi"}
                    await fs.close()
                for s in held + more:
                    await s.reset()
                with trio.fail_after(5):
                    while metric(v, "fognode_node_inbound_streams") > base:
                        await trio.sleep(0.02)


async def test_partial_frames_are_charged_as_they_arrive_and_refused_over_budget() -> None:
    with trio.fail_after(30):
        async with victim(max_frame=65536, buffer_limit_per_peer=131072,
                          buffer_limit_total=1 << 20, stream_progress_timeout=30.0) as v:
            async with hostile_peer(v.listen_addrs()[0]) as hp:
                # a frame announced as 64 KiB reserves nothing: only what arrives is charged
                s0 = await hp.raw_stream(ECHO)
                await s0.write(struct.pack(">I", 65536) + bytes(1000))
                with trio.fail_after(5):
                    while metric(v, "fognode_node_stream_buffered_bytes") < 1000:
                        await trio.sleep(0.02)
                assert metric(v, "fognode_node_stream_buffered_bytes") < 4096
                streams = []
                for _ in range(3):
                    s = await hp.raw_stream(ECHO)
                    await s.write(struct.pack(">I", 65536) + bytes(60000))
                    streams.append(s)
                with trio.fail_after(5):
                    while metric(v, "fognode_node_resource_refusals_total",
                                 reason="buffer_peer") < 1:
                        await trio.sleep(0.02)
                assert metric(v, "fognode_node_stream_buffered_bytes") <= 131072
                for s in [s0, *streams]:
                    await s.reset()
                with trio.fail_after(5):
                    while metric(v, "fognode_node_stream_buffered_bytes") > 0:
                        await trio.sleep(0.02)


async def test_libp2p_own_handlers_take_slots_too() -> None:
    with trio.fail_after(30):
        async with victim(stream_limit_per_peer_protocol=1) as v:
            async with hostile_peer(v.listen_addrs()[0]) as hp:
                first = await hp.raw_stream("/ipfs/ping/1.0.0")     # held by the ping loop
                await first.write(bytes(32))
                assert len(await first.read(32)) == 32
                with trio.fail_after(3):
                    assert await refused(hp, "/ipfs/ping/1.0.0")
                assert metric(v, "fognode_node_resource_refusals_total",
                              reason="streams_peer_protocol") >= 1
                await first.reset()
