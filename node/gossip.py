"""Reliable, paced gossip on py-libp2p 0.8.1 GossipSub: the trio adapter.

py-libp2p's `publish()` has no backpressure (32-slot per-peer queues, overflow dropped at DEBUG)
and a subscription holds 32 messages before it drops (notes bite 6). So every topic goes
through this layer:

- Envelope (gossip_envelope.py): each message is signed by its origin and numbered per
  (origin, topic) within the publisher's epoch; head messages announce the latest seq. One
  libp2p message carries one envelope, or a batch of one origin's envelopes of one topic.
- Publisher (gossip_publisher.py): `publish()` seals, keeps the message in a bounded ring (for
  pulls) and enqueues it on a bounded channel (a full channel makes `publish()` wait:
  backpressure). One task sends, at most `max_rate` messages/s on average, as libp2p messages
  each carrying every envelope of a topic that queued meanwhile (gossip_outbox.py), and waits
  while any peer's libp2p outbound queue is over half full.
- Receiver: `admit` (called by ScoredPubsub as soon as an RPC is parsed) ignores a message
  whose relayer is over its share (gossip_inbox.py). A topic validator checks the envelopes
  (decodable, from the libp2p message's signer, right topic; their own signatures only when
  py-libp2p did not check the message's) so bad messages are not relayed, caches them for
  pulls by others and queues them in the topic's inbox, fairly per relaying peer: py-libp2p's
  own 32-slot subscription channel, which a flood from one peer filled for everyone, is only
  drained. One reader task per topic feeds the sequence tracker
  round robin from the inbox; one handler task per topic calls the role's handler (a handler
  that raises is logged and the next message is delivered).
- Direct hand-over: once py-libp2p has taken a message (validated, seen, queued to the peers)
  ScoredPubsub awaits `deliver_now` in that message's own task (not the stream reader). An
  idle handler (no call running, none handed to the handler task) gets the inbox's next
  message there, without the reader's and the handler task's scheduler rounds (4-10 ms under
  load); otherwise the reader takes it. Still one call at a time per topic, in tracker order.
- Gaps (gossip_tracker.py, sans-IO): one tracker for all topics notices missing seqs, charges
  the state to the relaying peer within per-peer and total caps, and schedules pulls on a
  heap. One puller task starts the due pulls over `/fognode/gossip/pull/1.0.0` (our relay
  cache, then the origin, then the peers that relayed) and settles each; what the tracker
  refused or lost is counted, logged once per interval and charged (gossip_report.py).

Delivery is at-most-once per (origin, epoch, seq) while the origin is tracked, and may be out
of order. A node does not get its own publications back.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

import base58
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry, Counter

from fognode.node.errors import RemoteProtocolError, StreamClosed
from fognode.node.gossip_envelope import (KIND_HEAD, KIND_MESSAGE, Envelope, MessageStore,
                                          open_envelope, open_gossip, seal)
from fognode.node.gossip_inbox import FairInbox
from fognode.node.gossip_publisher import GossipPublisher
from fognode.node.gossip_pull import serve_pull
from fognode.node.gossip_report import Penalize, TrackerReport
from fognode.node.gossip_settings import GossipSettings
from fognode.node.gossip_tracker import (MAX_PULL_SEQS, PullRequest, Refusal, Refused,
                                         SequenceTracker)
from fognode.node.overlay import GossipCheck, GossipHandler, GossipMessage
from fognode.node.peerid import pubkey_from_raw_peer_id
from fognode.node.wire import Fields

if TYPE_CHECKING:
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.pubsub import Pubsub

    from fognode.node.streams import Libp2pFramedStream

log = logging.getLogger("fognode.gossip")

PULL_PROTOCOL = "/fognode/gossip/pull/1.0.0"
ENVELOPE_OVERHEAD = 2048   # bytes reserved for the libp2p RPC framing around our envelope
# Messages the reader hands the handler task ahead of it. The reader and the handler loop go
# on without a scheduler round per message, yielding once they have held the loop for
# SLICE seconds: a batch of cheap messages is delivered in one task step, a flood of costly ones
# (a role's handler that checks signatures) still yields after about each message.
DELIVER_AHEAD = 8
SLICE = 0.001

__all__ = ["PULL_PROTOCOL", "GossipLayer", "GossipSettings", "Envelope", "MessageStore",
           "SequenceTracker", "KIND_HEAD", "KIND_MESSAGE", "seal", "open_envelope"]


class _TopicState:
    def __init__(self, topic: str, handler: GossipHandler, queue: int, queue_bytes: int) -> None:
        self.topic = topic
        self.handler = handler
        self.check: GossipCheck | None = None     # the role's content check (subscribe)
        self.inbox: FairInbox[Envelope] = FairInbox(queue, queue_bytes)   # gossip_inbox.py
        self.arrived = trio.Event()
        # the queueing (fair per relaying peer) happens in the inbox; behind the tracker at
        # most DELIVER_AHEAD messages wait for the handler, so a batch is handed over without
        # a scheduler round per message
        self.send, self.recv = trio.open_memory_channel[GossipMessage](DELIVER_AHEAD)
        self.pending = 0            # messages handed to the handler task and not yet handled
        self.busy = False           # a call of the handler is running (either path)
        self.free = trio.Event()    # set when a call ends (the handler task waits on it)


PeerIdOf = Callable[[bytes], str]
OpenStream = Callable[[str, str], Any]   # async (peer_id, protocol) -> Libp2pFramedStream


class GossipLayer:
    """Owns publishing, subscriptions and pulls for one node. Run `run()` in a nursery."""

    def __init__(self, pubsub: "Pubsub", key: SigningKey, *, settings: GossipSettings,
                 metrics: CollectorRegistry, peer_id_of: PeerIdOf, open_stream: OpenStream,
                 self_peer_id: str, is_connected: Callable[[str], bool] = lambda p: True,
                 dialable: Callable[[str], bool] = lambda p: True,
                 inbound_filter: Callable[[GossipMessage, int], bool] | None = None,
                 penalize: Penalize = lambda peer, reason: None) -> None:
        self.pubsub = pubsub
        self.key = key
        self.pubkey = bytes(key.verify_key)
        self.s = settings
        self.peer_id_of = peer_id_of
        self.open_stream = open_stream
        self.self_peer_id = self_peer_id
        self.is_connected = is_connected
        self.dialable = dialable      # an address is known: no DHT lookup needed to dial it
        # Fault injection for tests and chaos runs: return False to lose a gossip message on
        # arrival, before the reliable layer or the relay cache sees it (libp2p still relays
        # it); it must then be pulled from another peer.
        self.inbound_filter = inbound_filter
        self.epoch = time.time_ns() // 1_000_000
        self.store = MessageStore(ring_size=settings.ring_size, relay_cache=settings.relay_cache)
        self.tracker = SequenceTracker(settings.limits())
        self.report = TrackerReport(metrics, self.tracker.charges, penalize=penalize,
                                    peer_id_of=peer_id_of, interval=settings.warn_interval,
                                    log=log)
        self._wake = trio.Event()
        self._topics: dict[str, _TopicState] = {}
        self._nursery: trio.Nursery | None = None
        self._started = trio.Event()
        self.m_in = Counter("fognode_node_gossip_messages_in_total",
                            "Gossip messages delivered to a role, per topic", ["topic"],
                            registry=metrics)
        self.publisher = GossipPublisher(
            pubsub, key, self.epoch, settings, self.store, max_envelope=self.max_envelope,
            sent=Counter("fognode_node_gossip_messages_out_total",
                         "Gossip messages published, per topic", ["topic"], registry=metrics),
            batches=Counter("fognode_node_gossip_publishes_total",
                            "libp2p messages published, per topic: each carries one gossip "
                            "envelope or a batch of them (gossip_outbox.py)", ["topic"],
                            registry=metrics))
        self.m_drops = Counter("fognode_node_gossip_drops_total",
                               "Gossip messages discarded before delivery, per topic and reason",
                               ["topic", "reason"], registry=metrics)
        self.m_pulled = Counter("fognode_node_gossip_pulled_total",
                                "Missed gossip messages fetched over the pull stream",
                                ["topic"], registry=metrics)
        self.m_served = Counter("fognode_node_gossip_pull_served_total",
                                "Gossip messages sent to peers that pulled them", ["topic"],
                                registry=metrics)
        self.m_pulls = Counter("fognode_node_gossip_pull_requests_total",
                               "Pulls of missing gossip seqs started (one per origin and try)",
                               ["topic"], registry=metrics)

    @property
    def max_envelope(self) -> int:
        return self.s.max_message_size - ENVELOPE_OVERHEAD

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs the publisher, the head announcer, the puller and (later) one reader + handler
        per subscribed topic. Cancel to stop."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.publisher.run_sender)
            nursery.start_soon(self.publisher.run_heads)
            nursery.start_soon(self._puller)
            self._started.set()
            task_status.started()
            await trio.sleep_forever()

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, topic: str, data: bytes) -> None:
        """Seal and enqueue (gossip_publisher.py). Waits while the publish queue is full
        (backpressure). Raises LocalProtocolError when the message would exceed the gossip size
        limit (bite 7: py-libp2p drops messages over 1 MiB without an error)."""
        await self.publisher.publish(topic, data)

    # -- receiving --------------------------------------------------------------------------

    def _validator(self, topic: str) -> Callable[[Any, "rpc_pb2.Message"], bool]:
        def validate(forwarder: Any, msg: "rpc_pb2.Message") -> bool:
            fwd = str(forwarder)
            if fwd == self.self_peer_id:
                return True          # our own publish
            try:
                envs = open_gossip(msg.data, max_size=self.s.max_message_size, peer=fwd,
                                   signed_by_origin=self.pubsub.strict_signing)
            except RemoteProtocolError as e:
                log.info("gossip: rejected a message on %s: %s", topic, e)
                self.m_drops.labels(topic, "invalid").inc()
                return False
            origin = envs[0].origin
            # (with strict signing this check is what binds the envelopes to the key that
            # py-libp2p verified the message with: see open_envelope's signed_by_origin)
            if (any(e.topic != topic or e.origin != origin for e in envs)
                    or self.peer_id_of(origin) != _b58(bytes(msg.from_id))):
                log.info("gossip: rejected a message on %s relayed by %s: envelope topic or "
                         "signer does not match the libp2p message", topic, fwd)
                self.m_drops.labels(topic, "invalid").inc()
                return False
            st = self._topics.get(topic)
            relay = True
            for env in envs:
                if not self._content_ok(st, env, fwd):
                    self.m_drops.labels(topic, "refused").inc()
                    relay = False    # not relayed; the batch's other envelopes still count
                    continue
                if self.inbound_filter is not None and env.kind == KIND_MESSAGE:
                    gm = GossipMessage(topic=topic, origin=self.peer_id_of(env.origin),
                                       data=env.data, received_from=fwd)
                    if not self.inbound_filter(gm, env.seq):
                        self.m_drops.labels(topic, "injected").inc()
                        continue
                self.store.add_relayed(env, fwd)
                if st is not None and env.origin != self.pubkey:
                    self._enqueue(st, env, fwd)
            return relay
        return validate

    def _enqueue(self, st: _TopicState, env: Envelope, relayer: str) -> None:
        """Queue an arrived message in its topic's inbox, fairly per relaying peer; what the
        inbox drops (the longest queue's oldest) is counted and charged to its relayer as a
        refusal (no penalty: a fast honest relayer may meet a slow handler)."""
        for peer, _ in st.inbox.put(relayer, env, len(env.raw)):
            self.m_drops.labels(st.topic, "inbox_full").inc()
            self.report.take([Refused(st.topic, str(peer), Refusal.INBOX_FULL)],
                             trio.current_time())
        st.arrived.set()

    def admit(self, forwarder: str, topic: str, from_id: bytes) -> bool:
        """As soon as py-libp2p has parsed a message's RPC (ScoredPubsub calls this): False to
        ignore it (not verified, not relayed, not marked seen) because its relayer is over its
        share: its inbox queue is the longest of a full inbox, or it may sponsor no more
        origins and this one is new (gossip_inbox.py). Each refusal is counted and charged."""
        st = self._topics.get(topic)
        origin = pubkey_from_raw_peer_id(from_id)
        if st is None or origin is None or forwarder == self.self_peer_id:
            return True      # not ours, or not an Ed25519 origin: the validator refuses it
        now = trio.current_time()
        if not st.inbox.admits(forwarder):
            self.m_drops.labels(topic, "inbox_full").inc()
            self.report.take([Refused(topic, forwarder, Refusal.INBOX_FULL)], now)
            return False
        if not self.tracker.admits(topic, origin, forwarder, now):
            self.m_drops.labels(topic, "origins_per_peer").inc()
            self.report.take(self.tracker.take_events(), now)
            return False
        return True

    async def subscribe(self, topic: str, handler: GossipHandler, *,
                        check: GossipCheck | None = None) -> None:
        """Subscribe `handler` to `topic`; returns once subscribed; the handler runs in its own task.

        One handler per topic per node: subscribing again replaces the handler (a role restarted
        by the supervisor is a new instance and subscribes anew; the subscription, its sequence
        tracking and queued messages carry over). `check` (node/overlay.py GossipCheck) runs on
        each message before it is relayed or handled, pulled ones included."""
        await self._started.wait()
        assert self._nursery is not None
        if topic in self._topics:
            self._topics[topic].handler = handler
            self._topics[topic].check = check
            return
        st = _TopicState(topic, handler, self.s.handler_queue, self.store.quota[1])
        st.check = check
        self._topics[topic] = st
        self.pubsub.set_topic_validator(topic, self._validator(topic), False)
        sub = await self.pubsub.subscribe(topic)
        self._nursery.start_soon(self._drain, sub)
        self._nursery.start_soon(self._reader, st)
        self._nursery.start_soon(self._handler_loop, st)

    def _content_ok(self, st: _TopicState | None, env: Envelope, relayer: str) -> bool:
        """The role's check of a message's content (subscribe's `check`), before it is relayed,
        cached for pulls or delivered; heads carry no content."""
        if st is None or st.check is None or env.kind != KIND_MESSAGE:
            return True
        return st.check(GossipMessage(topic=st.topic, origin=self.peer_id_of(env.origin),
                                      data=env.data, received_from=relayer))

    @staticmethod
    async def _drain(sub: Any) -> None:
        """Empty py-libp2p's 32-slot subscription channel: every message we deliver was
        already taken by the validator (its copies here are duplicates or our own)."""
        while True:
            await sub.get()

    async def _reader(self, st: _TopicState) -> None:
        """Feed the tracker from the inbox, round robin over the relaying peers."""
        since = time.perf_counter()
        while True:
            got = st.inbox.pop()
            if got is None:
                st.arrived = trio.Event()
                await st.arrived.wait()
                since = time.perf_counter()
                continue
            relayer, env = got
            await self._incoming(st, env, str(relayer), pulled=False)
            since = await _slice(since)

    async def _incoming(self, st: _TopicState, env: Envelope, relayer: str, *,
                        pulled: bool) -> None:
        gm = self._track(st, env, relayer, pulled=pulled)
        if gm is None:
            return
        st.pending += 1
        try:
            st.send.send_nowait(gm)
        except trio.WouldBlock:  # the handler is DELIVER_AHEAD behind: wait (the inbox then
            await st.send.send(gm)   # fills and drops; the gap is pulled, from our own relay
            #                          cache first)

    def _track(self, st: _TopicState, env: Envelope, relayer: str, *,
               pulled: bool) -> GossipMessage | None:
        """The tracker's step: the message to deliver, or None (ours, a head, a repeat)."""
        if env.origin == self.pubkey:
            return None
        now = trio.current_time()
        origin_pid = self.peer_id_of(env.origin)
        if env.kind == KIND_HEAD:
            self.tracker.head(st.topic, env.origin, env.epoch, env.seq, relayer, now)
            self._wake.set()
            return None
        gm = GossipMessage(topic=st.topic, origin=origin_pid, data=env.data,
                           received_from=relayer)
        new = self.tracker.accept(st.topic, env.origin, env.epoch, env.seq, relayer, now,
                                  via_pull=pulled)
        self._wake.set()
        if not new:
            return None
        if pulled:
            self.m_pulled.labels(st.topic).inc()
        return gm

    async def _handler_loop(self, st: _TopicState) -> None:
        since = time.perf_counter()
        while True:
            try:
                gm = st.recv.receive_nowait()
            except trio.WouldBlock:
                gm = await st.recv.receive()
                since = time.perf_counter()
            while st.busy:          # a direct hand-over is running: this message is next
                await st.free.wait()
                since = time.perf_counter()
            try:
                await self._handle(st, gm)
            finally:
                st.pending -= 1
            since = await _slice(since)

    async def _handle(self, st: _TopicState, gm: GossipMessage) -> None:
        """One call of the topic's handler (st.busy meanwhile); what it raises is logged."""
        self.m_in.labels(st.topic).inc()
        st.busy = True
        try:
            await st.handler(gm)
        except Exception:
            log.exception("gossip: handler for %s failed on a message from %s", st.topic,
                          gm.origin)
        finally:
            st.busy = False
            st.free.set()
            st.free = trio.Event()

    async def deliver_now(self, topics: list[str]) -> None:
        """In a received message's own task, once py-libp2p took it (module doc): for each of
        `topics` whose handler is idle, track and handle the inbox's next message here. Awaits
        that call; raises only cancellation (the handler's errors are logged)."""
        for topic in topics:
            st = self._topics.get(topic)
            if st is None or st.busy or st.pending or (got := st.inbox.pop()) is None:
                continue
            gm = self._track(st, got[1], str(got[0]), pulled=False)
            if gm is not None:
                await self._handle(st, gm)

    # -- pulls ------------------------------------------------------------------------------

    async def _puller(self) -> None:
        """Starts the due pulls (bounded by the tracker's caps) and flushes the report; sleeps
        until the next pull is due, a message arrives or a pull ends."""
        async with trio.open_nursery() as nursery:
            while True:
                with trio.move_on_at(min(self.tracker.next_due(), self.report.next_flush())):
                    await self._wake.wait()
                self._wake = trio.Event()
                now = trio.current_time()
                for req in self.tracker.due(now):
                    st = self._topics.get(req.topic)
                    if st is None:             # not subscribed (cannot happen): settle it
                        self.tracker.pull_done(req, now=now)
                        continue
                    self.m_pulls.labels(req.topic).inc()
                    nursery.start_soon(self._pull, st, req)
                self.report.take(self.tracker.take_events(), now)
                self.report.flush(now)

    def _sources(self, req: PullRequest) -> list[str]:
        """Where to pull from: the origin and the recent relayers, connected ones first, then
        those with a known address; never one that needs a DHT lookup to dial (a gap bomb's
        throw-away origins have no address: a lookup each cost us and our peers 15 % of the
        victim's CPU, charged to nobody)."""
        origin_pid = self.peer_id_of(req.origin)
        candidates = [p for p in [origin_pid] + [p for p in req.sources if p != origin_pid]
                      if p != self.self_peer_id]
        up = [p for p in candidates if self.is_connected(p)]
        return up + [p for p in candidates if p not in up and self.dialable(p)]

    async def _pull(self, st: _TopicState, req: PullRequest) -> None:
        """Fetch `req.seqs`: our relay cache first, then each source in turn. Always settles
        the request with the tracker, whatever happens (cancellation included)."""
        want = set(req.seqs)
        gone: set[int] = set()
        try:
            for s in sorted(want):             # libp2p may have dropped it after validation
                raw = self.store.get_relayed(st.topic, req.origin, req.epoch, s)
                if raw is not None:
                    await self._accept_pulled(st, raw, self.self_peer_id, req, want)
            origin_pid = self.peer_id_of(req.origin)
            for peer in self._sources(req) if want else []:
                try:
                    with trio.fail_after(self.s.pull_timeout):
                        g = await self._pull_from(st, req, peer, want)
                    if peer == origin_pid:
                        gone.update(s for s in g if isinstance(s, int) and s in want)
                except (trio.TooSlowError, StreamClosed, RemoteProtocolError, OSError) as e:
                    log.debug("gossip: pull of %d seqs on %s from %s failed: %s", len(want),
                              st.topic, peer, e)
                except Exception as e:  # dial failures of every kind: try the next source
                    log.debug("gossip: pull from %s failed: %s: %s", peer, type(e).__name__, e)
                want -= gone
                if not want:
                    break
        finally:
            self.tracker.pull_done(req, gone=tuple(sorted(gone)), now=trio.current_time())
            self._wake.set()

    async def _pull_from(self, st: _TopicState, req: PullRequest, peer: str,
                         want: set[int]) -> list[Any]:
        """One pull stream to `peer`; returns the seqs it says its origin forgot."""
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
                return g
        finally:
            await fs.close()

    async def _accept_pulled(self, st: _TopicState, raw: bytes, peer: str, req: PullRequest,
                             want: set[int]) -> None:
        env = open_envelope(raw, max_size=self.s.max_message_size, peer=peer)
        if (env.kind != KIND_MESSAGE or env.origin != req.origin or env.epoch != req.epoch
                or env.topic != st.topic or env.seq not in want):
            raise RemoteProtocolError("gossip pull reply: a message that was not asked for",
                                      peer=peer)
        if not self._content_ok(st, env, peer):
            raise RemoteProtocolError(f"gossip pull reply: a message on {st.topic} its content "
                                      "check refused", peer=peer)
        want.discard(env.seq)
        self.store.add_relayed(env, peer)   # so we can serve it to others in turn
        await self._incoming(st, env, peer, pulled=True)

    async def serve_pull(self, fs: "Libp2pFramedStream") -> None:
        """Stream handler of PULL_PROTOCOL (node/gossip_pull.py)."""
        await serve_pull(fs, self.store, own_key=self.pubkey, epoch=self.epoch,
                         served=lambda topic: self.m_served.labels(topic).inc())


async def _slice(since: float) -> float:
    """Yield to the scheduler when the calling task has run SLICE seconds since `since` (its
    last yield); returns the new `since`."""
    if time.perf_counter() - since < SLICE:
        return since
    await trio.lowlevel.checkpoint()
    return time.perf_counter()


def _b58(peer_id_bytes: bytes) -> str:
    return str(base58.b58encode(peer_id_bytes).decode("ascii"))
