"""Gossip batches: the publisher's outbox (node/gossip_outbox.py), the batch codec
(node/gossip_envelope.py `pack_batch`/`open_gossip`) and batches between real hosts.

A burst of publications on one topic leaves as a few libp2p messages, each carrying every
envelope that queued meanwhile; receivers open each envelope on its own, so delivery, pulls
and the role's content check stay per message. Hypothesis drives the outbox with random
topics and sizes and checks that nothing is lost, duplicated or reordered within a topic.
"""
from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.gossip_envelope import (BATCH_MAX, KIND_HEAD, KIND_MESSAGE, batch_size,
                                          open_envelope, open_gossip, pack_batch, seal)
from fognode.node.gossip_outbox import Outbox, Outgoing
from fognode.node.overlay import GossipMessage
from fognode.node.wire import pack, unpack
from tests.node.test_gossip import Inbox, cluster, metric
from tests.polling import wait_until

TOPIC = "fognode/test/batch/1"
KEY = SigningKey(b"\x07" * 32)


def env(seq: int, data: bytes = b"x", topic: str = TOPIC, kind: str = KIND_MESSAGE) -> bytes:
    return seal(KEY, kind, 1, topic, seq, data).raw


# --- codec --------------------------------------------------------------------------------

def test_a_batch_opens_into_its_envelopes_and_a_single_envelope_into_one() -> None:
    raws = [env(1, b"a"), env(2, b"b"), env(3, b"", kind=KIND_HEAD)]
    data = pack_batch(raws)
    assert len(data) <= batch_size([len(r) for r in raws])
    got = open_gossip(data, max_size=1 << 20)
    assert [(e.seq, e.kind, e.raw) for e in got] == [(1, KIND_MESSAGE, raws[0]),
                                                      (2, KIND_MESSAGE, raws[1]),
                                                      (3, KIND_HEAD, raws[2])]
    assert open_gossip(raws[0], max_size=1 << 20) == [open_envelope(raws[0], max_size=1 << 20)]
    with pytest.raises(ValueError):
        pack_batch(raws[:1])
    with pytest.raises(ValueError):
        pack_batch([raws[0]] * (BATCH_MAX + 1))


@pytest.mark.parametrize("batch, error", [
    ({"v": 1, "n": [env(1)]}, "at least 2"),
    ({"v": 1, "n": []}, "at least 2"),
    ({"v": 1, "n": [env(1)] * (BATCH_MAX + 1)}, "over the limit"),
    ({"v": 1, "n": [env(1), "text"]}, "not bytes"),
    ({"v": 2, "n": [env(1), env(2)]}, "unknown version"),
    ({"v": 1, "n": [env(1), env(2)], "x": 1}, "unknown field"),
    ({"v": 1, "n": [env(1), b"\x93\x01\x02"]}, "gossip envelope"),
])
def test_a_malformed_batch_is_refused_naming_what_is_wrong(batch: dict[str, object],
                                                           error: str) -> None:
    with pytest.raises(RemoteProtocolError, match=error):
        open_gossip(pack(batch), max_size=1 << 20, peer="p")


def test_one_forged_envelope_makes_the_whole_batch_bad() -> None:
    outer = unpack(env(2, b"b"))
    outer["b"]["d"] = b"forged"
    data = pack_batch([env(1), pack(outer)])
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        open_gossip(data, max_size=1 << 20)
    # signed_by_origin: the libp2p signature covered the batch (the gossip layer's case)
    assert len(open_gossip(data, max_size=1 << 20, signed_by_origin=True)) == 2


# --- outbox -------------------------------------------------------------------------------

def out(topic: str, seq: int, size: int = 100) -> Outgoing:
    return Outgoing(topic, env(seq, b"d" * size, topic=topic), True)


def test_take_gives_the_oldest_topic_in_order_within_count_and_bytes() -> None:
    box = Outbox(16)
    for item in (out("a", 1), out("b", 1), out("a", 2), out("a", 3), out("b", 2)):
        box.add(item)
    first = box.take(BATCH_MAX, 1 << 20)
    assert [(o.topic, unpack(o.raw)["b"]["s"]) for o in first] == [("a", 1), ("a", 2), ("a", 3)]
    assert [o.topic for o in box.take(BATCH_MAX, 1 << 20)] == ["b", "b"]
    assert box.take(BATCH_MAX, 1 << 20) == [] and len(box) == 0
    for s in range(1, 6):
        box.add(out("a", s))
    assert len(box.take(2, 1 << 20)) == 2 and len(box) == 3
    one = len(out("a", 1).raw)
    tight = batch_size([one, one])          # room for two envelopes, not three
    assert len(box.take(BATCH_MAX, tight)) == 2 and len(box) == 1
    assert len(box.take(BATCH_MAX, 1)) == 1            # one envelope always goes
    with pytest.raises(ValueError):
        Outbox(0)
    full = Outbox(1)
    full.add(out("a", 1))
    assert full.room() == 0
    with pytest.raises(ValueError, match="full"):
        full.add(out("a", 2))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 3000)), max_size=80),
       st.integers(1, 8), st.integers(600, 12000))
def test_outbox_loses_nothing_and_keeps_each_topics_order(items: list[tuple[str, int]],
                                                          max_count: int, max_bytes: int) -> None:
    box = Outbox(max(1, len(items)))
    sent: list[Outgoing] = []
    for i, (topic, size) in enumerate(items):
        o = Outgoing(topic, bytes([i % 256]) * (size + 1) + i.to_bytes(4, "big"), True)
        sent.append(o)
        box.add(o)
    taken: list[Outgoing] = []
    while len(box):
        batch = box.take(max_count, max_bytes)
        assert batch and len({o.topic for o in batch}) == 1 and len(batch) <= max_count
        assert len(batch) == 1 or batch_size([len(o.raw) for o in batch]) <= max_bytes
        taken.extend(batch)
    assert sorted(map(id, taken)) == sorted(map(id, sent))
    for topic in "abc":
        assert [o for o in taken if o.topic == topic] == [o for o in sent if o.topic == topic]


# --- real hosts ---------------------------------------------------------------------------

async def test_a_burst_leaves_in_batches_and_each_message_is_delivered_once() -> None:
    with trio.fail_after(60):
        # 5 sends a second: the burst queues behind the first send and leaves in batches
        async with cluster(3, gossip_max_rate=5.0) as nodes:
            boxes = [Inbox() for _ in nodes]
            for n, box in zip(nodes, boxes):
                await n.subscribe(TOPIC, box)
            await wait_until(lambda: len(nodes[0].pubsub.peer_topics.get(TOPIC, ())) == 2)
            want = [b"burst-%03d" % i for i in range(40)]
            for d in want:
                await nodes[0].publish(TOPIC, d)
            await wait_until(lambda: boxes[1].datas() == want and boxes[2].datas() == want,
                             timeout=40)
            sends = metric(nodes[0], "fognode_node_gossip_publishes_total", topic=TOPIC)
            assert metric(nodes[0], "fognode_node_gossip_messages_out_total", topic=TOPIC) == 40
            assert 1 <= sends <= 10, sends
            assert sorted(len(b.got) for b in boxes) == [0, 40, 40]


async def test_a_refused_message_in_a_batch_stops_only_itself() -> None:
    def check(m: GossipMessage) -> bool:
        return m.data != b"refused"

    with trio.fail_after(60):
        async with cluster(2, gossip_max_rate=2.0, gossip_pull_delay=30.0) as (a, b):
            box = Inbox()
            await a.subscribe(TOPIC, Inbox())
            await b.subscribe(TOPIC, box, check=check)
            await wait_until(lambda: len(a.gossipsub.mesh.get(TOPIC, ())) == 1)
            for d in (b"first", b"one", b"refused", b"two"):   # "first" goes alone
                await a.publish(TOPIC, d)
            await wait_until(lambda: box.datas() == [b"first", b"one", b"two"])
            assert metric(b, "fognode_node_gossip_drops_total", topic=TOPIC,
                          reason="refused") >= 1
            assert metric(a, "fognode_node_gossip_publishes_total", topic=TOPIC) <= 3
