"""py-libp2p 0.8.1 fix: a message this node publishes is written to its peers by `publish()` itself.

Symptom (upstream report form). `libp2p/pubsub/pubsub.py: Pubsub.publish` -> `push_msg` ->
`GossipSub.publish` only pushes the RPC onto each peer's outbound `RpcQueue`
(`GossipSub.send_rpc`); each peer's sending task (`Pubsub.handle_sending_messages`) is woken
and writes it when the trio scheduler next runs it: one task step per peer, in a batch with
every other runnable task of the process (the stream handlers serving what the message
triggers, the tasks of messages being relayed), and on a loaded machine with the process
descheduled between any two of them. At the FL coordinator of `python -m
fognode.tools.bench.fl --part rounds --nodes 10 --round-time-rounds 6` (a round's plan
published to 9 peers, load 3-5, 2 cores), the 9th peer's write ended a median 3.3 ms (1.0 to
12.0, 14 plans) after `publish()` returned, while the 9 writes cost about 0.1 CPU ms each
(notes s31 gossiphop: `diag_notes.patch`). Reproduction: a host with N GossipSub peers on
127.0.0.1 publishes one message; right after `publish()` returns every peer's `RpcQueue` still
holds it (tests/node/test_p2pfix_publishflush.py), and a trio Instrument counts one task step
per peer before the writes are done.

Fix. `ScoredPubsub.publish` (node/scored_pubsub.py; an override of a public method, no
monkeypatch) calls py-libp2p's `publish`, then `flush`: for each peer whose sending loop is
idle (waiting for its queue: node/p2pfix_pubsubwrite.py `Lane.idle`) it takes what is queued
and writes it to the peer's stream in the publishing task, framed and trimmed as that loop
does; the loop, woken for the same RPCs, finds the queue empty and waits again. A peer whose
loop is busy writing is left to it, and so is one whose connection is being written to by
another stream (its Yamux write lock is held: a model transfer may be waiting for a full
socket), so that one slow connection does not hold up the writes to the peers after it. While a flush writes to a peer (a write can wait for the
socket) the peer's loop waits before writing anything queued later, so each peer's RPCs reach
its stream in queue order. The bytes on the wire are the same frames in the same order per
peer; only the task that writes them changes. A failed write drops the peer, as the loop does.
The only caller, node/gossip_publisher.py's sending task, runs in a task of its own.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from fognode.node.p2pfix_pubsubwrite import Lane, Trim, take_queued, write_queued

log = logging.getLogger("fognode.pubsub")


def connection_busy(stream: Any) -> bool:
    """Whether another frame is being written to the connection under `stream` (a libp2p
    NetStream over Yamux: `muxed_stream.conn._write_lock`); False when it has no such lock."""
    conn = getattr(getattr(stream, "muxed_stream", None), "conn", None)
    lock = getattr(conn, "_write_lock", None)
    return bool(lock is not None and lock.locked())


async def flush(pubsub: Any, lanes: Mapping[Any, Lane], trim_for: Callable[[Any], Trim]) -> int:
    """Write what is queued for every peer whose sending loop is idle, in this task (module
    doc); returns the number of peers written to. Awaits the writes (each may wait for its
    socket); a peer whose write fails is dropped (py-libp2p's `_handle_dead_peer`)."""
    written = 0
    for lane in list(lanes.values()):
        if not lane.idle or lane.flushing or not len(lane.queue) or connection_busy(lane.stream):
            continue
        lane.flushing = True
        try:
            rpc = await lane.queue.pop()       # returns at once: an RPC is queued
            data = b"" if rpc is None else await take_queued(rpc, lane.queue,
                                                             trim_for(lane.peer_id))
            if data and await write_queued(pubsub, lane.peer_id, lane.stream, data):
                written += 1
        except Exception:
            log.debug("pubsub: writing to %s after a publish failed", lane.peer_id,
                      exc_info=True)
            pubsub._handle_dead_peer(lane.peer_id)
        finally:
            lane.flush_done()
    return written
