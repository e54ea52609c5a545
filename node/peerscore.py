"""GossipSub v1.1 peer-score parameters for fognode, and the score they define (sans-IO).

Why this module exists: reputation fed GossipSub's application score, but no threshold was
set (py-libp2p 0.8.1 defaults all four to minus infinity) and every topic weight was 0, so a
peer that sent invalid messages and 17 garbage streams stayed in every mesh. This module says
what each score component is worth here and why; node/scored_pubsub.py makes py-libp2p act on
it. Nothing here imports trio or libp2p; time is passed in.

The score (GossipSub v1.1 spec, "Peer Scoring"), for a peer p:

    score(p) = min(TopicCap, sum_t w_t * (P1 + P2 - P4))          per topic t, see below
             - w5 * max(0, P5 - threshold5)^2                      behaviour penalty
             + w6 * P6                                             application score
             (P3/P3b and P7 are off, see below)

It is one global value per peer (as in the spec and go-libp2p-pubsub), whichever topic asks.

What py-libp2p 0.8.1 implements of that (libp2p/pubsub/score.py, gossipsub.py, pubsub.py),
and what node/scored_pubsub.py adds:

| spec                                   | py-libp2p 0.8.1                   | here                  |
|----------------------------------------|-----------------------------------|-----------------------|
| P1 time in mesh                        | counts GRAFTs, not time           | real seconds in mesh  |
| P2 first deliveries (decaying, capped) | yes, one decay for all topics     | used                  |
| P3/P3b mesh delivery deficit           | a bonus per delivery, no deficit  | off (weight 0)        |
| P4 invalid messages, squared           | linear and capped (cap 0 = off)   | squared, uncapped     |
|   counted: validator rejections        | yes (topic validator -> False)    | used                  |
|   counted: bad libp2p signatures       | no (dropped silently)             | counted               |
| P5 behaviour penalty, squared          | linear                            | squared               |
| P6 application score                   | yes                               | reputation - faults   |
| P7 IP colocation                       | yes                               | off (weight 0)        |
| per-topic parameters and weights       | one set for all topics            | per topic             |
| gossip/publish gates on the full score | topic score only, no P6           | full score            |
| prune mesh peers with score < 0        | no                                | at every heartbeat    |
| refuse GRAFT from score < 0            | only below graylist               | below 0               |
| graylist: ignore every RPC             | only refuses GRAFT                | whole RPC ignored     |
| no IHAVE/IWANT below gossip threshold  | not checked                       | stripped              |
| RetainScore after a disconnect         | forgets everything                | negative kept 1 h     |
| decay to zero, decay interval          | multiplies every heartbeat        | factor per heartbeat  |
| opportunistic grafting                 | its own median rule (v2.0 style)  | left as it is         |
| (not in the spec) swap worst mesh peer | every heartbeat, +0.1 suffices    | off (mesh churn)      |

Scale. Positive scores are small on purpose: the most an honest peer earns is TopicCap (10)
plus its reputation (P6, 0..10, 1.0 for an average peer: protocols/registry/reputation.py),
so 20 in all. Thresholds (go-libp2p-pubsub requires gossip <= 0, publish <= gossip,
graylist <= publish, acceptPX >= 0; it ships no defaults, every application chooses):

    gossip -10, publish -20, graylist -40, accept PX +5

The ratios follow Filecoin/Lotus (-500 / -1000 / -2500, 1:2:5) and Eth2 (-4000 / -8000 /
-16000, 1:2:4) scaled to our smaller positive range: below 0 a peer leaves our meshes (it still
gets our messages lazily through IHAVE/IWANT), below -10 we stop gossiping with it, below -20
we neither send it our messages nor accept its messages, below -40 every RPC it sends is
ignored. Accept PX only from peers with real reputation (> 5, five times an average peer),
as Lotus accepts it only from its bootstrappers (AcceptPXThreshold 1000, bootstrappers' app
score 2500): PX makes us dial addresses a peer gives us.

Components:

- P4 invalid messages: our topic validator (node/gossip.py) rejects a message whose envelope
  does not decode, whose Ed25519 signature fails, or whose signer or topic does not match the
  libp2p message. Relayers validate before forwarding, so an honest peer never relays one:
  as in Eth2 (InvalidMessageDeliveriesWeight = -MaxPositiveScore / TopicWeight) one invalid
  message is worth the whole positive range: 10 * count^2 points, the same for every topic
  (each topic's weight is divided out). 1 message: -10 (out of the mesh); 2: -40 (no gossip,
  no publishing either way); 3: -90 (graylisted even from the +20 maximum). Decays to 1 % in one hour (Lotus:
  one hour; Eth2: 50 epochs, 5.3 h). A rolling upgrade of the envelope must use a new topic
  version (`.../2`), or the old nodes would graylist the new ones; that is the rule anyway.
- P6 application score = reputation - 4 * max(0, violations - 2). A violation is a
  RemoteProtocolError in a stream handler, garbage on a libp2p protocol (node/faults.py) or a
  fault a role reports with `overlay.penalize` (a refused certificate, a malformed record).
  Two are free (a peer of another version, a bad frame, a record that crossed a restart);
  each further one costs 4 points; the count halves every 10 minutes and is kept across
  disconnects. A peer with no reputation leaves our meshes at its 3rd recent violation, is cut
  off from gossip at its 5th, from messages at its 8th and graylisted at its 13th (the issue's
  17 garbage streams: -60); one with the top reputation (10) at its 5th, 8th, 10th and 15th.
  Leaving the mesh is harsher in py-libp2p than in the spec: it picks IHAVE targets with the
  same candidate rule (score >= 0, not backed off), so a negative peer gets no lazy gossip
  either; it still pulls what it misses over /fognode/gossip/pull.
- P1 time in mesh: 1 point after 30 minutes in a topic's mesh (Lotus: 1 point per hour,
  quantum 1 s, cap 3600; Eth2 ~10 points over 300 slots). Times the topic weight.
- P2 first deliveries: 0.5 per message first delivered, capped at 10 messages (5 points),
  decaying to 1 % in 10 minutes (Lotus messages topic: weight 0.5, decay 10 min). Farmable by
  relaying valid traffic, which is why it is capped below one invalid message.
- P3/P3b mesh delivery deficit: off. py-libp2p 0.8.1 does not implement the deficit (its P3
  is a bonus), and our topics are bursty control traffic (certificates in batches, status every
  10 s), the case in which Lotus (all its topics) and the first Eth2 parameters turned P3 off:
  a quiet topic would prune honest peers.
- P5 behaviour penalty (py-libp2p adds 5 per IHAVE/IWANT flood, 10 per GRAFT during backoff,
  1 per duplicate extensions message, 100 per equivocation): 0.25 * (P5 - 20)^2, decaying to
  1 % in 15 minutes. Isolated events are free (an honest py-libp2p peer can trip the 10 IWANT/s
  limit after a burst); 6 IWANT floods: -25 (no gossip); 5 early GRAFTs: -225 (graylist).
  py-libp2p's own pruner kept no backoff for the peers it pruned and GRAFTed them back inside
  theirs, three times made an honest peer negative: node/p2pfix_backoff.py keeps ours.
  Lotus: weight -10 over threshold 6 (its penalty is 1 per event); Eth2: -15.9 over 6.
- P7 IP colocation: off. Fog devices share a LAN or a NAT by design (a house, a field site
  behind one uplink), and devnets run on one address; go-libp2p users whitelist such ranges
  (Lotus whitelists its own, weight -100 over 5 peers). Sybils are met by reputation
  (EigenTrust with pre-trusted peers) and by the connection limits per subnet.
- Topic weights (multiply P1 and P2, i.e. how much good behaviour on a topic is worth):
  ledger certificates 1.0 (value-bearing), registry devices and observations 0.5 (they feed
  reputation), FL sessions 0.5, monitor status 0.25 (informational); any other topic a role
  subscribes to 0.5. TopicCap 10 (go-libp2p: TopicScoreCap; Lotus 0 = none, Eth2 ~32.7).
- RetainScore: a disconnected peer's negative counters (P4, P5) are kept for an hour, so
  reconnecting does not wash them off (Lotus: 6 hours; Eth2: 100 epochs); P6 faults are kept
  by the penalty book below regardless of connections.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator, Mapping

from fognode.node.errors import ConfigError

DECAY_TO_ZERO = 0.01     # a counter "has decayed" when it is at 1 % of its value (go-libp2p)


@dataclass(frozen=True)
class TopicScoreParams:
    """Weights of one topic. `invalid_weight` is per squared invalid message, before the topic
    weight (set it to points / weight for the same effective penalty on every topic)."""

    weight: float
    time_in_mesh_weight: float = 1.0 / 1800.0   # P1 points per second in the mesh
    time_in_mesh_cap: float = 1800.0            # seconds counted at most
    first_deliveries_weight: float = 0.5        # P2 points per first delivery
    first_deliveries_cap: float = 10.0          # deliveries counted at most
    invalid_weight: float = 10.0                # P4 points per invalid message squared


def topic(weight: float, *, invalid_points: float = 10.0) -> TopicScoreParams:
    """Parameters of a topic of `weight` whose invalid messages cost `invalid_points` * n^2
    whatever the weight."""
    return TopicScoreParams(weight=weight, invalid_weight=invalid_points / weight)


FOGNODE_TOPICS: Mapping[str, TopicScoreParams] = {
    "fognode/ledger/certs/1": topic(1.0),
    "fognode/registry/devices/1": topic(0.5),
    "fognode/registry/observations/1": topic(0.5),
    "fognode/fl/sessions/1": topic(0.5),
    "fognode/monitor/status/1": topic(0.25),
}


@dataclass(frozen=True)
class PeerScoreParams:
    """Every parameter of the peer score; the defaults are fognode's choice (module doc)."""

    topics: Mapping[str, TopicScoreParams] = field(default_factory=lambda: dict(FOGNODE_TOPICS))
    default_topic: TopicScoreParams = field(default_factory=lambda: topic(0.5))
    topic_score_cap: float = 10.0          # the positive topic part counts this much at most
    first_deliveries_decay: float = 600.0  # seconds for P2 to decay to 1 %
    invalid_decay: float = 3600.0          # seconds for P4 to decay to 1 %
    behaviour_weight: float = 0.25         # P5: points per (penalty - threshold)^2
    behaviour_threshold: float = 20.0
    behaviour_decay: float = 900.0         # seconds for P5 to decay to 1 %
    app_weight: float = 1.0                # P6
    ip_colocation_weight: float = 0.0      # P7: off (module doc)
    retain: float = 3600.0                 # seconds a gone peer's negative counters are kept
    violation_weight: float = 4.0          # P6 points per protocol violation beyond tolerance
    violation_tolerance: float = 2.0       # violations (decayed) that cost nothing
    violation_half_life: float = 600.0     # seconds for the violation count to halve
    violation_cap: float = 100.0           # violations counted at most
    gossip_threshold: float = -10.0
    publish_threshold: float = -20.0
    graylist_threshold: float = -40.0
    accept_px_threshold: float = 5.0

    def topic(self, name: str) -> TopicScoreParams:
        return self.topics.get(name, self.default_topic)

    def validate(self) -> None:
        """The spec's constraints; ConfigError naming the parameter."""
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(msg, key=f"peerscore.{key}")

        if not self.gossip_threshold <= 0:
            raise bad("gossip_threshold", "must be 0 or below")
        if not self.publish_threshold <= self.gossip_threshold:
            raise bad("publish_threshold", "must be at or below the gossip threshold")
        if not self.graylist_threshold <= self.publish_threshold:
            raise bad("graylist_threshold", "must be at or below the publish threshold")
        if not self.accept_px_threshold >= 0:
            raise bad("accept_px_threshold", "must be 0 or above")
        for key in ("first_deliveries_decay", "invalid_decay", "behaviour_decay",
                    "violation_half_life"):
            if not getattr(self, key) > 0:
                raise bad(key, "must be a positive number of seconds")
        for name, tp in [*self.topics.items(), ("default_topic", self.default_topic)]:
            if not tp.weight > 0 or tp.invalid_weight < 0 or tp.time_in_mesh_weight < 0 \
                    or tp.first_deliveries_weight < 0:
                raise bad(f"topics.{name}", "weights must be positive (P4 is subtracted)")


def decay_factor(decay_to_zero: float, interval: float) -> float:
    """The factor to multiply a counter by every `interval` seconds so that it falls to 1 %
    in `decay_to_zero` seconds (go-libp2p's ScoreParameterDecayWithBase)."""
    return DECAY_TO_ZERO ** (interval / decay_to_zero)


# ---------------------------------------------------------------------------------------------
# The score, from counters

@dataclass(frozen=True)
class TopicCounters:
    in_mesh: float = 0.0           # seconds in the topic's mesh (0 when not in it)
    first_deliveries: float = 0.0  # decayed count
    invalid: float = 0.0           # decayed count


def topic_score(tp: TopicScoreParams, c: TopicCounters) -> float:
    """w_t * (P1 + P2 - P4) for one topic."""
    p1 = tp.time_in_mesh_weight * min(c.in_mesh, tp.time_in_mesh_cap)
    p2 = tp.first_deliveries_weight * min(c.first_deliveries, tp.first_deliveries_cap)
    p4 = tp.invalid_weight * c.invalid * c.invalid
    return tp.weight * (p1 + p2 - p4)


def peer_score(params: PeerScoreParams, topics: Mapping[str, TopicCounters], *,
               behaviour: float, app: float, colocation: float = 0.0) -> float:
    """The whole score of one peer (module doc). `app` is P6 before its weight, `colocation`
    py-libp2p's P7 value before its weight."""
    s = min(params.topic_score_cap,
            sum(topic_score(params.topic(t), c) for t, c in topics.items()))
    excess = behaviour - params.behaviour_threshold
    if excess > 0:
        s -= params.behaviour_weight * excess * excess
    return s + params.app_weight * app - params.ip_colocation_weight * colocation


# ---------------------------------------------------------------------------------------------
# Application score: reputation minus protocol violations

def app_score(params: PeerScoreParams, reputation: float, violations: float) -> float:
    """P6: the registry's reputation minus the cost of the violations beyond the tolerance."""
    return reputation - params.violation_weight * max(0.0, violations - params.violation_tolerance)


class ViolationBook:
    """Protocol violations per peer: +1 each, halving every `half_life` seconds, at most `cap`;
    kept across disconnects. Bounded: beyond `max_peers` the least recently charged tenth is
    forgotten."""

    def __init__(self, *, half_life: float, cap: float, max_peers: int = 10000) -> None:
        self.half_life = half_life
        self.cap = cap
        self.max_peers = max_peers
        self._v: OrderedDict[str, tuple[float, float]] = OrderedDict()   # peer -> (count, at)

    def value(self, peer: str, now: float) -> float:
        v = self._v.get(peer)
        if v is None:
            return 0.0
        count, at = v
        return count * 0.5 ** (max(0.0, now - at) / self.half_life)

    def add(self, peer: str, now: float, amount: float = 1.0) -> float:
        """Charge `peer`; returns its new count."""
        count = min(self.value(peer, now) + amount, self.cap)
        self._v[peer] = (count, now)
        self._v.move_to_end(peer)
        if len(self._v) > self.max_peers:
            for _ in range(max(1, self.max_peers // 10)):
                self._v.popitem(last=False)
        return count

    def __len__(self) -> int:
        return len(self._v)

    def __iter__(self) -> Iterator[str]:
        """The peers charged and not yet forgotten."""
        return iter(self._v)
