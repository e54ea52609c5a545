"""py-libp2p 0.8.1 fix: this node's own messages go to every peer on the topic whose score is at
or above the publish threshold (flood publishing, go-libp2p's default), not to its mesh only.

Symptom (upstream report form). py-libp2p 0.8.1 has no flood publishing: `_get_peers_to_send`
sends a message of a topic the node has joined to its mesh peers only, its own messages
included. A mesh can be empty while the node is connected to peers on the topic: after the
heartbeat prunes a mesh over D_high (every pruned peer in backoff for a minute) and the
connection manager then closes the connections that kept it, every peer left is one the mesh
may not take back. Such a node's publications go to nobody, and its gossip (IHAVE) skips
backed-off peers too (node/p2pfix_backoff.py has that half). Seen in `python -m
fognode.tools.bench.gossip --setups ours --diag` at 25 daemons: the publisher, with 4
connections, every one in backoff and a mesh of 0, published its 40-message burst and no node
had any of it 15 s later (printed "0/40"). go-libp2p has published its own messages to all
topic peers above the publish threshold by default since 2020 (`WithFloodPublish`, default
true: "to reduce the latency of the first hop and to protect against eclipse of the
publisher"); rust-libp2p has the same option, on by default.
Reproduction: a host connected to two peers on a topic, both pruned from its mesh (in
backoff) and no other peer: it publishes; neither peer receives the message
(tests/node/test_p2pfix_backoff.py).

Fix. `FloodPublishGossipSub` (a subclass; node/scored_pubsub.py's ScoredGossipSub derives from
it and is handed to Pubsub as its router, a constructor option) adds to `_get_peers_to_send`,
for a message whose origin is this node, every GossipSub peer it knows on the topic whose
score is at or above `publish_threshold` (node/peerscore.py: -20). Relayed messages still go to
the mesh only. The wire is unchanged (the same message to more peers). Cost: a node's own
message is sent to each of its topic peers once, instead of to its D (6) to D_high (12) mesh
peers; in a mesh that already holds every topic peer (small networks, the FL and ledger
benchmarks) nothing changes. The copies of node/p2pfix_copies.py still leave out peers that
hold the message.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub


class FloodPublishGossipSub(GossipSub):
    """GossipSub whose own messages go to every topic peer at or above the publish threshold
    (module doc). `flood_published` counts the sends its mesh alone would not have made."""

    flood_published: int = 0

    def _get_peers_to_send(self, topic_ids: Iterable[str], msg_forwarder: ID, origin: ID,
                           msg_id: bytes | None = None) -> Iterator[ID]:
        topics = list(topic_ids)
        sent: set[ID] = set()
        for peer in super()._get_peers_to_send(topics, msg_forwarder, origin, msg_id):
            sent.add(peer)
            yield peer
        if self.pubsub is None or origin != self.pubsub.my_id:
            return
        for topic in topics:
            for peer in list(self.pubsub.peer_topics.get(topic, ())):
                if peer in sent or not self._floodable(peer):
                    continue
                sent.add(peer)
                self.flood_published += 1
                yield peer

    def _floodable(self, peer: ID) -> bool:
        """A GossipSub peer (not floodsub: py-libp2p sends to those already) whose score is at
        or above the publish threshold."""
        if self.peer_protocol.get(peer) not in self.protocols:
            return False
        scorer: Any = self.scorer
        return scorer is None or scorer.allow_publish(peer, [])
