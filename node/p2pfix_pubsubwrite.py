"""py-libp2p 0.8.1 fix: one stream write for all the RPCs queued to a pubsub peer.

Symptom (upstream report form). `libp2p/pubsub/pubsub.py: Pubsub.handle_sending_messages`
pops one RPC at a time from the peer's outbound queue and writes it alone (`write_msg`): each
RPC is one yamux frame, one Noise frame and one `send()` system call, even when dozens are
queued for that peer. Under a gossip burst the queues do fill (every message is sent to every
mesh peer, plus IHAVE/IWANT/IDONTWANT control RPCs), and a py-spy profile of a 10-daemon
gossip run (`python -m fognode.tools.bench.gossip --nodes 10 --tput-msgs 200`, fognode's
overlay) spent 17.5 % of the daemons' busy samples in the socket send under
`handle_sending_messages` -> `write_msg`, the largest single cost.
Reproduction: two hosts with GossipSub on 127.0.0.1, one publishes 200 messages back to back;
count `send` calls on its socket (strace -e sendto) or the yamux data frames it writes: one per
RPC.

Fix. `send_queued` does what `handle_sending_messages` does, but after each pop it also takes
every RPC already waiting in the queue (up to `BATCH_BYTES`) and writes their frames in one
`stream.write`: the bytes on the wire are the same sequence of varint-length-prefixed RPCs
(go-msgio framing), so peers of any implementation read them unchanged; only fewer, larger
yamux and Noise frames carry them. It uses only the queue's public API (`len`, and `pop`,
which returns at once when an RPC is queued). A closed or reset stream ends the loop as in
py-libp2p (`_handle_dead_peer`); any other error likewise. Installed without a monkeypatch:
node/scored_pubsub.py's `ScoredPubsub.handle_sending_messages` calls it, with a `trim` that
takes out of each RPC, as it is written, the messages the peer holds by then
(node/p2pfix_copies.py `without_held`; an RPC trimmed to nothing is not written).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from libp2p.network.stream.exceptions import StreamClosed, StreamReset
from libp2p.utils.varint import encode_uvarint

log = logging.getLogger("fognode.pubsub")

BATCH_BYTES = 256 * 1024      # at most this much joined into one write (then the next write)


def frame(rpc: Any) -> bytes:
    """One RPC as py-libp2p's `Pubsub.write_msg` frames it: uvarint length, then the bytes."""
    body = rpc.SerializeToString()
    return encode_uvarint(len(body)) + body


Trim = Callable[[Any], Any]       # an RPC -> the RPC to write, or None to write nothing


async def send_queued(pubsub: Any, peer_id: Any, stream: Any, queue: Any,
                      trim: Trim | None = None) -> None:
    """Per-peer sending loop of `pubsub` (module doc); returns when the queue is closed or
    the stream fails. `trim`, if given, is asked about each RPC just before it is framed."""
    try:
        while True:
            rpc = await queue.pop()
            if rpc is None:
                return                      # the queue was closed: the peer is gone
            parts = []
            size = 0
            while True:
                if trim is not None:
                    rpc = trim(rpc)
                if rpc is not None:
                    parts.append(frame(rpc))
                    size += len(parts[-1])
                if size >= BATCH_BYTES or not len(queue):
                    break
                rpc = await queue.pop()     # returns at once: an RPC is queued
                if rpc is None:
                    break
            if not parts:
                continue
            try:
                await stream.write(b"".join(parts))
            except (StreamClosed, StreamReset):
                log.debug("pubsub: writing to %s failed: stream closed or reset", peer_id)
                pubsub._handle_dead_peer(peer_id)
                return
    except Exception:
        log.debug("pubsub: sending loop for %s ended with an error", peer_id, exc_info=True)
        pubsub._handle_dead_peer(peer_id)
