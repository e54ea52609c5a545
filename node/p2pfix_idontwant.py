"""py-libp2p 0.8.1 fix: GossipSub 1.2 IDONTWANT only where it can save a copy: for messages of
1 KiB or more (as go-libp2p), never to the peer that forwarded the message or to its origin,
and not at all in a small full mesh.

Symptom (upstream report form). `GossipSub.publish` calls `_emit_idontwant_for_message` for
every message it forwards, so a node sends one IDONTWANT control RPC to each of its (up to
D_high) mesh peers per message, whatever the message's size. For small messages the IDONTWANT
costs more than the duplicate it saves: each is a separate RPC with its own signed peer record,
a queue slot in the per-peer outbound queue (32 slots, overflow dropped), a yamux frame and a
Noise frame, and on the receiver a parse and (0.8.1) a record verification. go-libp2p sends
IDONTWANT only when `len(msg.Data) >= IDontWantMessageThreshold` (1024 bytes by default,
`GossipSubParams.IDontWantMessageThreshold`). Reproduction: three hosts on 127.0.0.1 in one
GossipSub 1.2 mesh, one publishes 100 messages of 256 bytes; count the IDONTWANT control
messages the middle host sends (`emit_idontwant` calls): 100 x mesh peers; expected 0.

Second symptom, same call: the IDONTWANT also goes to the mesh peer the message came from
and to the message's origin. Neither can send it again (a peer forwards a message once, on
first receipt; the origin never relays its own), so those entries save nothing. Reproduction
as above with 2,000-byte messages: the middle host sends an IDONTWANT back to the publisher
for every message.

Third, small full meshes (a ledger committee of 4 is one): when every peer this node knows on
the topic is in its mesh and they are no more than the mesh degree D (`full_mesh_max`), the
origin's own mesh holds them all too, so every peer gets the message from the origin in the
first hop; an IDONTWANT from a receiver reaches the others one hop later, after they have
forwarded their own copy. Measured in `bench.ledger --count-wire` (4 daemons, certificate
batches of 1-4 KiB): 2.9 IDONTWANT entries received per transfer against 2.4 message copies,
each copy still arriving about 2.6 times. In such a mesh none is sent. The rule reads only
this node's view: where the origin is not connected to every peer (a partial topology), a
relay's IDONTWANT could have spared it one duplicate from a peer the origin did not reach
first; that duplicate now arrives (and is dropped as seen).

Fix. `ThresholdIdontwantGossipSub` (a subclass; fognode's ScoredGossipSub derives from it and
is handed to Pubsub as its router, a constructor option) notes the data size, the forwarder
and the origin of the message `publish` is forwarding, and in `_emit_idontwant_for_message`
sends nothing below `threshold` (1024 bytes) or in a small full mesh, and otherwise sends to
the v1.2+ mesh peers of the message's topics except the forwarder and the origin (the same
`emit_idontwant` call per peer as py-libp2p's loop). `publish` runs no `await` between its
start and that call (checked by tests/node/test_p2pfix.py against the pinned source), so the
noted message is the one being forwarded. Skipping an IDONTWANT never loses a message; it can
only let a duplicate through.
"""
from __future__ import annotations

from typing import Any, Iterable

from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import (PROTOCOL_ID_V12, PROTOCOL_ID_V13, PROTOCOL_ID_V14,
                                     PROTOCOL_ID_V20, GossipSub)

IDONTWANT_THRESHOLD = 1024      # bytes of message data, go-libp2p's default
_V12_PLUS = (PROTOCOL_ID_V12, PROTOCOL_ID_V13, PROTOCOL_ID_V14, PROTOCOL_ID_V20)


class ThresholdIdontwantGossipSub(GossipSub):
    """GossipSub that sends IDONTWANT only for messages of `idontwant_threshold` bytes or more,
    not to the forwarder or the origin, and not in a full mesh of at most `full_mesh_max` peers
    (default: the mesh degree D; 0 turns that rule off)."""

    def __init__(self, *args: Any, idontwant_threshold: int = IDONTWANT_THRESHOLD,
                 full_mesh_max: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idontwant_threshold = idontwant_threshold
        self.full_mesh_max = self.degree if full_mesh_max is None else full_mesh_max
        self._forwarding: Any = None    # the message publish() is forwarding, and its forwarder
        self._forwarder: Any = None
        self.idontwant_skipped = 0      # messages for which no IDONTWANT was sent: small
        self.idontwant_full_mesh = 0    # ... in a small full mesh
        self.idontwant_sent = 0         # IDONTWANT entries sent

    async def publish(self, msg_forwarder: Any, pubsub_msg: Any) -> None:
        self._forwarding, self._forwarder = pubsub_msg, msg_forwarder
        try:
            await super().publish(msg_forwarder, pubsub_msg)
        finally:
            self._forwarding = self._forwarder = None

    def _full_small_mesh(self, topics: list[str]) -> bool:
        """Every known peer of every topic is in the topic's mesh, and they are at most
        `full_mesh_max`."""
        if self.pubsub is None:
            return False
        for topic in topics:
            known = self.pubsub.peer_topics.get(topic, set())
            mesh = self.mesh.get(topic, set())
            if len(known) > self.full_mesh_max or not known <= mesh:
                return False
        return True

    async def _emit_idontwant_for_message(self, msg_id: bytes,
                                          topic_ids: Iterable[str]) -> None:
        msg = self._forwarding
        if msg is None:          # not from publish(): py-libp2p's own behaviour
            await super()._emit_idontwant_for_message(msg_id, topic_ids)
            return
        if len(msg.data) < self.idontwant_threshold:
            self.idontwant_skipped += 1
            return
        topics = list(topic_ids)
        if self._full_small_mesh(topics):
            self.idontwant_full_mesh += 1
            return
        skip = {self._forwarder, ID(msg.from_id)}
        peers: set[Any] = set()
        for topic in topics:
            peers.update(self.mesh.get(topic, ()))
        for peer in peers:
            if peer not in skip and self.peer_protocol.get(peer) in _V12_PLUS:
                self.idontwant_sent += 1
                await self.emit_idontwant([msg_id], peer)
