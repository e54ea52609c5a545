"""Peer latency: the sans-IO schedule/EWMA (node/latency.py), libp2p ping between real
overlays (node/ping.py), and `node.peers` on real daemons."""
from __future__ import annotations

import os
import random
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, AsyncIterator

import pytest
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.errors import ConfigError
from fognode.node.events import EventBus
from fognode.node.host import Libp2pOverlay, OverlayConfig, open_overlay
from fognode.node.latency import EWMA_WEIGHT, LatencyTracker, PingSettings
from fognode.node.ping import PING_PROTOCOL
from fognode.tools.devnet import wait_until as wait_until_sync
from tests.conftest import NodeFactory
from tests.polling import wait_until

LOCAL = ["/ip4/127.0.0.1/tcp/0"]


# -- the sans-IO core ---------------------------------------------------------------------------

def tracker(**kw: Any) -> LatencyTracker:
    return LatencyTracker(PingSettings(**kw), random.Random(7))


def test_first_ping_soon_then_every_interval_with_jitter() -> None:
    t = tracker(interval=20.0, jitter=0.25, first_delay=1.0)
    t.connected("a", 100.0)
    first = t.next_due()
    assert first is not None and 100.0 <= first <= 101.0
    assert t.due(first - 0.001, 8) == []
    assert t.due(first, 8) == ["a"]
    assert t.next_due() is None and t.due(first + 100, 8) == []      # in flight: not again
    t.record_rtt("a", 0.010, first + 0.01)
    nxt = t.next_due()
    assert nxt is not None and first + 0.01 + 15.0 <= nxt <= first + 0.01 + 25.0
    assert t.latency("a") == pytest.approx(0.010)
    t.due(nxt, 8)
    t.record_rtt("a", 0.020, nxt)
    assert t.latency("a") == pytest.approx((1 - EWMA_WEIGHT) * 0.010 + EWMA_WEIGHT * 0.020)


def test_failures_in_a_row_signal_once_and_a_pong_clears_them() -> None:
    t = tracker(failures=3, first_delay=0.0)
    t.connected("a", 0.0)
    now = 0.0
    signals = []
    for _ in range(5):
        now = t.next_due() or now
        assert t.due(now, 1) == ["a"]
        signals.append(t.record_failure("a", now))
    assert signals == [False, False, True, False, False]
    assert t.failures("a") == 5 and t.unresponsive() == ["a"] and t.latency("a") is None
    now = t.next_due() or now
    t.due(now, 1)
    t.record_rtt("a", 0.003, now)
    assert t.failures("a") == 0 and t.unresponsive() == []


def test_due_is_bounded_and_disconnected_peers_are_dropped() -> None:
    t = tracker(first_delay=0.0)
    for p in "abcdef":
        t.connected(p, 0.0)
    t.disconnected("c")
    got = t.due(0.0, 3)
    assert len(got) == 3 and "c" not in got
    rest = t.due(0.0, 10)
    assert sorted(got + rest) == list("abdef")
    t.record_rtt("c", 0.1, 1.0)            # a late result for a gone peer changes nothing
    assert t.latency("c") is None and len(t) == 5


@pytest.mark.parametrize("kw,key", [({"ping_interval": 0}, "overlay.ping_interval"),
                                    ({"ping_timeout": float("nan")}, "overlay.ping_timeout"),
                                    ({"ping_failures": 0}, "overlay.ping_failures")])
def test_ping_config_errors_name_the_key(kw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        OverlayConfig(**kw).validate()
    assert e.value.key == key


# -- real overlays ------------------------------------------------------------------------------

@asynccontextmanager
async def pair(**kw: Any) -> AsyncIterator[tuple[Libp2pOverlay, Libp2pOverlay]]:
    async with AsyncExitStack() as stack:
        nodes: list[Libp2pOverlay] = []
        for _ in range(2):
            reg = CollectorRegistry()
            boot = [nodes[0].listen_addrs()[0]] if nodes else []
            cfg = OverlayConfig(listen=LOCAL, bootstrap=boot, peers_low=1, **kw)
            nodes.append(await stack.enter_async_context(
                open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(reg), reg)))
        yield nodes[0], nodes[1]


def sample(ov: Libp2pOverlay, name: str, **labels: str) -> float:
    v = ov.metrics.get_sample_value(name, labels)
    return 0.0 if v is None else v


async def test_two_overlays_see_each_others_latency() -> None:
    with trio.fail_after(20):
        async with pair() as (a, b):
            await wait_until(lambda: a.latency(b.peer_id) is not None
                             and b.latency(a.peer_id) is not None, timeout=10)
            for x, y in ((a, b), (b, a)):
                lat = x.latency(y.peer_id)
                assert lat is not None and 0 < lat < 1.0
                (info,) = x.peers()
                assert info.peer_id == y.peer_id and info.latency_ms is not None
                assert info.latency_ms == pytest.approx(lat * 1000, abs=0.01)
                assert sample(x, "fognode_node_ping_rtt_seconds_count") >= 1
                assert sample(x, "fognode_node_pings_total", outcome="ok") >= 1


async def test_a_peer_that_does_not_answer_is_counted_unresponsive_and_cut_off() -> None:
    """A peer that stops answering pings is counted, and the connection manager closes its
    connection (a partition leaves TCP "established" while everything to the peer stalls);
    re-dialling it goes through the dial backoff, so it does not flap."""
    from libp2p.custom_types import TProtocol
    with trio.fail_after(30):
        async with pair(ping_interval=0.2, ping_timeout=1.0, ping_failures=2) as (a, b):
            a.host.remove_stream_handler(TProtocol(PING_PROTOCOL))
            await wait_until(lambda: sample(b, "fognode_node_ping_unresponsive_total") >= 1,
                             timeout=10)
            assert sample(b, "fognode_node_pings_total", outcome="failed") >= 2
            await wait_until(lambda: a.peer_id not in {p.peer_id for p in b.peers()}, timeout=10)
            assert not b.backoff.allowed(a.peer_id, trio.current_time())   # no flapping


# -- real daemons -------------------------------------------------------------------------------

@pytest.mark.slow
def test_node_peers_shows_latency(node_factory: NodeFactory) -> None:
    net = node_factory(2)

    def measured() -> list[dict[str, Any]] | None:
        peers = net.nodes[0].rpc("node.peers")
        return peers if peers and peers[0]["latency_ms"] is not None else None

    peers = wait_until_sync(measured, timeout=20, what="latency_ms in node.peers")
    assert peers[0]["peer_id"] == net.nodes[1].peer_id
    assert 0 < peers[0]["latency_ms"] < 1000
