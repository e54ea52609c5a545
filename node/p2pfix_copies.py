"""py-libp2p 0.8.1 fix: no forward of a message to a peer that already sent us a copy of it, and
no write of a queued forward that the peer has since made useless (its copy or IDONTWANT).

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
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from fognode.node.gossip_copies import PeerCopies
from fognode.node.p2pfix_idontwant import ThresholdIdontwantGossipSub


class CopyAwareGossipSub(ThresholdIdontwantGossipSub):
    """GossipSub that forwards no message to a peer that sent us a copy of it (module doc).
    Takes GossipSub's arguments; `copies` is fed by the pubsub's reader."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.copies = PeerCopies()

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
