"""The gossip layer's direct hand-over (node/gossip.py `deliver_now`), on real hosts on 127.0.0.1:
an idle handler is called in the task py-libp2p spawned for the message, with no scheduler
round of the gossip layer's reader and handler tasks; a busy handler still gets one message
at a time, each once, in order, through those tasks."""
from __future__ import annotations

import trio

from fognode.node.overlay import GossipMessage
from tests.node.test_gossip import Inbox, cluster
from tests.overlays import metric
from tests.polling import wait_until

TOPIC = "fognode/test/handover/1"


def _task() -> str:
    return trio.lowlevel.current_task().name


async def test_an_idle_handler_is_called_in_the_messages_own_task() -> None:
    seen: list[tuple[bytes, str]] = []

    async def handler(m: GossipMessage) -> None:
        seen.append((m.data, _task()))

    with trio.fail_after(40):
        async with cluster(2) as (a, b):
            await a.subscribe(TOPIC, Inbox())
            await b.subscribe(TOPIC, handler)
            await wait_until(lambda: len(a.pubsub.peer_topics.get(TOPIC, ())) == 1)
            for i in range(3):
                await a.publish(TOPIC, b"one-%d" % i)
                await wait_until(lambda: len(seen) == i + 1)
            assert [d for d, _ in seen] == [b"one-0", b"one-1", b"one-2"]
            # py-libp2p's task for the message (Pubsub.push_msg), not GossipLayer._handler_loop
            assert all("push_msg" in t for _, t in seen), seen
            assert metric(b, "fognode_node_gossip_messages_in_total", topic=TOPIC) == 3


async def test_a_busy_handler_gets_the_rest_one_at_a_time_in_order() -> None:
    calls: list[tuple[bytes, str]] = []
    running = 0
    most = 0
    release = trio.Event()

    async def slow(m: GossipMessage) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        calls.append((m.data, _task()))
        try:
            if m.data == b"m-00":
                await release.wait()
            else:
                await trio.sleep(0)
        finally:
            running -= 1

    with trio.fail_after(40):
        async with cluster(2) as (a, b):
            await a.subscribe(TOPIC, Inbox())
            await b.subscribe(TOPIC, slow)
            await wait_until(lambda: len(a.pubsub.peer_topics.get(TOPIC, ())) == 1)
            await a.publish(TOPIC, b"m-00")
            await wait_until(lambda: len(calls) == 1)
            want = [b"m-%02d" % i for i in range(12)]
            for d in want[1:]:
                await a.publish(TOPIC, d)
            # the other 11 arrive while the first call runs: they wait in b's inbox and
            # handler channel (validated and relayed, not handled)
            await wait_until(lambda: all(
                b.gossip.store.get_relayed(TOPIC, a.gossip.pubkey, a.gossip.epoch, s)
                is not None for s in range(1, 13)))
            assert len(calls) == 1
            release.set()
            await wait_until(lambda: len(calls) == 12)
            assert [d for d, _ in calls] == want
            assert most == 1
            assert "push_msg" in calls[0][1]
            assert any("_handler_loop" in t for _, t in calls[1:]), calls
