"""Reliable, paced gossip on py-libp2p 0.8.1 GossipSub.

py-libp2p's `publish()` has no backpressure (32-slot per-peer queues, overflow dropped at DEBUG)
and a subscription holds 32 messages before it drops (notes bite 6). So every topic goes
through this layer:

- Envelope: each message is `{"b": body, "sig": sig}` with body
  `{"v": 1, "k": "m"|"h", "o": origin Ed25519 key, "e": epoch, "t": topic, "s": seq, "d": data}`
  signed by the origin over pack(body). `seq` counts per (origin, topic) from 1 within an
  `epoch` (the publisher's start time in ms, so a restarted publisher's epoch is larger).
  `"h"` (head) messages carry no data: they announce the latest seq so a lost LAST message is
  noticed too.
- Publisher: `publish()` seals, keeps the message in a bounded ring (for pulls) and enqueues it
  on a bounded channel (a full channel makes `publish()` wait: backpressure). One task sends,
  at most `max_rate` messages/s, and waits while any peer's libp2p outbound queue is over half
  full.
- Receiver: a topic validator checks the envelope (decodable, signed by the libp2p origin,
  right topic) so bad messages are not relayed, and caches it for pulls by others. One reader
  task per subscription runs the sequence tracker; one handler task per subscription calls the
  role's handler (a handler that raises is logged and the next message is delivered).
- Gaps: `SequenceTracker` notices missing seqs; after `pull_delay` they are pulled over
  `/fognode/gossip/pull/1.0.0` from the local cache, the origin, or the peers that relayed.
  Retried with backoff; a message the origin no longer has is reported lost (WARNING + metric),
  never dropped silently.

Delivery is at-most-once per (origin, epoch, seq) and may be out of order. A node does not get
its own publications back.
"""
from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import base58
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry, Counter

from fognode.node.errors import (LocalProtocolError, RemoteProtocolError, StreamClosed)
from fognode.node.overlay import GossipHandler, GossipMessage
from fognode.node.wire import Fields, pack, sign, unpack, verify

if TYPE_CHECKING:
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.pubsub import Pubsub

    from fognode.node.streams import Libp2pFramedStream

log = logging.getLogger("fognode.gossip")

PULL_PROTOCOL = "/fognode/gossip/pull/1.0.0"
ENVELOPE_OVERHEAD = 2048   # bytes reserved for the libp2p RPC framing around our envelope
MAX_PULL_SEQS = 512        # seqs one pull request may ask for
KIND_MESSAGE = "m"
KIND_HEAD = "h"


# ---------------------------------------------------------------------------------------------
# Envelope (sans-IO)

@dataclass(frozen=True)
class Envelope:
    kind: str
    origin: bytes      # 32-byte Ed25519 public key
    epoch: int
    topic: str
    seq: int
    data: bytes
    raw: bytes         # the encoded envelope, as sent


def seal(key: SigningKey, kind: str, epoch: int, topic: str, seq: int, data: bytes) -> Envelope:
    body = {"v": 1, "k": kind, "o": bytes(key.verify_key), "e": epoch, "t": topic, "s": seq,
            "d": data}
    raw = pack({"b": body, "sig": sign(key, body)})
    return Envelope(kind, bytes(key.verify_key), epoch, topic, seq, data, raw)


def open_envelope(raw: bytes, *, max_size: int, peer: str | None = None) -> Envelope:
    """Decode and verify one envelope. Raises RemoteProtocolError naming what was wrong."""
    outer = Fields(unpack(raw, max_size=max_size, what="gossip envelope"), "gossip envelope",
                   peer=peer)
    sig = outer.bytes("sig", size=64)
    body_raw = outer.map("b", max_len=16)
    outer.done()
    f = Fields(body_raw, "gossip envelope body", versions={1}, peer=peer)
    kind = f.str("k", max_len=1)
    if kind not in (KIND_MESSAGE, KIND_HEAD):
        raise RemoteProtocolError(f"gossip envelope: unknown kind {kind!r}", peer=peer)
    origin = f.bytes("o", size=32)
    epoch = f.int("e", lo=0, hi=2**63 - 1)
    topic = f.str("t", max_len=256)
    seq = f.int("s", lo=1, hi=2**63 - 1)
    data = f.bytes("d", max_len=max_size)
    f.done()
    if not verify(origin, body_raw, sig):
        raise RemoteProtocolError("gossip envelope: bad signature", peer=peer)
    return Envelope(kind, origin, epoch, topic, seq, data, raw)


# ---------------------------------------------------------------------------------------------
# Sequence tracking (sans-IO)

@dataclass
class _Missing:
    noticed: float
    attempts: int = 0
    next_try: float = 0.0
    optional: bool = False   # back-fill from before we first saw the origin: no loss if gone


@dataclass
class _Origin:
    epoch: int
    contig: int                                  # every seq <= contig is settled
    above: set[int] = field(default_factory=set)  # delivered seqs > contig
    missing: dict[int, _Missing] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)  # peers that relayed this origin lately


@dataclass(frozen=True)
class PullRequest:
    origin: bytes
    epoch: int
    seqs: tuple[int, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Lost:
    origin: bytes
    epoch: int
    count: int
    sample: tuple[int, ...]   # the first few lost seqs, for the log


class SequenceTracker:
    """Per-topic gap detector. `accept` says whether a message is new; `due` lists the pulls to
    make now; `pull_failed`/`gone` settle what could not be fetched (reported in `lost`)."""

    def __init__(self, *, pull_delay: float = 0.3, retry: float = 1.0, max_attempts: int = 5,
                 backfill: int = 64, max_missing: int = 4096, max_origins: int = 10000) -> None:
        self.pull_delay = pull_delay
        self.retry = retry
        self.max_attempts = max_attempts
        self.backfill = backfill
        self.max_missing = max_missing
        self.max_origins = max_origins
        self._origins: OrderedDict[bytes, _Origin] = OrderedDict()
        self.lost: list[Lost] = []   # drained by the adapter (logged and counted)

    def _state(self, origin: bytes, epoch: int, first_seq: int, now: float,
               is_head: bool) -> _Origin | None:
        st = self._origins.get(origin)
        if st is not None and epoch < st.epoch:
            return None                               # a message from before a restart: stale
        if st is None or epoch > st.epoch:
            top = first_seq if is_head else first_seq - 1    # the last seq before this one
            base = max(0, top - self.backfill)
            st = _Origin(epoch=epoch, contig=base)
            self._origins[origin] = st
            while len(self._origins) > self.max_origins:
                self._origins.popitem(last=False)
            for s in range(base + 1, top + 1):   # back-fill: pulled, but no loss if gone
                st.missing[s] = _Missing(noticed=now, next_try=now + self.pull_delay,
                                         optional=True)
        self._origins.move_to_end(origin)
        return st

    @staticmethod
    def _note_source(st: _Origin, peer: str) -> None:
        if peer and peer not in st.sources:
            st.sources.insert(0, peer)
            del st.sources[4:]

    def _mark_gap(self, origin: bytes, st: _Origin, upto: int, now: float) -> None:
        """Every seq in (highest known, upto] becomes missing; a gap wider than max_missing
        settles its oldest part as lost at once."""
        highest = max(st.contig, max(st.above, default=0), max(st.missing, default=0))
        start = highest + 1
        if upto - start + 1 > self.max_missing:
            cut = upto - self.max_missing + 1
            lost = [s for s, m in st.missing.items() if s < cut and not m.optional]
            for s in [s for s in st.missing if s < cut]:
                del st.missing[s]
            st.above = {s for s in st.above if s >= cut}
            count = len(lost) + (cut - start)
            self.lost.append(Lost(origin, st.epoch, count, tuple(sorted(lost)[:8]) or
                                  tuple(range(start, min(cut, start + 8)))))
            st.contig = cut - 1
            start = cut
        for s in range(start, upto + 1):
            st.missing[s] = _Missing(noticed=now, next_try=now + self.pull_delay)
        self._advance(st)

    @staticmethod
    def _advance(st: _Origin) -> None:
        while (st.contig + 1) in st.above:
            st.above.discard(st.contig + 1)
            st.contig += 1

    def accept(self, origin: bytes, epoch: int, seq: int, relayer: str, now: float) -> bool:
        """A message arrived (gossip or pull). True when it is new and must be delivered."""
        st = self._state(origin, epoch, seq, now, is_head=False)
        if st is None or seq <= st.contig or seq in st.above:
            return False
        self._note_source(st, relayer)
        if seq - 1 > st.contig:
            self._mark_gap(origin, st, seq - 1, now)
            if seq <= st.contig:
                return False
        st.missing.pop(seq, None)
        st.above.add(seq)
        self._advance(st)
        return True

    def head(self, origin: bytes, epoch: int, seq: int, relayer: str, now: float) -> None:
        """The origin announced its latest seq: everything up to it we lack becomes missing."""
        st = self._state(origin, epoch, seq, now, is_head=True)
        if st is None:
            return
        self._note_source(st, relayer)
        self._mark_gap(origin, st, seq, now)

    def due(self, now: float) -> list[PullRequest]:
        """The pulls to start now; their seqs are not due again until pull_failed/gone."""
        out: list[PullRequest] = []
        for origin, st in self._origins.items():
            seqs = sorted(s for s, m in st.missing.items() if m.next_try <= now)
            for i in range(0, len(seqs), MAX_PULL_SEQS):
                chunk = seqs[i:i + MAX_PULL_SEQS]
                for s in chunk:
                    st.missing[s].next_try = math.inf
                out.append(PullRequest(origin, st.epoch, tuple(chunk), tuple(st.sources)))
        return out

    def next_due(self) -> float:
        return min((m.next_try for st in self._origins.values() for m in st.missing.values()),
                   default=math.inf)

    def pull_failed(self, origin: bytes, epoch: int, seqs: tuple[int, ...], now: float) -> None:
        """No source returned these seqs: retry with backoff, then report them lost."""
        st = self._origins.get(origin)
        if st is None or st.epoch != epoch:
            return
        give_up = []
        for s in seqs:
            m = st.missing.get(s)
            if m is None:
                continue
            m.attempts += 1
            if m.attempts >= self.max_attempts:
                give_up.append(s)
            else:
                m.next_try = now + self.retry * (2 ** (m.attempts - 1))
        self._settle(origin, st, give_up)

    def gone(self, origin: bytes, epoch: int, seqs: tuple[int, ...]) -> None:
        """The origin no longer has these seqs (its ring moved on)."""
        st = self._origins.get(origin)
        if st is not None and st.epoch == epoch:
            self._settle(origin, st, list(seqs))

    def _settle(self, origin: bytes, st: _Origin, seqs: list[int]) -> None:
        lost = []
        for s in seqs:
            m = st.missing.pop(s, None)
            if m is None:
                continue
            if not m.optional:
                lost.append(s)
            if s > st.contig:
                st.above.add(s)   # settled: the window may move past it
        self._advance(st)
        if lost:
            self.lost.append(Lost(origin, st.epoch, len(lost), tuple(sorted(lost)[:8])))

    def missing_count(self) -> int:
        return sum(len(st.missing) for st in self._origins.values())


# ---------------------------------------------------------------------------------------------
# Message store: our own ring per topic, plus a cache of what we relayed (sans-IO)

class MessageStore:
    def __init__(self, *, ring_size: int = 1024, relay_cache: int = 4096) -> None:
        self.ring_size = ring_size
        self.relay_cache = relay_cache
        self._own: dict[str, OrderedDict[int, bytes]] = {}
        self._lowest_forgotten: dict[str, int] = {}
        self._relayed: OrderedDict[tuple[str, bytes, int, int], bytes] = OrderedDict()

    def add_own(self, topic: str, seq: int, raw: bytes) -> None:
        ring = self._own.setdefault(topic, OrderedDict())
        ring[seq] = raw
        while len(ring) > self.ring_size:
            s, _ = ring.popitem(last=False)
            self._lowest_forgotten[topic] = s

    def own_gone(self, topic: str, seq: int) -> bool:
        return seq <= self._lowest_forgotten.get(topic, 0)

    def get_own(self, topic: str, seq: int) -> bytes | None:
        ring = self._own.get(topic)
        return None if ring is None else ring.get(seq)

    def add_relayed(self, env: Envelope) -> None:
        if env.kind != KIND_MESSAGE:
            return
        self._relayed[(env.topic, env.origin, env.epoch, env.seq)] = env.raw
        while len(self._relayed) > self.relay_cache:
            self._relayed.popitem(last=False)

    def get_relayed(self, topic: str, origin: bytes, epoch: int, seq: int) -> bytes | None:
        return self._relayed.get((topic, origin, epoch, seq))


# ---------------------------------------------------------------------------------------------
# The trio adapter

@dataclass(frozen=True)
class GossipSettings:
    max_message_size: int = 1048576
    max_rate: float = 500.0          # messages/s this node sends at most
    publish_queue: int = 256         # publish() waits when this many are queued
    handler_queue: int = 256         # messages waiting for a role's handler per topic
    ring_size: int = 1024            # own recent messages per topic kept for pulls
    relay_cache: int = 4096          # others' recent messages kept for pulls
    pull_delay: float = 0.3          # seconds a gap may heal by itself before we pull
    pull_timeout: float = 5.0        # per source
    pull_attempts: int = 5
    backfill: int = 64               # seqs before the first one seen from an origin we pull
    head_interval: float = 1.0       # announce our latest seq this long after publishing


class _TopicState:
    def __init__(self, topic: str, handler: GossipHandler, tracker: SequenceTracker,
                 queue: int) -> None:
        self.topic = topic
        self.handler = handler
        self.tracker = tracker
        self.send, self.recv = trio.open_memory_channel[GossipMessage](queue)
        self.wake = trio.Event()


PeerIdOf = Callable[[bytes], str]
OpenStream = Callable[[str, str], Any]   # async (peer_id, protocol) -> Libp2pFramedStream


class GossipLayer:
    """Owns publishing, subscriptions and pulls for one node. Run `run()` in a nursery."""

    def __init__(self, pubsub: "Pubsub", key: SigningKey, *, settings: GossipSettings,
                 metrics: CollectorRegistry, peer_id_of: PeerIdOf, open_stream: OpenStream,
                 self_peer_id: str, is_connected: Callable[[str], bool] = lambda p: True,
                 inbound_filter: Callable[[GossipMessage, int], bool] | None = None) -> None:
        self.pubsub = pubsub
        self.key = key
        self.pubkey = bytes(key.verify_key)
        self.s = settings
        self.peer_id_of = peer_id_of
        self.open_stream = open_stream
        self.self_peer_id = self_peer_id
        self.is_connected = is_connected
        # Fault injection for tests and chaos runs: return False to lose a gossip message on
        # arrival, before the reliable layer or the relay cache sees it (libp2p still relays
        # it); it must then be pulled from another peer.
        self.inbound_filter = inbound_filter
        self.epoch = time.time_ns() // 1_000_000
        self.store = MessageStore(ring_size=settings.ring_size, relay_cache=settings.relay_cache)
        self._seq: dict[str, int] = {}
        self._head_sent: dict[str, int] = {}
        self._last_publish: dict[str, float] = {}
        self._topics: dict[str, _TopicState] = {}
        self._validated: OrderedDict[bytes, tuple[Envelope, str, bool]] = OrderedDict()
        self._out_send, self._out_recv = trio.open_memory_channel[tuple[str, bytes, bool]](
            settings.publish_queue)
        self._nursery: trio.Nursery | None = None
        self._started = trio.Event()
        self.m_in = Counter("fognode_node_gossip_messages_in_total",
                            "Gossip messages delivered to a role, per topic", ["topic"],
                            registry=metrics)
        self.m_out = Counter("fognode_node_gossip_messages_out_total",
                             "Gossip messages published, per topic", ["topic"], registry=metrics)
        self.m_drops = Counter("fognode_node_gossip_drops_total",
                               "Gossip messages discarded before delivery, per topic and reason",
                               ["topic", "reason"], registry=metrics)
        self.m_pulled = Counter("fognode_node_gossip_pulled_total",
                                "Missed gossip messages fetched over the pull stream",
                                ["topic"], registry=metrics)
        self.m_served = Counter("fognode_node_gossip_pull_served_total",
                                "Gossip messages sent to peers that pulled them", ["topic"],
                                registry=metrics)
        self.m_lost = Counter("fognode_node_gossip_lost_total",
                              "Gossip messages that could not be fetched (origin forgot them)",
                              ["topic"], registry=metrics)

    @property
    def max_envelope(self) -> int:
        return self.s.max_message_size - ENVELOPE_OVERHEAD

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs the publisher, the head announcer and (later) one reader + handler + puller per
        subscribed topic. Cancel to stop."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._publisher)
            nursery.start_soon(self._head_announcer)
            self._started.set()
            task_status.started()
            await trio.sleep_forever()

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, topic: str, data: bytes) -> None:
        """Seal and enqueue. Waits while the publish queue is full (backpressure). Raises
        LocalProtocolError when the message would exceed the gossip size limit (bite 7: py-libp2p
        drops messages over 1 MiB without an error)."""
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
        await self._out_send.send((topic, env.raw, True))

    def _outbound_pressure(self) -> int:
        queues = getattr(self.pubsub, "peer_queues", {})
        return max((len(q) for q in list(queues.values())), default=0)

    async def _publisher(self) -> None:
        interval = 1.0 / self.s.max_rate if self.s.max_rate > 0 else 0.0
        next_at = trio.current_time()
        async for topic, raw, counted in self._out_recv:
            now = trio.current_time()
            if next_at > now:
                await trio.sleep(next_at - now)
            # Backpressure on libp2p's 32-slot per-peer queues (overflow is dropped silently):
            # wait, bounded, until no peer queue is over half full.
            with trio.move_on_after(1.0):
                while self._outbound_pressure() > 16:
                    await trio.sleep(0.005)
            try:
                await self.pubsub.publish(topic, raw)
            except Exception as e:  # a closing pubsub; the ring still serves pulls
                log.warning("gossip: publishing on %s failed: %s: %s", topic, type(e).__name__, e)
                continue
            if counted:
                self.m_out.labels(topic).inc()
            next_at = max(next_at + interval, trio.current_time() - 1.0)

    async def _head_announcer(self) -> None:
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
                        self._out_send.send_nowait((topic, env.raw, False))
                    except trio.WouldBlock:
                        continue   # the queue is busy with real messages; they carry seqs too
                    self._head_sent[topic] = seq
                    head_at[topic] = now

    # -- receiving --------------------------------------------------------------------------

    def _validator(self, topic: str) -> Callable[[Any, "rpc_pb2.Message"], bool]:
        def validate(forwarder: Any, msg: "rpc_pb2.Message") -> bool:
            fwd = str(forwarder)
            if fwd == self.self_peer_id:
                return True          # our own publish
            try:
                env = open_envelope(msg.data, max_size=self.s.max_message_size, peer=fwd)
            except RemoteProtocolError as e:
                log.info("gossip: rejected a message on %s: %s", topic, e)
                self.m_drops.labels(topic, "invalid").inc()
                return False
            from_id = bytes(msg.from_id)
            if env.topic != topic or self.peer_id_of(env.origin) != _b58(from_id):
                log.info("gossip: rejected a message on %s relayed by %s: envelope topic or "
                         "signer does not match the libp2p message", topic, fwd)
                self.m_drops.labels(topic, "invalid").inc()
                return False
            dropped = False
            if self.inbound_filter is not None and env.kind == KIND_MESSAGE:
                gm = GossipMessage(topic=topic, origin=self.peer_id_of(env.origin),
                                   data=env.data, received_from=fwd)
                dropped = not self.inbound_filter(gm, env.seq)
            if not dropped:
                self.store.add_relayed(env)
            self._validated[bytes(msg.from_id) + bytes(msg.seqno)] = (env, fwd, dropped)
            while len(self._validated) > 4096:
                self._validated.popitem(last=False)
            return True
        return validate

    async def subscribe(self, topic: str, handler: GossipHandler) -> None:
        """Subscribe `handler` to `topic`; returns once subscribed; the handler runs in its own task.

        One handler per topic per node: subscribing again replaces the handler (a role restarted
        by the supervisor is a new instance and subscribes anew; the subscription, its sequence
        tracking and queued messages carry over)."""
        await self._started.wait()
        assert self._nursery is not None
        if topic in self._topics:
            self._topics[topic].handler = handler
            return
        st = _TopicState(topic, handler, SequenceTracker(
            pull_delay=self.s.pull_delay, retry=1.0, max_attempts=self.s.pull_attempts,
            backfill=self.s.backfill), self.s.handler_queue)
        self._topics[topic] = st
        self.pubsub.set_topic_validator(topic, self._validator(topic), False)
        sub = await self.pubsub.subscribe(topic)
        self._nursery.start_soon(self._reader, st, sub)
        self._nursery.start_soon(self._handler_loop, st)
        self._nursery.start_soon(self._puller, st)

    async def _reader(self, st: _TopicState, sub: Any) -> None:
        while True:
            msg = await sub.get()
            key = bytes(msg.from_id) + bytes(msg.seqno)
            hit = self._validated.pop(key, None)
            if hit is None:
                if _b58(bytes(msg.from_id)) == self.self_peer_id:
                    continue            # our own publication comes back: not delivered
                try:
                    env = open_envelope(msg.data, max_size=self.s.max_message_size)
                except RemoteProtocolError:
                    continue            # the validator already rejected and counted it
                fwd = ""
            else:
                env, fwd, dropped = hit
                if dropped:
                    self.m_drops.labels(st.topic, "injected").inc()
                    continue
            await self._incoming(st, env, fwd, pulled=False)

    async def _incoming(self, st: _TopicState, env: Envelope, relayer: str, *,
                        pulled: bool) -> None:
        if env.origin == self.pubkey:
            return
        now = trio.current_time()
        origin_pid = self.peer_id_of(env.origin)
        if env.kind == KIND_HEAD:
            st.tracker.head(env.origin, env.epoch, env.seq, relayer, now)
            st.wake.set()
            return
        gm = GossipMessage(topic=st.topic, origin=origin_pid, data=env.data,
                           received_from=relayer)
        if not st.tracker.accept(env.origin, env.epoch, env.seq, relayer, now):
            st.wake.set()
            return
        if pulled:
            self.m_pulled.labels(st.topic).inc()
        st.wake.set()
        await st.send.send(gm)   # waits when the handler is slow: libp2p's buffer then drops,
        #                          and the gap is pulled (from our own relay cache first)

    async def _handler_loop(self, st: _TopicState) -> None:
        async for gm in st.recv:
            self.m_in.labels(st.topic).inc()
            try:
                await st.handler(gm)
            except Exception:
                log.exception("gossip: handler for %s failed on a message from %s", st.topic,
                              gm.origin)

    # -- pulls ------------------------------------------------------------------------------

    async def _puller(self, st: _TopicState) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                with trio.move_on_at(st.tracker.next_due()):
                    await st.wake.wait()
                st.wake = trio.Event()
                now = trio.current_time()
                for req in st.tracker.due(now):
                    nursery.start_soon(self._pull, st, req)
                self._report_lost(st)

    def _report_lost(self, st: _TopicState) -> None:
        while st.tracker.lost:
            lost = st.tracker.lost.pop()
            self.m_lost.labels(st.topic).inc(lost.count)
            log.warning("gossip: %d message(s) on %s from %s could not be fetched from any "
                        "peer (seqs %s%s)", lost.count, st.topic, self.peer_id_of(lost.origin),
                        list(lost.sample), "..." if lost.count > len(lost.sample) else "")

    async def _pull(self, st: _TopicState, req: PullRequest) -> None:
        want = set(req.seqs)
        gone: set[int] = set()
        # 1. our own relay cache (libp2p may have dropped it after we validated it)
        for s in sorted(want):
            raw = self.store.get_relayed(st.topic, req.origin, req.epoch, s)
            if raw is not None:
                await self._accept_pulled(st, raw, self.self_peer_id, req, want)
        origin_pid = self.peer_id_of(req.origin)
        # connected sources first (no dial); the origin holds everything it still remembers
        candidates = [origin_pid] + [p for p in req.sources if p != origin_pid]
        up = self.is_connected
        sources = [p for p in candidates if up(p)] + [p for p in candidates if not up(p)]
        for peer in sources:
            if not want or peer == self.self_peer_id:
                continue
            try:
                with trio.fail_after(self.s.pull_timeout):
                    fs = await self.open_stream(peer, PULL_PROTOCOL)
                    try:
                        await fs.send({"v": 1, "t": st.topic, "o": req.origin, "e": req.epoch,
                                       "s": sorted(want)})
                        while True:
                            f = Fields(await fs.recv(max_size=self.s.max_message_size + 64),
                                       "gossip pull reply", versions={1}, peer=peer)
                            if f.has("m"):
                                raw = f.bytes("m", max_len=self.s.max_message_size)
                                f.done()
                                await self._accept_pulled(st, raw, peer, req, want)
                                continue
                            f.bool("end")
                            g = f.list("g", max_len=MAX_PULL_SEQS)
                            f.done()
                            if peer == origin_pid:
                                gone.update(s for s in g if isinstance(s, int) and s in want)
                            break
                    finally:
                        await fs.close()
            except (trio.TooSlowError, StreamClosed, RemoteProtocolError, OSError) as e:
                log.debug("gossip: pull of %d seqs on %s from %s failed: %s", len(want),
                          st.topic, peer, e)
            except Exception as e:  # dial failures of every kind: try the next source
                log.debug("gossip: pull from %s failed: %s: %s", peer, type(e).__name__, e)
            want -= gone
        if gone:
            st.tracker.gone(req.origin, req.epoch, tuple(sorted(gone)))
        if want:
            st.tracker.pull_failed(req.origin, req.epoch, tuple(sorted(want)),
                                   trio.current_time())
        self._report_lost(st)
        st.wake.set()

    async def _accept_pulled(self, st: _TopicState, raw: bytes, peer: str, req: PullRequest,
                             want: set[int]) -> None:
        env = open_envelope(raw, max_size=self.s.max_message_size, peer=peer)
        if (env.kind != KIND_MESSAGE or env.origin != req.origin or env.epoch != req.epoch
                or env.topic != st.topic or env.seq not in want):
            raise RemoteProtocolError("gossip pull reply: a message that was not asked for",
                                      peer=peer)
        want.discard(env.seq)
        self.store.add_relayed(env)      # so we can serve it to others in turn
        await self._incoming(st, env, peer, pulled=True)

    async def serve_pull(self, fs: "Libp2pFramedStream") -> None:
        """Stream handler of PULL_PROTOCOL: answers with every asked-for message we hold, one
        per frame, then `{"end": true, "g": [...]}` listing the seqs we published and forgot."""
        f = Fields(await fs.recv(max_size=64 * 1024), "gossip pull request", versions={1},
                   peer=fs.remote_peer)
        topic = f.str("t", max_len=256)
        origin = f.bytes("o", size=32)
        epoch = f.int("e", lo=0, hi=2**63 - 1)
        seqs = f.list("s", max_len=MAX_PULL_SEQS)
        f.done()
        gone = []
        for s in seqs:
            if not isinstance(s, int) or isinstance(s, bool) or s < 1:
                raise RemoteProtocolError("gossip pull request: seqs must be positive integers",
                                          peer=fs.remote_peer)
            raw = None
            if origin == self.pubkey and epoch == self.epoch:
                raw = self.store.get_own(topic, s)
                if raw is None and self.store.own_gone(topic, s):
                    gone.append(s)
            else:
                raw = self.store.get_relayed(topic, origin, epoch, s)
            if raw is not None:
                await fs.send({"v": 1, "m": raw})
                self.m_served.labels(topic).inc()
        await fs.send({"v": 1, "end": True, "g": gone})


def _b58(peer_id_bytes: bytes) -> str:
    return str(base58.b58encode(peer_id_bytes).decode("ascii"))
