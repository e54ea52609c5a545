"""Reliable gossip: the sans-IO sequence tracker, envelopes, and real hosts on 127.0.0.1."""
from __future__ import annotations

import math
import os
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

import pytest
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from fognode.node.event_mirror import EventMirror
from fognode.node.events import Event, EventBus
from fognode.node.gossip import (KIND_HEAD, KIND_MESSAGE, MessageStore, SequenceTracker,
                                 open_envelope, seal)
from fognode.node.gossip_tracker import Lost, Refusal, Refused, TrackerLimits
from fognode.node.host import Libp2pOverlay, OverlayConfig, open_overlay
from fognode.node.overlay import GossipMessage
from fognode.node.wire import pack, unpack
from tests.overlays import metric
from tests.polling import wait_until

TOPIC = "fognode/test/news/1"
O1, O2 = b"\x01" * 32, b"\x02" * 32


# --- sans-IO ------------------------------------------------------------------------------
# (the tracker's bounds under adversarial input: tests/node/test_gossip_tracker.py)

T = "fognode/test/t/1"


def tracker(**kw: Any) -> SequenceTracker:
    return SequenceTracker(TrackerLimits(**kw))


def test_tracker_in_order_and_duplicates() -> None:
    t = tracker(backfill=0)
    assert t.accept(T, O1, 1, 1, "r", 0.0)
    assert t.accept(T, O1, 1, 2, "r", 0.0)
    assert not t.accept(T, O1, 1, 2, "r", 0.0)      # duplicate
    assert not t.accept(T, O1, 1, 1, "r", 0.0)
    assert t.due(10.0) == [] and t.charges.missing == 0


def test_tracker_gap_is_pulled_then_filled() -> None:
    t = tracker(pull_delay=0.3, backfill=0)
    t.accept(T, O1, 1, 1, "r1", 0.0)
    assert t.accept(T, O1, 1, 4, "r2", 1.0)           # 2 and 3 are missing
    assert t.due(1.1) == []                           # a gap may heal by itself for pull_delay
    assert t.next_due() == 1.3
    (req,) = t.due(1.3)
    assert req.seqs == (2, 3) and req.origin == O1 and req.sources == ("r2", "r1")
    assert t.due(5.0) == []                           # in flight: not due twice
    assert t.accept(T, O1, 1, 3, "r1", 1.4, via_pull=True)
    assert t.accept(T, O1, 1, 2, "r1", 1.4, via_pull=True)
    t.pull_done(req, now=1.5)
    assert t.charges.missing == 0 and not t.take_events()
    t.check()


def test_tracker_failed_pulls_retry_then_drop_the_origin() -> None:
    t = tracker(pull_delay=0.0, retry=1.0, max_attempts=3, backfill=0, drop_backoff=30.0)
    t.accept(T, O1, 1, 1, "r", 0.0)
    t.accept(T, O1, 1, 3, "r", 0.0)
    now = 0.0
    for _ in range(3):
        (req,) = t.due(now)
        t.pull_done(req, now=now)
        now = t.next_due() if t.next_due() < math.inf else now
    events = t.take_events()
    lost = [e for e in events if isinstance(e, Lost)]
    assert len(lost) == 1 and lost[0].count == 1 and lost[0].sample == (2,)
    assert lost[0].reason == "unreachable"
    assert any(isinstance(e, Refused) and e.reason is Refusal.PULL_FAILURES for e in events)
    assert t.charges.missing == 0 and t.next_due() == math.inf   # state freed
    assert t.accept(T, O1, 1, 4, "r", now)            # the window moved past the lost one
    assert not t.accept(T, O1, 1, 2, "r", now)
    assert t.accept(T, O1, 1, 7, "r", now)            # quiet: the gap 5..6 is not pulled
    assert t.charges.missing == 0
    (ev,) = t.take_events()
    assert isinstance(ev, Refused) and ev.reason is Refusal.ORIGIN_BACKOFF and ev.skipped == 2
    t.check()


def test_tracker_gone_and_head() -> None:
    t = tracker(pull_delay=0.0, backfill=0)
    t.accept(T, O1, 1, 1, "r", 0.0)
    t.head(T, O1, 1, 3, "r", 0.0)                     # the last two were lost: the head says so
    (req,) = t.due(0.0)
    assert req.seqs == (2, 3)
    t.pull_done(req, gone=(2,), now=0.0)
    (ev,) = t.take_events()
    assert isinstance(ev, Lost) and ev.sample == (2,) and ev.reason == "gone"
    assert t.accept(T, O1, 1, 3, "r", 0.0)


def test_tracker_backfill_and_epochs() -> None:
    t = tracker(pull_delay=0.0, backfill=4)
    assert t.accept(T, O2, 7, 10, "r", 0.0)           # first sight: pull 6..9, optional
    (req,) = t.due(0.0)
    assert req.seqs == (6, 7, 8, 9)
    t.pull_done(req, gone=req.seqs, now=0.0)
    assert not t.take_events()                        # back-fill that is gone is no loss
    assert not t.accept(T, O2, 6, 11, "r", 0.0)       # older epoch: stale
    assert t.accept(T, O2, 8, 1, "r", 0.0)            # restarted publisher: new epoch
    assert t.due(0.0) == []
    assert t.accept(T, O1, 7, 10, "r", 0.0)           # topics are tracked apart
    assert t.accept("fognode/test/other/1", O1, 7, 10, "r", 0.0)


def test_tracker_a_jump_past_the_window_resyncs_from_the_new_head() -> None:
    t = tracker(pull_delay=0.0, backfill=4, window=16)
    t.accept(T, O1, 1, 1, "r", 0.0)
    assert t.accept(T, O1, 1, 4097, "r", 0.0)         # not 4095 missing entries: 4 back-fill
    assert t.charges.missing == 4
    (req,) = t.due(0.0)
    assert req.seqs == (4093, 4094, 4095, 4096)
    (ev,) = t.take_events()
    assert isinstance(ev, Refused) and ev.reason is Refusal.WINDOW and ev.skipped == 4091
    t.check()


def test_relay_cache_is_charged_per_forwarder() -> None:
    """One peer flooding the relay cache pushes out only its own entries."""
    store = MessageStore(relay_cache=40, relay_bytes=1 << 20, share=4)
    honest, evil = SigningKey(os.urandom(32)), SigningKey(os.urandom(32))
    for seq in range(1, 11):
        store.add_relayed(seal(honest, KIND_MESSAGE, 1, TOPIC, seq, b"h"), "good")
    for seq in range(1, 1001):
        store.add_relayed(seal(evil, KIND_MESSAGE, 1, TOPIC, seq, b"x" * 100), "bad")
    assert all(store.get_relayed(TOPIC, bytes(honest.verify_key), 1, s) for s in range(1, 11))
    kept = [s for s in range(1, 1001) if store.get_relayed(TOPIC, bytes(evil.verify_key), 1, s)]
    assert kept == list(range(991, 1001))          # its quota: 40 / 4, newest kept
    big = MessageStore(relay_cache=1000, relay_bytes=4000, share=4)
    for seq in range(1, 50):
        big.add_relayed(seal(evil, KIND_MESSAGE, 1, TOPIC, seq, b"x" * 300), "bad")
    assert big.bytes <= 1000                       # bounded by bytes too


@pytest.mark.parametrize("kw, key", [
    ({"gossip_window": 0}, "overlay.gossip_window"),
    ({"gossip_window": 600}, "overlay.gossip_window"),
    ({"gossip_window": 64, "gossip_backfill": 64}, "overlay.gossip_backfill"),
    ({"gossip_origins": 10, "gossip_origins_per_peer": 11}, "overlay.gossip_origins_per_peer"),
    ({"gossip_missing_per_peer": 0}, "overlay.gossip_missing_per_peer"),
    ({"gossip_pulls": 2, "gossip_pulls_per_peer": 3}, "overlay.gossip_pulls_per_peer"),
])
def test_tracker_config_is_validated(kw: dict[str, int], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        OverlayConfig(**kw).validate()
    assert e.value.key == key


def test_envelope_signature_and_fields() -> None:
    key = SigningKey(os.urandom(32))
    env = seal(key, KIND_MESSAGE, 5, TOPIC, 3, b"hello")
    back = open_envelope(env.raw, max_size=1 << 20)
    assert (back.origin, back.epoch, back.topic, back.seq, back.data) == (
        bytes(key.verify_key), 5, TOPIC, 3, b"hello")
    outer = unpack(env.raw)
    outer["b"]["d"] = b"HELLO"
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        open_envelope(pack(outer), max_size=1 << 20)
    head = seal(key, KIND_HEAD, 5, TOPIC, 3, b"")
    assert open_envelope(head.raw, max_size=1 << 20).kind == KIND_HEAD
    with pytest.raises(RemoteProtocolError):
        open_envelope(b"\x93\x01\x02", max_size=1 << 20)


# --- real hosts ---------------------------------------------------------------------------

@asynccontextmanager
async def cluster(n: int, **kw: Any) -> AsyncIterator[list[Libp2pOverlay]]:
    async with AsyncExitStack() as stack:
        nodes: list[Libp2pOverlay] = []
        for _ in range(n):
            reg = CollectorRegistry()
            boot = [nodes[0].listen_addrs()[0]] if nodes else []
            cfg = OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=boot,
                                peers_low=n - 1, connmgr_interval=0.3, **kw)
            nodes.append(await stack.enter_async_context(
                open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(reg), reg)))
        with trio.fail_after(20):
            while not all(len(x.peers()) == n - 1 for x in nodes):
                await trio.sleep(0.02)
        yield nodes



class Inbox:
    def __init__(self) -> None:
        self.got: list[GossipMessage] = []

    async def __call__(self, m: GossipMessage) -> None:
        self.got.append(m)

    def datas(self) -> list[bytes]:
        return sorted(m.data for m in self.got)


async def test_published_on_one_reaches_all_exactly_once() -> None:
    with trio.fail_after(40):
        async with cluster(5) as nodes:
            boxes = [Inbox() for _ in nodes]
            for n, box in zip(nodes, boxes):
                await n.subscribe(TOPIC, box)
            want = [b"msg-%03d" % i for i in range(20)]
            for d in want:                          # published before the mesh has formed:
                await nodes[2].publish(TOPIC, d)    # back-fill pulls whatever gossip missed
            await wait_until(lambda: all(b.datas() == want for i, b in enumerate(boxes)
                                         if i != 2))
            assert boxes[2].got == []               # no echo of our own publications
            assert all(m.origin == nodes[2].peer_id for b in boxes for m in b.got)
            await trio.sleep(0.3)                   # nothing arrives twice
            assert all(len(b.got) == 20 for i, b in enumerate(boxes) if i != 2)
            assert metric(nodes[2], "fognode_node_gossip_messages_out_total", topic=TOPIC) == 20
            assert metric(nodes[0], "fognode_node_gossip_messages_in_total", topic=TOPIC) == 20


async def test_a_dropped_message_is_pulled() -> None:
    with trio.fail_after(40):
        async with cluster(3, gossip_pull_delay=0.05) as (a, b, c):
            boxes = [Inbox(), Inbox(), Inbox()]
            for n, box in zip((a, b, c), boxes):
                await n.subscribe(TOPIC, box)
            await wait_until(lambda: len(a.pubsub.peer_topics.get(TOPIC, ())) == 2)
            # c loses seqs 3 and 4 on the way in, before the reliable layer sees them
            c.gossip.inbound_filter = lambda m, seq: seq not in (3, 4)
            for i in range(1, 7):
                await a.publish(TOPIC, b"m%d" % i)
            want = [b"m%d" % i for i in range(1, 7)]
            await wait_until(lambda: boxes[2].datas() == want and boxes[1].datas() == want)
            assert metric(c, "fognode_node_gossip_drops_total", topic=TOPIC,
                          reason="injected") >= 2
            assert metric(c, "fognode_node_gossip_pulled_total", topic=TOPIC) >= 2
            assert metric(c, "fognode_node_gossip_lost_total", topic=TOPIC) == 0
            served = sum(metric(x, "fognode_node_gossip_pull_served_total", topic=TOPIC)
                         for x in (a, b))
            assert served >= 2                       # fetched over the pull stream


async def test_a_lost_last_message_is_noticed_through_the_head() -> None:
    with trio.fail_after(40):
        async with cluster(2, gossip_pull_delay=0.05, gossip_heartbeat=0.5) as (a, b):
            box = Inbox()
            await a.subscribe(TOPIC, Inbox())
            await b.subscribe(TOPIC, box)
            # in a's mesh, not only subscribed: a message published before the GRAFT goes to
            # nobody, and b would pull it too (2 or 3 pulls instead of 1)
            await wait_until(lambda: len(a.gossipsub.mesh.get(TOPIC, ())) == 1)
            b.gossip.inbound_filter = lambda m, seq: seq != 3
            for i in range(1, 4):
                await a.publish(TOPIC, b"last-%d" % i)
            await wait_until(lambda: box.datas() == [b"last-1", b"last-2", b"last-3"])
            assert metric(b, "fognode_node_gossip_pulled_total", topic=TOPIC) == 1
            assert metric(a, "fognode_node_gossip_pull_served_total", topic=TOPIC) == 1


async def test_handler_errors_and_oversize_publish() -> None:
    calls: list[bytes] = []

    async def flaky(m: GossipMessage) -> None:
        calls.append(m.data)
        if m.data == b"bad":
            raise RuntimeError("role bug")

    with trio.fail_after(40):
        async with cluster(2, max_message_size=64 * 1024) as (a, b):
            await a.subscribe(TOPIC, Inbox())
            await b.subscribe(TOPIC, flaky)
            with pytest.raises(LocalProtocolError, match="over the limit"):
                await a.publish(TOPIC, b"x" * (64 * 1024))
            for d in (b"bad", b"good"):
                await a.publish(TOPIC, d)
            await wait_until(lambda: sorted(calls) == [b"bad", b"good"])
            # subscribing again (a restarted role) replaces the handler
            again = Inbox()
            await b.subscribe(TOPIC, again)
            await a.publish(TOPIC, b"after-restart")
            await wait_until(lambda: again.datas() == [b"after-restart"])
            assert b"after-restart" not in calls


async def test_backpressure_many_messages_all_arrive() -> None:
    with trio.fail_after(60):
        async with cluster(3, gossip_publish_queue=4, gossip_max_rate=2000.0) as nodes:
            boxes = [Inbox() for _ in nodes]
            for n, box in zip(nodes, boxes):
                await n.subscribe(TOPIC, box)
            await wait_until(lambda: len(nodes[0].pubsub.peer_topics.get(TOPIC, ())) == 2)
            want = [b"bulk-%04d" % i for i in range(300)]
            for d in want:
                await nodes[0].publish(TOPIC, d)
            await wait_until(lambda: boxes[1].datas() == want and boxes[2].datas() == want,
                             timeout=40)


@dataclass(frozen=True)
class JobDone(Event):
    job: str
    units: int
    tags: tuple[str, ...]


@dataclass(frozen=True)
class LocalOnly(Event):
    note: str


async def test_event_mirror_both_ways_without_echo() -> None:
    with trio.fail_after(40):
        async with cluster(2) as (a, b):
            mirrors = [EventMirror(n, n.events, "fognode/test/events/1", [JobDone]) for n in (a, b)]
            seen_b = b.events.subscribe("test-b", [JobDone])
            seen_a = a.events.subscribe("test-a", [JobDone])
            async with trio.open_nursery() as nursery:
                for mirror in mirrors:
                    await nursery.start(mirror.run)
                await wait_until(lambda: len(a.pubsub.peer_topics.get("fognode/test/events/1",
                                                                      ())) == 1)
                a.events.publish(JobDone(job="j1", units=3, tags=("x", "y")))
                a.events.publish(LocalOnly(note="stays here"))
                assert await seen_a.receive() == JobDone("j1", 3, ("x", "y"))
                assert await seen_b.receive() == JobDone("j1", 3, ("x", "y"))
                b.events.publish(JobDone(job="j2", units=1, tags=()))
                assert await seen_b.receive() == JobDone("j2", 1, ())
                assert await seen_a.receive() == JobDone("j2", 1, ())
                await trio.sleep(0.5)                # no echo: nothing else arrives
                with pytest.raises(trio.WouldBlock):
                    seen_a._recv.receive_nowait()
                with pytest.raises(trio.WouldBlock):
                    seen_b._recv.receive_nowait()
                assert metric(a, "fognode_node_gossip_messages_out_total",
                              topic="fognode/test/events/1") == 1
                with pytest.raises(RemoteProtocolError, match="units"):
                    mirrors[0].decode(pack({"v": 1, "event": "JobDone",
                                            "f": {"job": "j", "units": "3", "tags": []}}), "p")
                nursery.cancel_scope.cancel()
