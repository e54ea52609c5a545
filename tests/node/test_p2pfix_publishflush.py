"""node/p2pfix_publishflush.py: py-libp2p's `Pubsub.publish` only queues a message for its
peers; ScoredPubsub's writes it to every idle peer before it returns, one writer per peer at a
time, in queue order."""
from __future__ import annotations

import trio
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue

from fognode.node.gossip_envelope import KIND_MESSAGE, seal
from fognode.node.p2pfix_publishflush import connection_busy, flush
from fognode.node.p2pfix_pubsubwrite import Lane, frame, send_queued
from tests.node.test_gossip import Inbox, cluster
from tests.polling import wait_until

TOPIC = "fognode/test/flush/1"


async def test_publish_writes_to_every_idle_peer_before_it_returns() -> None:
    with trio.fail_after(40):
        async with cluster(3) as (a, b, c):
            boxes = [Inbox(), Inbox()]
            await a.subscribe(TOPIC, Inbox())
            await b.subscribe(TOPIC, boxes[0])
            await c.subscribe(TOPIC, boxes[1])
            await wait_until(lambda: len(a.pubsub.peer_topics.get(TOPIC, ())) == 2)
            peers = list(a.pubsub.peer_topics[TOPIC])
            g = a.gossip
            # the pinned py-libp2p: a peer's pubsub stream reaches its connection's write lock
            lane = a.pubsub.lanes[peers[0]]
            lock = lane.stream.muxed_stream.conn._write_lock
            assert not connection_busy(lane.stream)
            await lock.acquire()
            assert connection_busy(lane.stream)
            lock.release()

            def idle() -> bool:
                return all(a.pubsub.lanes[p].idle and not len(a.pubsub.peer_queues[p])
                           for p in peers)

            # the pinned py-libp2p: publish() leaves the message in every peer's queue, for
            # the peer's sending task to write later
            await wait_until(idle)
            one = seal(g.key, KIND_MESSAGE, g.epoch, TOPIC, 1, b"queued")
            await Pubsub.publish(a.pubsub, TOPIC, one.raw)
            assert all(len(a.pubsub.peer_queues[p]) >= 1 for p in peers)
            await wait_until(lambda: all(x.datas() == [b"queued"] for x in boxes))
            # ScoredPubsub: written by publish() itself, nothing left queued
            await wait_until(idle)
            two = seal(g.key, KIND_MESSAGE, g.epoch, TOPIC, 2, b"written")
            await a.pubsub.publish(TOPIC, two.raw)
            assert all(len(a.pubsub.peer_queues[p]) == 0 for p in peers)
            await wait_until(lambda: all(x.datas() == [b"queued", b"written"] for x in boxes))


class GatedSink:
    """A stream whose first write waits for `gate` (a socket that is full for a while)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.gate = trio.Event()
        self.waiting = False

    async def write(self, data: bytes) -> None:
        if not self.writes and not self.gate.is_set():
            self.waiting = True
            await self.gate.wait()
        self.writes.append(data)


def rpc(i: int) -> rpc_pb2.RPC:
    return rpc_pb2.RPC(publish=[rpc_pb2.Message(data=b"%d" % i, seqno=i.to_bytes(8, "big"),
                                                topicIDs=["t"])])


async def test_a_flush_and_the_sending_loop_write_one_at_a_time_in_queue_order() -> None:
    queue = RpcQueue()
    sink = GatedSink()
    lane = Lane("peer", sink, queue)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_queued, None, "peer", sink, queue, None, lane)
            await wait_until(lambda: lane.idle)
            written: list[int] = []

            async def publish() -> None:      # queued and flushed in one task step, as
                assert queue.push(rpc(1))     # ScoredPubsub.publish does
                written.append(await flush(None, {"peer": lane}, lambda peer: None))

            nursery.start_soon(publish)
            await wait_until(lambda: sink.waiting)      # the flush's write waits for the socket
            assert lane.flushing and not len(queue)
            assert queue.push(rpc(2))                   # the loop takes it, then waits
            await wait_until(lambda: not len(queue))
            assert not lane.idle and await flush(None, {"peer": lane}, lambda p: None) == 0
            sink.gate.set()
            await wait_until(lambda: len(sink.writes) == 2)
            assert sink.writes == [frame(rpc(1)), frame(rpc(2))] and written == [1]
            queue.close()


class Conn:
    """A connection's write lock, as a Yamux connection holds it (`_write_lock`)."""

    def __init__(self) -> None:
        self._write_lock = trio.Lock()


class BusySink(GatedSink):
    """A pubsub stream over a connection whose write lock another stream holds."""

    def __init__(self) -> None:
        super().__init__()
        self.muxed_stream = self
        self.conn = Conn()


async def test_a_peer_whose_connection_is_being_written_is_left_to_its_loop() -> None:
    queue = RpcQueue()
    sink = BusySink()
    sink.gate.set()
    lane = Lane("peer", sink, queue)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_queued, None, "peer", sink, queue, None, lane)
            await wait_until(lambda: lane.idle)
            await sink.conn._write_lock.acquire()      # a model transfer holds the connection
            assert queue.push(rpc(1))
            assert await flush(None, {"peer": lane}, lambda p: None) == 0
            assert len(queue) == 1                     # the loop writes it, in its own time
            sink.conn._write_lock.release()
            await wait_until(lambda: sink.writes == [frame(rpc(1))])
            queue.close()
