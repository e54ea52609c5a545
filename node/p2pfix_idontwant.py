"""py-libp2p 0.8.1 fix: GossipSub 1.2 IDONTWANT only for messages of 1 KiB or more, as go-libp2p.

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

Fix. `ThresholdIdontwantGossipSub` (a subclass; fognode's ScoredGossipSub derives from it and
is handed to Pubsub as its router, a constructor option) notes the data size of the message
`publish` is forwarding and skips `_emit_idontwant_for_message` when it is below
`threshold` (1024 bytes). `publish` runs no `await` between its start and that call (checked
by tests/node/test_p2pfix.py against the pinned source), so the noted size is that message's.
"""
from __future__ import annotations

from typing import Any, Iterable

from libp2p.pubsub.gossipsub import GossipSub

IDONTWANT_THRESHOLD = 1024      # bytes of message data, go-libp2p's default


class ThresholdIdontwantGossipSub(GossipSub):
    """GossipSub that sends IDONTWANT only for messages of `idontwant_threshold` bytes or more."""

    def __init__(self, *args: Any, idontwant_threshold: int = IDONTWANT_THRESHOLD,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idontwant_threshold = idontwant_threshold
        self._forwarding_size = -1      # data size of the message publish() is forwarding
        self.idontwant_skipped = 0      # messages for which no IDONTWANT was sent

    async def publish(self, msg_forwarder: Any, pubsub_msg: Any) -> None:
        self._forwarding_size = len(pubsub_msg.data)
        try:
            await super().publish(msg_forwarder, pubsub_msg)
        finally:
            self._forwarding_size = -1

    async def _emit_idontwant_for_message(self, msg_id: bytes,
                                          topic_ids: Iterable[str]) -> None:
        if 0 <= self._forwarding_size < self.idontwant_threshold:
            self.idontwant_skipped += 1
            return
        await super()._emit_idontwant_for_message(msg_id, topic_ids)
