"""py-libp2p 0.8.1 fix: no forward of a message to a peer that already sent us a copy of it, no
write of a queued forward that the peer has since made useless (its copy or IDONTWANT), and no
relay before local delivery.

Symptom (upstream report form). `GossipSub.publish` forwards a validated message to every mesh
peer except the forwarder, the origin and peers whose IDONTWANT for it arrived
(`_get_peers_to_send`). A copy of the same message that another mesh peer sent us is dropped as
a duplicate (`Pubsub.push_msg`, `_is_msg_seen`) but not remembered, so that peer still gets our
copy: a duplicate it encrypts, sends, decrypts, parses and drops on both ends. In a full mesh
every message reaches each receiver from the origin and from every other receiver, and under
load the copies of the other receivers are often read before our own forward: while the first
copy waits for its task to run, or while our forward waits in the peer's outbound queue
(`Pubsub.handle_sending_messages` writes it later, without asking again). Measured in
`python -m fognode.tools.bench.ledger --certs 2000 --wallets 4 --count-wire` (4 validators,
one full mesh): 2.31 pubsub message copies received per transfer, of which 0.83 were new.
Reproduction: four hosts on 127.0.0.1 in one GossipSub mesh, each subscribed; one publishes
100 messages; on each receiver count the copies read from a peer that had already sent it the
same message (an `_is_subscribed_to_msg` spy under `continuously_read_stream`): > 0.

Fix. node/gossip_copies.py's `PeerCopies` remembers, per peer, the ids of the recent messages
that peer sent us (fed by node/scored_pubsub.py as each copy's RPC is parsed, before the
seen-check drops it). `CopyAwareGossipSub` (a subclass; fognode's ScoredGossipSub derives from
it and is handed to Pubsub as its router, a constructor option) leaves those peers out of
`_get_peers_to_send` (a generator: it is read after publish's IDONTWANT `await`, so copies read
meanwhile count) and forgets a peer in `remove_peer`. `without_held(rpc, peer, ...)` is asked by
the sending loop (node/p2pfix_pubsubwrite.py) just before an RPC is written: messages the peer
holds by then (a copy, or an IDONTWANT in `dont_send_message_ids`) are taken out of it, and an
RPC left with nothing is not written. The RPC bytes that go out are an ordinary RPC with fewer
messages; a peer left out has the message already, so nothing is lost. Peer scoring is not
touched: first deliveries are counted where the copy is received (py-libp2p's push_msg).
Prior art: nim-libp2p leaves peers that sent a message during its validation out of the relay
(`validationSeen`) and checks IDONTWANT at relay time.

Second symptom, same call: the relay goes before local delivery. `Pubsub.push_msg` runs the
topic validators, then `notify_subscriptions(msg)`, then `await router.publish(...)`, which
queues the forward to every mesh peer and wakes their sending tasks for the next scheduler
round. fognode's validator queues the message in its topic's inbox (node/gossip.py), whose
reader task runs in that next round and wakes the handler task for the round after: so the
forward's copies are framed, encrypted and written, one `send` each, before the role's
handler starts. Measured with time stamps in 10 daemons in one full mesh (256-byte messages
300 ms apart, 2 cores): the handler started 3.0 ms (median) after the validator, of which
0.85 ms was the forward's `publish` and about 1 ms its writes. In a full mesh every receiver
also has the message from its origin (flood publishing), so those forwards are duplicates.
Reproduction: three hosts on 127.0.0.1 in one GossipSub mesh, a subscriber on the middle one;
one publishes; compare the middle host's handler start with its forward (its `mcache.put`).

Fix, second part. `CopyAwareGossipSub.publish` lets a relayed message (not one this node
publishes) wait RELAY_YIELDS (3) scheduler rounds before py-libp2p's publish: the reader's
round and the handler's, plus one because trio runs a round's tasks in either order (it
reverses half the rounds). Copies read in those rounds count too (`_get_peers_to_send`
above). No timer: the relay waits only for tasks that are ready, so an idle node relays
after a few microseconds and a busy one after its ready tasks' turn. The wire is unchanged;
only the order of the node's own work is.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from fognode.node.gossip_copies import PeerCopies
from fognode.node.p2pfix_idontwant import ThresholdIdontwantGossipSub

RELAY_YIELDS = 3    # scheduler rounds a relayed message waits so local delivery goes first


class CopyAwareGossipSub(ThresholdIdontwantGossipSub):
    """GossipSub that forwards no message to a peer that sent us a copy of it (module doc).
    Takes GossipSub's arguments; `copies` is fed by the pubsub's reader."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.copies = PeerCopies()

    async def publish(self, msg_forwarder: Any, pubsub_msg: Any) -> None:
        """Relay a message of another node RELAY_YIELDS scheduler rounds after it was
        validated, so local delivery goes first (module doc); publish our own at once."""
        if self.pubsub is not None and msg_forwarder != self.pubsub.my_id:
            for _ in range(RELAY_YIELDS):
                await trio.lowlevel.checkpoint()
        await super().publish(msg_forwarder, pubsub_msg)

    def _get_peers_to_send(self, topic_ids: Iterable[str], msg_forwarder: ID, origin: ID,
                           msg_id: bytes | None = None) -> Iterator[ID]:
        peers = super()._get_peers_to_send(topic_ids, msg_forwarder, origin, msg_id)
        if msg_id is None:
            yield from peers
            return
        yield from self.copies.without_holders(peers, msg_id)

    def remove_peer(self, peer_id: ID) -> None:
        super().remove_peer(peer_id)
        self.copies.forget(peer_id)


def without_held(rpc: rpc_pb2.RPC, peer: ID, router: CopyAwareGossipSub,
                 msg_id: Callable[[rpc_pb2.Message], bytes]) -> rpc_pb2.RPC | None:
    """`rpc` less the messages `peer` holds now (a copy it sent us, or its IDONTWANT); the
    same object when it holds none of them, None when nothing would be left to write."""
    if not rpc.publish:
        return rpc
    dont = router.dont_send_message_ids.get(peer)
    copies = router.copies
    keep = []
    for m in rpc.publish:
        mid = msg_id(m)
        if not (copies.has(peer, mid) or (dont and mid in dont)):
            keep.append(m)
    if len(keep) == len(rpc.publish):
        return rpc
    copies.left_out += len(rpc.publish) - len(keep)
    if not keep and not rpc.subscriptions and not rpc.HasField("control"):
        return None
    out = rpc_pb2.RPC()
    out.CopyFrom(rpc)
    del out.publish[:]
    out.publish.extend(keep)
    return out
