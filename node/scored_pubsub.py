"""py-libp2p 0.8.1 GossipSub and Pubsub made to act on the peer score of node/peerscore.py.

py-libp2p 0.8.1 computes a score but acts on little of it (node/peerscore.py has the table):
its gates see a topic's score without the application score, it never prunes a mesh peer for a
negative score, and a graylisted peer's RPCs are still processed. Three small subclasses close
those gaps; each override calls py-libp2p's own method for the normal case:

- `FognodePeerScorer(PeerScorer)`: the score is `peerscore.peer_score` over every topic the
  peer has counters in (one global value, as in the spec), with real time in mesh (P1),
  squared P4 and P5, P6 from the host, and RetainScore (negative counters outlive a
  disconnect). The gates (`allow_publish`, `allow_gossip`, `is_graylisted`, `allow_px_from`)
  compare that score with the thresholds.
- `ScoredGossipSub(GossipSub)` (node/p2pfix_backoff.py's, p2pfix_copies.py's and
  p2pfix_floodpublish.py's): at
  every heartbeat mesh peers with a negative score are PRUNEd (and backed off); mesh
  candidates must have a score >= 0; a GRAFT from a peer below 0 is answered with PRUNE; a
  graylisted peer's control messages are ignored, and IHAVE/IWANT from a peer below the
  gossip threshold are dropped. py-libp2p's own (non-spec) swap of the
  worst mesh peer for a better outsider is turned off: with real scores it churns the mesh.
- `ScoredPubsub(Pubsub)`: a graylisted peer's messages and subscriptions are ignored, and a
  message whose libp2p signature fails counts as an invalid message (P4) of its forwarder
  (0.8.1 drops it without counting). An admission check (`set_gossip_hooks`; the gossip layer's
  `admit`, node/gossip_inbox.py) may ignore a message as soon as its RPC is parsed: before
  py-libp2p spawns a managed task for it (`Pubsub._is_subscribed_to_msg`, whose task
  bookkeeping scans every task of the service: 22 % of a gap-bomb victim's samples) and
  before its signature is checked. Ignored means not verified, not relayed, not marked seen,
  no penalty (go-libp2p's ValidationIgnore). Once a message of another peer has been taken
  (validated, marked seen, relayed: queued to the peers), `push_msg` awaits the delivery
  callback (`set_gossip_hooks`; the gossip layer's `deliver_now`, node/gossip.py) in the same
  task, so an idle topic handler gets it without further scheduler rounds. A copy of a
  message already seen is dropped there too, as `push_msg` would drop it, but without the
  task (in a full mesh of 4 every
  message arrives 3 times at each node: 1.6 duplicate tasks per ledger transfer at 30 tx/s). The stream's peer reaches that method through a
  context variable set in `continuously_read_stream` (one reader task per peer). That reader
  also yields to the scheduler at every read, and reads ahead up to READ_AHEAD bytes so an
  RPC costs at most one trip through the muxer, not three (`_FairReads`): node/p2pfix_tcpio.py and
  p2pfix_yamux.py serve buffered bytes without a checkpoint, so one peer's reader went
  through every RPC buffered from it in a single task step, 118 ms of CPU under a gossip
  flood (and the tasks it spawned made 150-350 ms scheduler batches), while every other task
  of the daemon (node.info, honest peers' streams) waited.

A message's libp2p signature is checked with its sender's key remembered per peer id
(node/p2pfix_sigcheck.py, installed by ScoredPubsub), and its validation result kept in a
cache kept in constant time (node/p2pfix_validationcache.py). Every copy read from a peer (seen
before or not) is noted in the router's `copies`, so the message is not forwarded to that
peer (node/p2pfix_copies.py). Its per-peer sending loop
writes every RPC already queued for a peer in one stream write (node/p2pfix_pubsubwrite.py),
less the messages the peer holds by then (`without_held`). Each action is counted in
`fognode_node_gossip_score_actions_total{action}`.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from contextvars import ContextVar
from typing import Any, Awaitable, Callable, Mapping, cast

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import PeerScorer, ScoreParams
from libp2p.pubsub.score import TopicScoreParams as Libp2pTopicParams
from prometheus_client import CollectorRegistry, Counter

from fognode.node import p2pfix_pubsubwrite, p2pfix_sigcheck
from fognode.node.metrics import metric
from fognode.node.p2pfix_backoff import BackoffKeepingGossipSub
from fognode.node.p2pfix_copies import CopyAwareGossipSub, without_held
from fognode.node.p2pfix_floodpublish import FloodPublishGossipSub
from fognode.node.p2pfix_validationcache import QuickValidationCache
from fognode.node.peerscore import PeerScoreParams, TopicCounters, decay_factor, peer_score

MAX_RETAINED = 4096     # disconnected peers whose negative counters are kept at most
SCORE_TTL = 0.1         # seconds a computed score is reused (gates ask per message per peer)
READ_AHEAD = 64 * 1024  # bytes a pubsub reader asks its stream for at once (_FairReads)

AppScore = Callable[[ID], float]
Count = Callable[[str], None]
Admission = Callable[[str, str, bytes], bool]    # (forwarder, topic, raw from id) -> take it
Delivery = Callable[[list[str]], Awaitable[None]]  # a message on these topics was taken
# the peer whose pubsub stream the current task reads (set per reader task)
_READING_FROM: ContextVar[tuple[ID, str] | None] = ContextVar("fognode_pubsub_reading_from",
                                                              default=None)


def score_actions(registry: CollectorRegistry) -> Count:
    """The counter of what the score made GossipSub do, as a `count(action)` callable."""
    c = metric(registry, Counter, "fognode_node_gossip_score_actions_total",
               "What the GossipSub peer score made this node do: pruned_negative, "
               "graft_refused, graylisted_rpc, gossip_dropped, bad_signature, ignored "
               "(a relayer over its share, before the signature check)", ["action"])
    return lambda action: c.labels(action).inc()


class FognodePeerScorer(PeerScorer):
    """py-libp2p's scorer with fognode's score (module doc). Built by ScoredGossipSub."""

    def __init__(self, params: PeerScoreParams, *, heartbeat: float, app_score: AppScore,
                 mesh: Callable[[], Mapping[str, set[ID]]], connected: Callable[[ID], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        params.validate()
        self.fognode = params
        self._mesh = mesh
        self._connected = connected
        self._clock = clock
        self._joined: dict[ID, dict[str, float]] = {}   # peer -> topic -> joined the mesh at
        self._retained: OrderedDict[ID, float] = OrderedDict()   # gone peer -> when
        self._cache: dict[ID, tuple[float, float]] = {}           # peer -> (score, computed at)
        super().__init__(ScoreParams(
            p2_first_message_deliveries=_decay(decay_factor(params.first_deliveries_decay,
                                                            heartbeat)),
            p4_invalid_messages=_decay(decay_factor(params.invalid_decay, heartbeat)),
            p5_behavior_penalty_decay=decay_factor(params.behaviour_decay, heartbeat),
            p6_appl_slack_weight=params.app_weight,
            p7_ip_colocation_weight=params.ip_colocation_weight,
            publish_threshold=params.publish_threshold,
            gossip_threshold=params.gossip_threshold,
            graylist_threshold=params.graylist_threshold,
            accept_px_threshold=params.accept_px_threshold,
            app_specific_score_fn=app_score))

    # -- counters -----------------------------------------------------------------------------

    def on_heartbeat(self, dt_seconds: float = 1.0) -> None:
        super().on_heartbeat(dt_seconds)
        self._cache.clear()
        now = self._clock()
        current: dict[ID, set[str]] = {}
        for t, peers in self._mesh().items():
            for p in peers:
                current.setdefault(p, set()).add(t)
        for p in list(self._joined):
            if p not in current:
                del self._joined[p]
        for p, topics in current.items():
            joined = self._joined.setdefault(p, {})
            for t in list(joined):
                if t not in topics:
                    del joined[t]
            for t in topics:
                joined.setdefault(t, now)
        horizon = now - self.fognode.retain
        while self._retained and next(iter(self._retained.values())) < horizon:
            self._forget(self._retained.popitem(last=False)[0])

    def invalidate(self, peer_id: str) -> None:
        """The application score of `peer_id` (base58) changed: recompute at the next ask."""
        try:
            self._cache.pop(ID.from_base58(peer_id), None)
        except ValueError:      # not a peer id: nothing cached under it
            pass

    def on_invalid_message(self, peer: ID, topic: str) -> None:
        super().on_invalid_message(peer, topic)
        self._cache.pop(peer, None)      # takes effect at once, for the next message

    def remove_peer(self, peer: ID) -> None:
        """A disconnect: forget the peer unless its score is negative (RetainScore)."""
        self._joined.pop(peer, None)
        self._cache.pop(peer, None)
        if self.score(peer, []) >= 0:
            super().remove_peer(peer)
            return
        self._retained[peer] = self._clock()
        self._retained.move_to_end(peer)
        while len(self._retained) > MAX_RETAINED:
            self._forget(self._retained.popitem(last=False)[0])

    def _forget(self, peer: ID) -> None:
        """The retention of a gone peer ended: drop its counters unless it came back."""
        if peer not in self._retained and not self._connected(peer):
            super().remove_peer(peer)

    # -- the score ----------------------------------------------------------------------------

    def _topics(self, peer: ID) -> dict[str, TopicCounters]:
        now = self._clock()
        names: set[str] = set()
        for table in (self.first_message_deliveries, self.invalid_messages):
            found = table.get(peer)
            if found:
                names.update(found)
        in_mesh = self._joined.get(peer, {})
        names.update(in_mesh)
        first = self.first_message_deliveries.get(peer)
        invalid = self.invalid_messages.get(peer)
        out = {}
        for t in names:
            joined = in_mesh.get(t)
            out[t] = TopicCounters(
                in_mesh=0.0 if joined is None else now - joined,
                first_deliveries=first.get(t, 0.0) if first is not None else 0.0,
                invalid=invalid.get(t, 0.0) if invalid is not None else 0.0)
        return out

    def topic_score(self, peer: ID, topic: str) -> float:
        return self.score(peer, [topic])

    def score(self, peer: ID, topics: list[str]) -> float:
        """The peer's global score (whatever `topics` asks about; spec and go-libp2p), reused
        for SCORE_TTL seconds (an invalid message and a heartbeat recompute it at once)."""
        now = self._clock()
        cached = self._cache.get(peer)
        if cached is not None and now - cached[1] < SCORE_TTL:
            return cached[0]
        value = self._compute(peer)
        self._cache[peer] = (value, now)
        if len(self._cache) > 4 * MAX_RETAINED:
            self._cache.clear()
        return value

    def _compute(self, peer: ID) -> float:
        behaviour = (self.behavior_penalty.get(peer, 0.0)
                     + self.graft_flood_penalties.get(peer, 0.0)
                     + self.iwant_spam_penalties.get(peer, 0.0)
                     + self.ihave_spam_penalties.get(peer, 0.0)
                     + self.equivocation_penalties.get(peer, 0.0))
        app = 0.0
        fn = self.params.app_specific_score_fn
        if fn is not None:
            try:
                app = fn(peer)
            except Exception:   # the host's function is a dict look-up; never break routing
                app = 0.0
        return peer_score(self.fognode, self._topics(peer), behaviour=behaviour, app=app,
                          colocation=self.ip_colocation_penalty(peer)
                          if self.fognode.ip_colocation_weight else 0.0)

    # -- the gates ----------------------------------------------------------------------------

    def allow_publish(self, peer: ID, topics: list[str]) -> bool:
        return self.score(peer, topics) >= self.fognode.publish_threshold

    def allow_gossip(self, peer: ID, topics: list[str]) -> bool:
        return self.score(peer, topics) >= self.fognode.gossip_threshold

    def is_graylisted(self, peer: ID, topics: list[str]) -> bool:
        return self.score(peer, topics) < self.fognode.graylist_threshold

    def allow_px_from(self, peer: ID, topics: list[str]) -> bool:
        return self.score(peer, topics) >= self.fognode.accept_px_threshold


def _decay(factor: float) -> Libp2pTopicParams:
    # weights and caps live in PeerScoreParams; py-libp2p only decays the counters
    return Libp2pTopicParams(weight=0.0, cap=0.0, decay=factor)


class ScoredGossipSub(BackoffKeepingGossipSub, CopyAwareGossipSub, FloodPublishGossipSub):
    """GossipSub that prunes negative peers, refuses their GRAFTs and ignores graylisted ones.
    Takes GossipSub's arguments plus the score parameters, the P6 function and `count`.
    Derives from node/p2pfix_backoff.py's GossipSub (a backoff kept for every peer it prunes,
    gossip to backed-off peers), node/p2pfix_copies.py's (no copy to a peer that holds the
    message), itself node/p2pfix_idontwant.py's (IDONTWANT only where it can save a copy), and
    node/p2pfix_floodpublish.py's (its own messages to every topic peer above the publish
    threshold)."""

    def __init__(self, *, peer_score: PeerScoreParams, app_score: AppScore, count: Count,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.count = count
        self.scorer: FognodePeerScorer = FognodePeerScorer(
            peer_score, heartbeat=float(self.heartbeat_interval), app_score=app_score,
            mesh=lambda: self.mesh, connected=lambda p: p in self.peer_protocol)

    def _score(self, peer: ID) -> float:
        return self.scorer.score(peer, [])

    def mesh_heartbeat(self) -> tuple[Any, Any]:
        """Spec: PRUNE every mesh peer whose score is negative, then py-libp2p's own upkeep
        (which refills the mesh from peers with a score >= 0)."""
        dropped: dict[ID, list[str]] = {}
        for topic_name, peers in self.mesh.items():
            for peer in [p for p in peers if self._score(p) < 0]:
                peers.discard(peer)
                self.scorer.on_leave_mesh(peer, topic_name)
                self._add_back_off(peer, topic_name, False)
                dropped.setdefault(peer, []).append(topic_name)
                self.count("pruned_negative")
        graft, prune = super().mesh_heartbeat()
        for peer, topics in dropped.items():
            prune[peer].extend(t for t in topics if t not in prune[peer])
        return graft, prune

    def _get_in_topic_gossipsub_peers_from_minus(self, topic: str, num_to_select: int,
                                                 minus: Any, backoff_check: bool = False,
                                                 ) -> list[ID]:
        """Mesh, fanout and PX candidates: only peers with a score >= 0 (spec)."""
        if self.pubsub is None or topic not in self.pubsub.peer_topics:
            return super()._get_in_topic_gossipsub_peers_from_minus(
                topic, num_to_select, minus, backoff_check)
        negative = {p for p in self.pubsub.peer_topics[topic] if self._score(p) < 0}
        return super()._get_in_topic_gossipsub_peers_from_minus(
            topic, num_to_select, set(minus) | negative, backoff_check)

    async def _consider_peer_replacement(self, topic: str) -> None:
        """Off. py-libp2p swaps the worst mesh peer for any outside peer scoring 0.1 more, at
        every heartbeat; the v1.1 spec has no such rule, and with real (positive) scores it
        would churn the mesh (PRUNE + GRAFT + backoff each time). The mesh is kept healthy by
        the spec's rules: negative peers are pruned, candidates need a score >= 0."""
        return

    def _improve_mesh_diversity(self, topic: str, current_ips: set[str]) -> list[ID]:
        """py-libp2p grafts peers of new IPs down to the graylist threshold: keep those >= 0."""
        grafted = super()._improve_mesh_diversity(topic, current_ips)
        keep = []
        for peer in grafted:
            if self._score(peer) < 0:
                self.mesh[topic].discard(peer)
            else:
                keep.append(peer)
        return keep

    async def handle_graft(self, graft_msg: rpc_pb2.ControlGraft, sender_peer_id: ID) -> None:
        """Spec: a GRAFT from a peer with a negative score is refused with PRUNE (backoff)."""
        if self._score(sender_peer_id) < 0:
            self.count("graft_refused")
            self._add_back_off(sender_peer_id, graft_msg.topicID, False)
            if sender_peer_id in self.mesh.get(graft_msg.topicID, set()):
                self.mesh[graft_msg.topicID].discard(sender_peer_id)
            await self.emit_prune(graft_msg.topicID, sender_peer_id, False, False)
            return
        await super().handle_graft(graft_msg, sender_peer_id)

    async def handle_rpc(self, rpc: rpc_pb2.RPC, sender_peer_id: ID) -> None:
        """Spec: ignore a graylisted peer's RPC; no IHAVE/IWANT below the gossip threshold."""
        score = self._score(sender_peer_id)
        if score < self.scorer.fognode.graylist_threshold:
            self.count("graylisted_rpc")
            return
        if score < self.scorer.fognode.gossip_threshold and (rpc.control.ihave or
                                                              rpc.control.iwant):
            self.count("gossip_dropped")
            rpc.control.ClearField("ihave")
            rpc.control.ClearField("iwant")
        await super().handle_rpc(rpc, sender_peer_id)


class _FairReads:
    """A pubsub stream whose every read is a trio checkpoint, as reads of trio's own streams
    are, so a reader that has buffered bytes lets the other tasks run between RPCs. It asks
    the stream for up to READ_AHEAD bytes at a time and serves py-libp2p's reads from them
    (its RPC reader takes the varint prefix a byte at a time, then the body: three trips
    through NetStream, yamux's lock and buffer per RPC before, at most one now, none while
    RPCs already read wait). A read of READ_AHEAD or more with nothing held goes straight to
    the stream. Every other attribute is the wrapped stream's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._held = b""
        self._at = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if self._at >= len(self._held):
            if n is not None and n >= READ_AHEAD:
                big: bytes = await self._stream.read(n)
                return big
            data: bytes = await self._stream.read(READ_AHEAD)
            if n is None or n < 0 or len(data) <= n:
                return data
            self._held, self._at = data, 0
        start = self._at
        self._at = len(self._held) if n is None or n < 0 else min(start + n, len(self._held))
        return self._held[start:self._at]


class ScoredPubsub(Pubsub):
    """Pubsub that ignores graylisted peers and counts bad libp2p signatures as P4. Takes
    Pubsub's arguments; its router must be a ScoredGossipSub."""

    def __init__(self, host: Any, router: ScoredGossipSub, **kwargs: Any) -> None:
        p2pfix_sigcheck.install()       # a sender's key taken from its peer id once (issue 16)
        super().__init__(host, router, **kwargs)
        old = self.validation_cache     # the same cache in O(1) (node/p2pfix_validationcache.py)
        self.validation_cache = QuickValidationCache(old.ttl, old.max_size)
        self.scored = router
        self._admission: Admission = lambda forwarder, topic, from_id: True
        self._delivery: Delivery | None = None

    def set_gossip_hooks(self, admission: Admission, delivery: Delivery) -> None:
        """Ask `admission(forwarder, topic, from_id)` about every message of another peer
        before its signature is checked (False ignores the message), and await
        `delivery(topics)` in its own task once it has been taken (module doc)."""
        self._admission = admission
        self._delivery = delivery

    def _graylisted(self, peer: ID) -> bool:
        return peer != self.my_id and self.scored.scorer.is_graylisted(peer, [])

    async def handle_sending_messages(self, peer_id: ID, stream: Any, queue: Any) -> None:
        """py-libp2p's per-peer sending loop, with every RPC already queued for the peer
        joined into one write (node/p2pfix_pubsubwrite.py), less the messages the peer holds."""
        await p2pfix_pubsubwrite.send_queued(
            self, peer_id, stream, queue,
            trim=lambda rpc: without_held(rpc, peer_id, self.scored, self._msg_id_constructor))

    async def continuously_read_stream(self, stream: Any) -> None:
        _READING_FROM.set((stream.muxed_conn.peer_id, str(stream.muxed_conn.peer_id)))
        await super().continuously_read_stream(cast(Any, _FairReads(stream)))

    def _is_subscribed_to_msg(self, msg: rpc_pb2.Message) -> bool:
        """py-libp2p asks this for each message of a parsed RPC before it spawns the task that
        handles it: also ask the admission check (module doc)."""
        if not super()._is_subscribed_to_msg(msg):
            return False
        reading = _READING_FROM.get()
        if reading is None:
            return True
        peer, fwd = reading
        if self._graylisted(peer):
            self.scored.count("graylisted_rpc")
            return False
        msg_id = self._msg_id_constructor(msg)
        self.scored.copies.note(peer, msg_id)       # it holds the message: no copy back to it
        if self.seen_messages.has(msg_id):  # a duplicate: push_msg would drop it, after a spawn
            return False
        if not all(self._admission(fwd, t, msg.from_id) for t in msg.topicIDs):
            self.scored.count("ignored")
            return False
        return True

    def handle_subscription(self, origin_id: ID, sub_message: rpc_pb2.RPC.SubOpts) -> None:
        if self._graylisted(origin_id):
            return
        super().handle_subscription(origin_id, sub_message)

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        if msg_forwarder == self.my_id:
            await super().push_msg(msg_forwarder, msg)
            return
        if self._graylisted(msg_forwarder):
            self.scored.count("graylisted_rpc")
            return
        if self._is_msg_seen(msg):
            return
        await super().push_msg(msg_forwarder, msg)
        # 0.8.1 checks the libp2p signature before the validators and drops a bad one without
        # counting it. After the call, a message neither seen (accepted) nor in the validation
        # cache (validated) nor refused by a gate was refused for its signature: count it as
        # an invalid message of its forwarder, as go-libp2p does.
        scorer = self.scored.scorer
        if (self.strict_signing and not self._is_msg_seen(msg)
                and self.validation_cache.get(self._msg_id_constructor(msg)) is None
                and not self.is_peer_blacklisted(msg_forwarder)
                and not self.is_peer_blacklisted(ID(msg.from_id))
                and scorer.allow_publish(msg_forwarder, list(msg.topicIDs))):
            for t in msg.topicIDs:
                if t in self.topic_ids:
                    scorer.on_invalid_message(msg_forwarder, t)
            self.scored.count("bad_signature")
        elif self._delivery is not None and self._is_msg_seen(msg):
            await self._delivery(list(msg.topicIDs))
