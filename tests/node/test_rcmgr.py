"""The resource manager's policy core (node/rcmgr.py), without sockets."""
from __future__ import annotations

import pytest

from fognode.node.errors import ConfigError
from fognode.node.host import OverlayConfig
from fognode.node.rcmgr import (MIB, Refusal, ResourceLimits, ResourceManager, StreamDeadlines,
                                Wait, limits_from, subnet_of)

P = "/fognode/ledger/order/1.0.0"
Q = "/fognode/ledger/sync/1.0.0"


def small(**kw: object) -> ResourceManager:
    base = dict(streams_total=10, streams_per_protocol=6, streams_per_peer=4,
                streams_per_peer_protocol=3, streams_per_subnet=5, buffer_per_peer=100,
                buffer_total=150, conns_per_peer=1, conns_per_subnet=2, exempt=("127.0.0.0/8",))
    base.update(kw)
    return ResourceManager(ResourceLimits(**base))


def test_stream_scopes_refuse_in_order_and_release() -> None:
    m = small()
    assert [m.open_stream("a", P) for _ in range(3)] == [None] * 3
    assert m.open_stream("a", P) is Refusal.STREAMS_PEER_PROTOCOL
    assert m.open_stream("a", Q) is None
    assert m.open_stream("a", Q) is Refusal.STREAMS_PEER      # 4 from "a" in all
    assert m.open_stream("b", P) is None and m.open_stream("c", P) is None
    assert m.open_stream("d", P) is None
    assert m.open_stream("e", P) is Refusal.STREAMS_PROTOCOL  # 6 on P
    for p in "efg":
        assert m.open_stream(p, Q) is None
    assert m.usage.streams == 10
    assert m.open_stream("h", "/other") is Refusal.STREAMS_TOTAL
    m.close_stream("a", P)
    assert m.usage.streams == 9 and m.streams_of("a", P) == 2
    assert m.open_stream("a", P) is None
    for _ in range(3):
        m.close_stream("a", P)
    assert m.streams_of("a", P) == 0 and m.streams_of("a") == 1


def test_refused_stream_holds_nothing() -> None:
    m = small(streams_per_peer=1)
    assert m.open_stream("a", P) is None
    assert m.open_stream("a", Q) is Refusal.STREAMS_PEER
    assert m.usage.streams == 1 and m.streams_of("a", Q) == 0


def test_subnet_scope_counts_streams_of_every_peer_in_it() -> None:
    m = small()
    net = m.subnet_key("203.0.113.7")
    assert net == "203.0.113.0/24" == m.subnet_key("203.0.113.250")
    for p in "abcde":
        assert m.open_stream(p, P, net) is None
    assert m.open_stream("f", Q, net) is Refusal.STREAMS_SUBNET
    assert m.open_stream("f", Q, m.subnet_key("203.0.114.1")) is None
    assert m.subnet_key("127.0.0.1") == ""                   # exempt: no subnet limit
    assert m.subnet_key("not an ip") == ""


def test_subnets() -> None:
    assert subnet_of("198.51.100.9") == "198.51.100.0/24"
    assert subnet_of("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert subnet_of("::ffff:198.51.100.9") == "198.51.100.0/24"
    assert subnet_of("") == ""


def test_buffer_budgets_per_peer_and_total() -> None:
    m = small()
    assert m.buffer_room("a") == 100
    assert m.charge("a", 60) is None
    assert m.charge("a", 41) is Refusal.BUFFER_PEER            # nothing charged
    assert m.buffered_by("a") == 60 and m.buffer_room("a") == 40
    assert m.charge("b", 80) is None
    assert m.buffer_room("a") == 10                           # the node's 150 bind first
    assert m.charge("c", 11) is Refusal.BUFFER_TOTAL
    m.uncharge("a", 60)
    assert m.usage.buffered == 80 and m.charge("c", 11) is None
    m.uncharge("c", 1000)                                     # never below zero
    assert m.buffered_by("c") == 0 and m.usage.buffered == 80


def test_window_growth_gets_a_share_of_each_budget_and_never_starves_frames() -> None:
    m = small()                                                # 100 per peer, 150 in all
    assert m.reserve("a", 40, share=0.25) == 25                # a quarter of a's budget
    assert m.reserve("a", 10, share=0.25) == 0                 # spent: the window stays
    assert m.charge("a", 75) is None                           # frames still get the rest
    assert m.reserve("b", 30, share=0.25) == 0                 # the node holds 100 > 150 / 4
    m.uncharge("a", 90)
    assert m.reserve("b", 30, share=0.25) == 25                # b's quarter of its 100
    assert m.reserve("c", 30, share=0.25) == 2                 # the node's quarter (37) binds
    m.uncharge("a", 10)
    assert m.reserve("b", 30, share=0.25) == 0
    assert m.buffered_by("b") == 25 and m.usage.buffered == 27
    assert m.reserve("b", 0) == 0 and m.reserve("b", -5) == 0


def test_connections_per_peer_and_subnet() -> None:
    m = small()
    n1 = m.subnet_key("198.51.100.1")
    assert m.open_connection("a", n1) is None
    assert m.open_connection("a", n1) is Refusal.CONNS_PEER
    assert m.open_connection("b", n1) is None
    assert m.open_connection("c", m.subnet_key("198.51.100.200")) is Refusal.CONNS_SUBNET
    assert m.open_connection("c", m.subnet_key("127.0.0.1")) is None   # exempt
    m.close_connection("b", n1)
    assert m.open_connection("d", n1) is None
    assert m.usage.connections == 3


def test_deadline_for_each_wait() -> None:
    d = StreamDeadlines(first_frame=1.0, idle=30.0, progress=2.0)
    assert d.for_read(inbound=True, frames_received=0, in_frame=False) == (Wait.FIRST_FRAME, 1.0)
    assert d.for_read(inbound=True, frames_received=3, in_frame=False) == (Wait.IDLE, 30.0)
    assert d.for_read(inbound=True, frames_received=0, in_frame=True) == (Wait.PARTIAL_FRAME, 2.0)
    # our own (outbound) streams: the role bounds the wait for a reply, a frame must progress
    assert d.for_read(inbound=False, frames_received=0, in_frame=False) is None
    assert d.for_read(inbound=False, frames_received=5, in_frame=True) == (Wait.PARTIAL_FRAME, 2.0)


def test_a_frame_must_arrive_whole_at_the_minimum_rate() -> None:
    d = StreamDeadlines(progress=10.0, min_rate=16384.0)
    assert d.frame_time(0) == 10.0
    assert d.frame_time(1 << 20) == 10.0 + 64.0   # 1 MiB at 16 KiB/s


def test_limits_from_overlay_config_and_validation() -> None:
    limits, deadlines = limits_from(OverlayConfig())
    assert limits.streams_per_peer == 64 and limits.buffer_per_peer == 8 * MIB
    assert "127.0.0.0/8" in limits.exempt and deadlines.first_frame == 10.0
    cases = [({"stream_limit_per_peer": 0}, "overlay.stream_limit_per_peer"),
             ({"buffer_limit_per_peer": 1 << 20}, "overlay.buffer_limit_per_peer"),
             ({"buffer_limit_total": 4 * MIB, "buffer_limit_per_peer": 8 * MIB},
              "overlay.buffer_limit_total"),
             ({"subnet_limit_exempt": ["10.0.0.0/33"]}, "overlay.subnet_limit_exempt"),
             ({"stream_progress_timeout": 0.0}, "overlay.stream_progress_timeout"),
             ({"stream_idle_timeout": float("inf")}, "overlay.stream_idle_timeout"),
             ({"stream_min_rate": 0.5}, "overlay.stream_min_rate")]
    for kw, key in cases:
        with pytest.raises(ConfigError) as e:
            OverlayConfig(**kw).validate()
        assert e.value.key == key, kw
