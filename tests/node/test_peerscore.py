"""Peer scoring: the parameters (sans-IO), and real overlays on 127.0.0.1 pruning, then
graylisting, a peer that sends invalid gossip and garbage streams (issue 10, items 4 and 5)."""
from __future__ import annotations

import logging
import os
import time
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, AsyncIterator

import pytest
import trio
from libp2p.peer.id import ID
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.errors import ConfigError
from fognode.node.events import EventBus
from fognode.node.faults import LogRateLimiter
from fognode.node.host import Libp2pOverlay, OverlayConfig, open_overlay
from fognode.node.overlay import GossipMessage
from fognode.node.peerscore import (PeerScoreParams, TopicCounters, ViolationBook, app_score,
                                    decay_factor, peer_score, topic_score)
from fognode.node.scored_pubsub import FognodePeerScorer
from fognode.tools.bench.attacks import hostile_peer
from fognode.tools.bench.attacks.invalid_gossip import (CERT_TOPIC, in_mesh, join_mesh, pruned,
                                                        send_garbage_streams, send_invalid,
                                                        send_valid)
from tests.overlays import metric
from tests.polling import wait_until

LOCAL = ["/ip4/127.0.0.1/tcp/0"]
IDENTIFY_PUSH = "/ipfs/id/push/1.0.0"
P = PeerScoreParams()


# --- sans-IO: the parameters --------------------------------------------------------------

def test_thresholds_are_ordered_as_the_spec_requires() -> None:
    P.validate()
    assert P.graylist_threshold < P.publish_threshold < P.gossip_threshold < 0
    assert P.accept_px_threshold > 0
    with pytest.raises(ConfigError, match="peerscore.publish_threshold"):
        PeerScoreParams(publish_threshold=-5.0).validate()
    with pytest.raises(ConfigError, match="peerscore.accept_px_threshold"):
        PeerScoreParams(accept_px_threshold=-1.0).validate()


def test_invalid_messages_cost_the_same_on_every_topic_and_grow_squared() -> None:
    for name in P.topics:
        tp = P.topic(name)
        one = topic_score(tp, TopicCounters(invalid=1.0))
        assert one == pytest.approx(-10.0)
        assert topic_score(tp, TopicCounters(invalid=3.0)) == pytest.approx(-90.0)
    # the most an honest peer earns cannot absorb the third invalid message
    best = peer_score(P, {"fognode/ledger/certs/1": TopicCounters(in_mesh=1e9,
                                                                  first_deliveries=1e9,
                                                                  invalid=3.0)},
                      behaviour=0.0, app=10.0)
    assert best < P.graylist_threshold
    # positive topic scores are capped
    rich = {t: TopicCounters(in_mesh=1e9, first_deliveries=1e9) for t in P.topics}
    assert peer_score(P, rich, behaviour=0.0, app=0.0) == P.topic_score_cap


def test_violations_walk_a_peer_down_the_thresholds() -> None:
    def s(v: float, rep: float = 0.0) -> float:
        return peer_score(P, {}, behaviour=0.0, app=app_score(P, rep, v))
    assert s(2) == 0.0                                     # two are free
    assert P.gossip_threshold <= s(3) < 0                  # out of the mesh only
    assert s(5) < P.gossip_threshold <= s(4)
    assert s(8) < P.publish_threshold <= s(7)
    assert s(13) < P.graylist_threshold <= s(12)
    assert s(17) == pytest.approx(-60.0)                   # the 17 garbage streams
    assert s(15, rep=10.0) < P.graylist_threshold <= s(14, rep=10.0)


def test_behaviour_penalty_tolerates_isolated_events_only() -> None:
    assert peer_score(P, {}, behaviour=20.0, app=0.0) == 0.0
    assert peer_score(P, {}, behaviour=30.0, app=0.0) < P.gossip_threshold
    assert peer_score(P, {}, behaviour=50.0, app=0.0) < P.graylist_threshold


def test_violation_book_decays_and_is_bounded() -> None:
    book = ViolationBook(half_life=600.0, cap=100.0, max_peers=10)
    assert book.add("a", 0.0) == 1.0 and book.add("a", 0.0) == 2.0
    assert book.value("a", 600.0) == pytest.approx(1.0)
    for _ in range(500):
        book.add("b", 1.0)
    assert book.value("b", 1.0) == 100.0
    for i in range(30):
        book.add(f"p{i}", 2.0)
    assert len(book) <= 10


def test_decay_factor_reaches_one_percent_on_time() -> None:
    f = decay_factor(600.0, 1.0)
    assert f ** 600 == pytest.approx(0.01)


def test_log_rate_limiter_counts_what_it_holds_back() -> None:
    rl = LogRateLimiter(interval=60.0, max_keys=2)
    assert rl.admit("k", 0.0) == 0
    assert all(rl.admit("k", t) is None for t in (1.0, 2.0, 59.0))
    assert rl.admit("other", 3.0) == 0
    assert rl.admit("k", 61.0) == 3
    rl.admit("x", 62.0)
    rl.admit("y", 63.0)
    assert len(rl._keys) == 2


def test_scorer_counts_time_in_mesh_and_keeps_a_negative_peer_after_it_leaves() -> None:
    now = [0.0]
    bad, good = ID(b"bad-peer"), ID(b"good-peer")
    mesh: dict[str, set[ID]] = {"fognode/ledger/certs/1": {good}}
    connected = {bad, good}
    sc = FognodePeerScorer(P, heartbeat=1.0, app_score=lambda p: 0.0, mesh=lambda: mesh,
                           connected=lambda p: p in connected, clock=lambda: now[0])
    sc.on_heartbeat()
    now[0] = 900.0
    assert sc.score(good, []) == pytest.approx(0.5)          # P1: 900 s of 1800 s, weight 1
    sc.on_invalid_message(bad, "fognode/ledger/certs/1")
    assert sc.score(bad, []) == pytest.approx(-10.0)
    assert sc.allow_gossip(bad, ["x"]) and sc.allow_publish(bad, ["x"])
    sc.on_invalid_message(bad, "fognode/ledger/certs/1")
    assert not sc.allow_publish(bad, ["x"]) and not sc.is_graylisted(bad, ["x"])
    connected -= {bad, good}
    sc.remove_peer(bad)
    sc.remove_peer(good)
    assert sc.score(bad, []) == pytest.approx(-40.0)         # RetainScore: kept when negative
    assert sc.score(good, []) == 0.0                         # a good peer is forgotten
    now[0] = 900.0 + P.retain + 1
    sc.on_heartbeat()
    assert sc.score(bad, []) == 0.0                          # retention over


# --- real overlays ------------------------------------------------------------------------

@asynccontextmanager
async def victim_and_honest(topic: str) -> AsyncIterator[tuple[Libp2pOverlay, Libp2pOverlay,
                                                               list[GossipMessage]]]:
    """A victim overlay subscribed to `topic` (delivered messages collected) and an honest
    overlay connected to it and subscribed too."""
    got: list[GossipMessage] = []

    async def keep(m: GossipMessage) -> None:
        got.append(m)

    async def ignore(m: GossipMessage) -> None:
        pass

    async with AsyncExitStack() as stack:
        nodes = []
        for _ in range(2):
            reg = CollectorRegistry()
            nodes.append(await stack.enter_async_context(open_overlay(
                OverlayConfig(listen=LOCAL, peers_low=0), SigningKey(os.urandom(32)),
                EventBus(reg), reg)))
        victim, honest = nodes
        await victim.subscribe(topic, keep)
        await honest.subscribe(topic, ignore)
        await honest.connect(victim.listen_addrs()[0])
        await wait_until(lambda: ID.from_base58(honest.peer_id) in
                         victim.gossipsub.mesh.get(topic, set()), timeout=15,
                         what="the honest peer in the victim's mesh")
        yield victim, honest, got



def drain(sub: Any) -> int:
    n = 0
    while True:
        try:
            sub.receive_channel.receive_nowait()
        except trio.WouldBlock:
            return n
        n += 1


async def test_a_peer_sending_invalid_gossip_is_pruned_then_graylisted() -> None:
    topic = CERT_TOPIC
    with trio.fail_after(60):
        async with victim_and_honest(topic) as (victim, honest, got):
            async with hostile_peer(victim.listen_addrs()[0]) as evil:
                sub = await join_mesh(evil, topic, timeout=15)
                evil_id = ID.from_base58(evil.peer_id)
                await wait_until(lambda: evil_id in victim.gossipsub.mesh.get(topic, set()),
                                 timeout=15, what="the attacker in the victim's mesh")
                # in the mesh, the attacker gets the victim's messages
                await victim.publish(topic, b"before")
                await wait_until(lambda: drain(sub) > 0, timeout=10,
                                 what="the attacker to get a message while in the mesh")

                # 1. one invalid message: the victim PRUNEs it (score < 0), no graylist yet
                await send_invalid(evil, topic, "payload")
                assert await pruned(evil, topic, timeout=10), \
                    "the victim did not PRUNE a peer that sent an invalid message"
                assert evil_id not in victim.gossipsub.mesh[topic]
                score = victim.gossip_score(evil.peer_id)
                assert victim.score_params.gossip_threshold <= score < 0
                # still below the graylist: its valid messages are accepted
                await send_valid(evil, topic, 1, b"still heard")
                await wait_until(lambda: any(m.data == b"still heard" for m in got),
                                 timeout=10, what="a valid message of a pruned peer")
                # out of the mesh, but above the publish threshold: it still gets the victim's
                # own messages (flood publishing, node/p2pfix_floodpublish.py), as the honest
                # peer does
                drain(sub)
                honest_got: list[bytes] = []

                async def keep(m: GossipMessage) -> None:
                    honest_got.append(m.data)
                await honest.subscribe(topic, keep)
                await victim.publish(topic, b"after the prune")
                await wait_until(lambda: b"after the prune" in honest_got, timeout=10,
                                 what="the honest peer to get the victim's message")
                await wait_until(lambda: drain(sub) > 0, timeout=10,
                                 what="a pruned peer above the publish threshold to get it")

                # 2. more invalid messages (every kind) and 17 garbage streams: graylisted
                # (a bad libp2p signature counts as invalid: 0.8.1 dropped it uncounted)
                await send_invalid(evil, topic, "libp2p_signature")
                await wait_until(lambda: metric(victim, "fognode_node_gossip_score_actions_total",
                                                action="bad_signature") >= 1, timeout=10,
                                 what="the bad libp2p signature to count as invalid")
                assert victim.gossip_score(evil.peer_id) < victim.score_params.publish_threshold
                # below the publish threshold the victim sends it nothing (checked below)
                drain(sub)
                await victim.publish(topic, b"below the publish threshold")
                await wait_until(lambda: b"below the publish threshold" in honest_got,
                                 timeout=10, what="the honest peer to get the victim's message")
                await send_invalid(evil, topic, "envelope_signature")   # refused by the gate
                assert await send_garbage_streams(evil, 17) == 17
                await wait_until(lambda: metric(victim, "fognode_node_remote_protocol_errors_total",
                                                protocol="/meshsub/1.2.0") >= 17, timeout=10,
                                 what="17 garbage streams counted")
                assert victim.gossip_score(evil.peer_id) < victim.score_params.graylist_threshold
                assert drain(sub) == 0, "the victim kept sending messages to a pruned peer"

                # graylisted: its RPCs are ignored, even a valid message
                before = metric(victim, "fognode_node_gossip_score_actions_total",
                                action="graylisted_rpc")
                await send_valid(evil, topic, 2, b"ignored")
                await wait_until(lambda: metric(victim, "fognode_node_gossip_score_actions_total",
                                                action="graylisted_rpc") > before, timeout=10,
                                 what="the graylisted peer's message to be ignored")
                await honest.publish(topic, b"barrier")
                await wait_until(lambda: any(m.data == b"barrier" for m in got), timeout=10,
                                 what="the honest peer's message")
                assert not any(m.data == b"ignored" for m in got)

                # the honest peer stayed in the mesh with a score >= 0
                assert ID.from_base58(honest.peer_id) in victim.gossipsub.mesh[topic]
                assert victim.gossip_score(honest.peer_id) >= 0
                assert not in_mesh(evil, topic)


async def test_garbage_on_meshsub_is_a_rate_limited_warning_counted_and_charged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(60):
        async with victim_and_honest(CERT_TOPIC) as (victim, honest, _):
            async with hostile_peer(victim.listen_addrs()[0]) as evil:
                caplog.clear()
                # py-libp2p's own handlers log a peer's garbage at ERROR themselves (and keep
                # the peer's fault to themselves): shown as one WARNING a minute
                assert await send_garbage_streams(evil, 20, protocol=IDENTIFY_PUSH) == 20
                opened = await send_garbage_streams(evil, 200)
                await wait_until(lambda: metric(victim, "fognode_node_remote_protocol_errors_total",
                                                protocol="/meshsub/1.2.0") >= opened, timeout=20,
                                 what=f"{opened} garbage streams counted")
                assert opened >= 150       # the others may be refused: fine, not logged
                assert victim.violations.value(evil.peer_id, time.monotonic()) >= 50
                assert victim._score(evil.peer_id) < victim.score_params.graylist_threshold
    mine = [r for r in caplog.records if evil.peer_id in r.getMessage()
            and r.name.startswith("fognode")]
    assert mine, "no line about the garbage"
    assert len(mine) <= 3, [r.getMessage() for r in mine]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in mine)
    assert "Traceback" not in caplog.text
    # identify pushes are charged too (node/p2pfix_peer_faults.py): one WARNING a minute
    push = [r for r in caplog.records if IDENTIFY_PUSH in r.getMessage()]
    assert 1 <= len(push) <= 2 and all(r.levelno == logging.WARNING for r in push), \
        [r.getMessage() for r in push]


def test_remote_fault_lines_are_bounded_per_protocol_across_peers() -> None:
    """A flood of faults from thousands of fresh peer ids (a gossip flood signed by throw-away
    keys) logs at most `per_protocol` lines per interval, and every fault is still counted
    and charged."""
    import logging

    from fognode.node.faults import RemoteFaults

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    now = [0.0]
    charged: list[str] = []
    lg = logging.getLogger("test.faults.flood")
    lg.propagate = False
    h = Lines()
    lg.addHandler(h)
    reg = CollectorRegistry()
    faults = RemoteFaults(reg, charged.append, log=lg, interval=10.0, per_protocol=3,
                          clock=lambda: now[0])
    for i in range(500):
        faults.report(f"peer{i}", "topic/x", "bad")
    faults.report("peer0", "topic/y", "bad")           # another protocol has its own budget
    assert len(h.lines) == 4 and len(charged) == 501
    assert reg.get_sample_value("fognode_node_remote_protocol_errors_total",
                                {"protocol": "topic/x"}) == 500
    now[0] = 11.0
    faults.report("peer999", "topic/x", "bad")
    assert "497 lines about other peers on this protocol not logged" in h.lines[-1]
