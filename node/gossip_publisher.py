"""The sending side of the gossip layer (node/gossip.py): sealing, pacing, batching, heads.

- `publish()` seals a message (gossip_envelope.py) with the next seq of its topic, keeps it in
  the store's ring for pulls and queues it on a bounded channel: a full channel makes
  `publish()` wait (backpressure). With room it returns without a scheduler round (it is a
  cancellation point, not a yield), so a burst is queued at once and leaves in batches.
- `run_sender` (one task) sends what is queued: at most `max_rate` envelopes a second on
  average, as libp2p messages each carrying the next batch of its outbox (gossip_outbox.py:
  one envelope, or every envelope of one topic queued meanwhile, up to BATCH_MAX: a batch of
  k takes k ticks of the pace after it is sent), and waits, bounded, while any peer's libp2p
  outbound queue is over half full (py-libp2p's 32-slot per-peer queues drop what overflows,
  silently: notes bite 6).
- `run_heads` (one task) announces each topic's latest seq after a quiet `head_interval`, then
  every 10 intervals for 5 minutes after the last publication, so a receiver that lost the
  LAST message notices the gap.
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import trio
from nacl.signing import SigningKey

from fognode.node.errors import LocalProtocolError
from fognode.node.gossip_envelope import (BATCH_MAX, KIND_HEAD, KIND_MESSAGE, MessageStore,
                                          pack_batch, seal)
from fognode.node.gossip_outbox import Outbox, Outgoing
from fognode.node.gossip_settings import GossipSettings

if TYPE_CHECKING:
    from libp2p.pubsub.pubsub import Pubsub

log = logging.getLogger("fognode.gossip")


class GossipPublisher:
    """This node's publications on every topic; run `run_sender` and `run_heads` as tasks.
    `sent` is the per-topic counter of messages published (heads are not counted), `batches`
    that of libp2p messages published."""

    def __init__(self, pubsub: "Pubsub", key: SigningKey, epoch: int,
                 settings: GossipSettings, store: MessageStore, *, max_envelope: int,
                 sent: Any, batches: Any) -> None:
        self.pubsub = pubsub
        self.key = key
        self.epoch = epoch
        self.s = settings
        self.store = store
        self.max_envelope = max_envelope
        self.sent = sent
        self.batches = batches
        self._seq: dict[str, int] = {}
        self._head_sent: dict[str, int] = {}
        self._last_publish: dict[str, float] = {}
        self._out_send, self._out_recv = trio.open_memory_channel[Outgoing](
            settings.publish_queue)

    async def publish(self, topic: str, data: bytes) -> None:
        """Seal, keep for pulls and enqueue. Waits while the publish queue is full
        (backpressure). Raises LocalProtocolError when the message would exceed the gossip
        size limit (bite 7: py-libp2p drops messages over 1 MiB without an error)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not isinstance(data, (bytes, bytearray)):
            raise LocalProtocolError(f"gossip data must be bytes, got {type(data).__name__}")
        if len(data) > self.max_envelope - 512:
            raise LocalProtocolError(
                f"gossip message of {len(data)} bytes on {topic} is over the limit of "
                f"{self.max_envelope - 512} bytes (max_message_size {self.s.max_message_size}"
                " minus envelope); send large data over a stream")
        seq = self._seq.get(topic, 0) + 1
        env = seal(self.key, KIND_MESSAGE, self.epoch, topic, seq, bytes(data))
        if len(env.raw) > self.max_envelope:
            raise LocalProtocolError(
                f"sealed gossip message of {len(env.raw)} bytes on {topic} is over the "
                f"{self.max_envelope}-byte limit")
        self._seq[topic] = seq
        self.store.add_own(topic, seq, env.raw)
        self._last_publish[topic] = trio.current_time()
        item = Outgoing(topic, env.raw, True)
        try:
            # With room in the queue, no scheduler round per message: a burst of N publishes
            # is queued in one task step (N seals) instead of N trips through every ready task
            # of the daemon, and leaves in a few batches. A full queue waits (and yields).
            self._out_send.send_nowait(item)
        except trio.WouldBlock:
            await self._out_send.send(item)

    def _outbound_pressure(self) -> int:
        queues = getattr(self.pubsub, "peer_queues", {})
        return max((len(q) for q in list(queues.values())), default=0)

    async def run_sender(self) -> None:
        """Sends what publish() and the head announcer queued (module doc): the next batch of
        the outbox as one libp2p message when the pace allows, after waiting (bounded) while
        any peer's libp2p outbound queue is over half full: those 32-slot queues drop what
        overflows, silently."""
        interval = 1.0 / self.s.max_rate if self.s.max_rate > 0 else 0.0
        next_at = trio.current_time()
        outbox = Outbox(BATCH_MAX)
        while True:
            if not len(outbox):
                try:
                    outbox.add(await self._out_recv.receive())
                except trio.EndOfChannel:
                    return
            now = trio.current_time()
            if next_at > now:
                await trio.sleep(next_at - now)
            with trio.move_on_after(1.0):
                while self._outbound_pressure() > 16:
                    await trio.sleep(0.005)
            while outbox.room():           # what queued meanwhile joins the batch
                try:
                    outbox.add(self._out_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            batch = outbox.take(BATCH_MAX, self.max_envelope)
            data = batch[0].raw if len(batch) == 1 else pack_batch([o.raw for o in batch])
            try:
                await self.pubsub.publish(batch[0].topic, data)
            except Exception as e:  # a closing pubsub; the ring still serves pulls
                log.warning("gossip: publishing on %s failed: %s: %s", batch[0].topic,
                            type(e).__name__, e)
                continue
            self.batches.labels(batch[0].topic).inc()
            counted = sum(o.counted for o in batch)
            if counted:
                self.sent.labels(batch[0].topic).inc(counted)
            # the pace is per envelope: a batch of k uses k ticks (a burst leaves at once, a
            # long one at `max_rate` messages/s, which receivers' inboxes can follow)
            next_at = max(next_at + interval * len(batch), trio.current_time() - 1.0)

    async def run_heads(self) -> None:
        """Announce our latest seq after a quiet `head_interval`, then every 10 intervals for
        5 minutes after the last publication, so a receiver that lost our LAST message notices."""
        head_at: dict[str, float] = {}
        while True:
            await trio.sleep(self.s.head_interval)
            now = trio.current_time()
            for topic, seq in list(self._seq.items()):
                since = now - self._last_publish.get(topic, -math.inf)
                if since < self.s.head_interval:
                    continue
                fresh = self._head_sent.get(topic, 0) < seq
                periodic = (since < 300.0 and
                            now - head_at.get(topic, -math.inf) >= 10 * self.s.head_interval)
                if fresh or periodic:
                    env = seal(self.key, KIND_HEAD, self.epoch, topic, seq, b"")
                    try:
                        self._out_send.send_nowait(Outgoing(topic, env.raw, False))
                    except trio.WouldBlock:
                        continue   # the queue is busy with real messages; they carry seqs too
                    self._head_sent[topic] = seq
                    head_at[topic] = now
