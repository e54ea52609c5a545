"""node/p2pfix_pubsubwrite.py: the RPCs queued for a peer leave in one write, framed byte for
byte as py-libp2p's own `Pubsub.write_msg` frames them; a closed queue ends the loop."""
from __future__ import annotations

import trio
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue

from fognode.node.p2pfix_pubsubwrite import BATCH_BYTES, send_queued


class Sink:
    """Where the sending loop writes: keeps each write (the loop's only use of a stream)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.writes.append(data)


def rpc(i: int, size: int = 100) -> rpc_pb2.RPC:
    return rpc_pb2.RPC(publish=[rpc_pb2.Message(data=bytes([i % 251]) * size, seqno=i.to_bytes(8, "big"),
                                                topicIDs=["t"])])


async def test_queued_rpcs_leave_in_one_write_framed_as_py_libp2p_frames_them() -> None:
    rpcs = [rpc(i) for i in range(20)]
    queue = RpcQueue()
    for r in rpcs:
        assert queue.push(r)
    queue.close()
    ours = Sink()
    with trio.fail_after(10):
        await send_queued(None, "peer", ours, queue)
    theirs = Sink()
    for r in rpcs:          # py-libp2p's own writer, one write per RPC
        assert await Pubsub.write_msg(None, theirs, r)  # type: ignore[arg-type]
    assert len(ours.writes) == 1
    assert ours.writes[0] == b"".join(theirs.writes)


async def test_a_write_holds_at_most_about_batch_bytes() -> None:
    big = BATCH_BYTES // 4
    queue = RpcQueue()
    for i in range(10):
        assert queue.push(rpc(i, big))
    queue.close()
    sink = Sink()
    with trio.fail_after(10):
        await send_queued(None, "peer", sink, queue)
    assert 2 <= len(sink.writes) <= 5
    assert all(len(w) < BATCH_BYTES + big + 64 for w in sink.writes)
