"""The one hardened py-libp2p 0.8.1 host, and the `Overlay` roles use (node/overlay.py).

Every workaround for py-libp2p 0.8.1 (shared/notes/py-libp2p-0.8.1.md, "bites") is made once,
here or in the module named:
  1  plaintext/SECIO/TLS offered and a plaintext dialer accepted -> Noise-only `sec_opt`
  2  an exception escaping a stream handler kills the host       -> streams.guard_handler, and
     `_harden_handlers` wraps libp2p's own handlers the same way
  3  StreamEOF instead of b"" / unframed peers hang              -> streams.Libp2pFramedStream
  4  every dial stalls 250 ms                                    -> max_connections_per_peer=1
  5  spam protection drops our own publishes, 120 s heartbeat    -> spam off, heartbeat 1 s
  6  no publish backpressure, 32-slot subscription buffers       -> gossip.GossipLayer
  7  gossip over 1 MiB vanishes                                  -> gossip.publish raises
  8  stopping Pubsub while the host receives: "Nursery is closed" -> open_overlay closes the
     host first, then leaves the service contexts
  9  connected peers not in the DHT routing table, lax validation -> add_peer on connect,
     strict_validation=True and one validator per namespace; its WARNING per stream close is
     silenced in quiet_libp2p_loggers
  14 a dial can hang                                             -> every dial under a timeout
  15 libp2p log noise                                            -> quiet_libp2p_loggers
  16 a subscription made while a new pubsub peer is being set up  -> every node re-announces its
     never reaches it (the peer's hello was built before, the        subscriptions to all pubsub
     broadcast went out before it was registered)                    peers every 5 heartbeats
  17 Kademlia ignores `protocol_prefix`: always /ipfs/kad/1.0.0,  -> dht.KadHost: the DHT's view
     the public IPFS DHT's id; PUT_VALUE refusals are silent and     of the host speaks
     50,000 Sybil records evict the real ones                        /fognode/kad/1.0.0;
                                                                     dht.FognodeKadDHT admits
                                                                     puts by quota (dhtquota)
  18 nothing pings peers (and py-libp2p's ping rounds RTT to whole -> ping.Pinger (latency.py)
     milliseconds, 0 on a LAN)
The swarm's own auto-connector and pruner are neutralised (watermarks 0 / hard cap) so that
node/connmgr.py alone decides whom to dial and trim.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import multiaddr
import psutil
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry, Counter, Gauge

from fognode.node.connmgr import (ConnectionManager, ConnectionPolicy, DialBackoff,
                                  DialBackoffError, DialError)
from fognode.node import (p2pfix_multistream, p2pfix_netstream, p2pfix_records,
                          p2pfix_tasks, p2pfix_yamux)
from fognode.node import peerid as _peerid
from fognode.node.dht import FognodeKadDHT
from fognode.node.dhtquota import DhtLimits
from fognode.node.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from fognode.node.events import EventBus, PeerConnected, PeerDisconnected
from fognode.node.faults import RemoteFaults, is_remote_fault, limit_libp2p_errors
from fognode.node.gossip import PULL_PROTOCOL, GossipLayer, GossipSettings
from fognode.node.latency import PingSettings
from fognode.node.overlay import (DhtValidator, FramedStream, GossipHandler, PeerInfo,
                                  StreamHandler)
from fognode.node.p2pfix_tcpio import BufferingNoise
from fognode.node.p2pfix_yamux import QuickYamux
from fognode.node.peerscore import PeerScoreParams, ViolationBook, app_score
from fognode.node.scored_pubsub import ScoredGossipSub, ScoredPubsub, score_actions
from fognode.node.ping import Pinger, libp2p_ping
from fognode.node.rcmgr import DEFAULT_EXEMPT, limits_from
from fognode.node.resources import ResourceGate
from fognode.node.streams import Libp2pFramedStream, guard_handler, guard_raw

log = logging.getLogger("fognode.host")

MAX_GOSSIP_MESSAGE = 1048576   # py-libp2p (and other implementations) drop RPCs over 1 MiB


# ---------------------------------------------------------------------------------------------
# Config

@dataclass(frozen=True)
class OverlayConfig:
    """The [overlay] section of node.toml."""

    listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/4001"])  # TCP; port 0 = any
    announce: list[str] = field(default_factory=list)  # report these instead of interface addrs (NAT)
    bootstrap: list[str] = field(default_factory=list)  # multiaddrs ending in /p2p/<peer-id>
    peers_low: int = 8                  # below this many peers, dial peers found through the DHT
    peers_high: int = 32                # above this many peers, trim the lowest-scored
    dial_timeout: float = 10.0          # seconds for one dial (TCP + Noise + Yamux)
    dial_failures_before_backoff: int = 5   # failed dials in a row before a peer is backed off
    dial_backoff: float = 30.0          # seconds of the first back-off; doubles per further failure
    dial_backoff_max: float = 600.0     # cap of the back-off, seconds
    connmgr_interval: float = 5.0       # seconds between connection-manager rounds
    gossip_heartbeat: float = 1.0       # GossipSub heartbeat, seconds (libp2p's default is 120)
    gossip_degree: int = 6              # GossipSub mesh degree D (D_low = D-2, D_high = 2D)
    max_message_size: int = 1048576     # bytes of one gossip message incl. envelope; at most 1 MiB
    gossip_max_rate: float = 500.0      # gossip messages/s this node publishes at most (pacing)
    gossip_publish_queue: int = 256     # publishes queued before publish() waits (backpressure)
    gossip_handler_queue: int = 256     # arrived messages queued per topic, fair per relayer
    gossip_ring: int = 1024             # own recent messages per topic kept for pulls
    gossip_relay_cache: int = 4096      # others' recent messages kept for pulls
    gossip_pull_delay: float = 0.3      # seconds a gap may heal by itself before it is pulled
    gossip_backfill: int = 64           # earlier messages pulled when an origin is first seen
    gossip_window: int = 256            # seqs an origin may lag; a longer jump resyncs (no pulls)
    gossip_origins: int = 8192          # (topic, origin) pairs the gap tracker holds in total
    gossip_origins_per_peer: int = 1024  # ... charged to the one peer that relayed them
    gossip_missing: int = 16384         # missing seqs awaiting a pull, in total
    gossip_missing_per_peer: int = 2048  # ... charged to one relaying peer
    gossip_pulls: int = 64              # gap pulls in flight, in total
    gossip_pulls_per_peer: int = 16     # ... charged to one relaying peer
    max_frame: int = 4194304            # bytes of one stream frame unless a role asks otherwise
    ping_interval: float = 20.0         # seconds between pings of one peer (jittered +-25 %)
    ping_timeout: float = 10.0          # seconds one ping may take before it counts as failed
    ping_failures: int = 3              # failed pings in a row before a peer is unresponsive
    dht_records_per_peer: int = 256     # DHT records one peer may store here (and providers)
    dht_records_per_namespace: int = 2048   # DHT records per key prefix (/fognode/device)
    dht_max_records: int = 4096         # DHT records held in all (and as many providers)
    dht_max_record_size: int = 16384    # bytes of one DHT record a peer may store here
    # resource limits (node/rcmgr.py): a refused stream or connection is reset at once
    stream_limit_total: int = 512       # inbound streams at once, all peers and protocols
    stream_limit_per_protocol: int = 256    # inbound streams at once on one protocol
    stream_limit_per_peer: int = 64     # inbound streams at once from one peer
    stream_limit_per_peer_protocol: int = 16    # inbound streams at once from one peer on one protocol
    stream_limit_per_subnet: int = 128  # inbound streams at once from one IPv4 /24 or IPv6 /64
    buffer_limit_per_peer: int = 8388608    # bytes of unfinished frames held for one peer (>= max_frame)
    buffer_limit_total: int = 33554432  # bytes of unfinished frames held for all peers
    conn_limit_per_peer: int = 2        # connections at once to one peer
    conn_limit_per_subnet: int = 16     # connections at once from one IPv4 /24 or IPv6 /64
    subnet_limit_exempt: list[str] = field(default_factory=lambda: list(DEFAULT_EXEMPT))  # CIDRs no subnet limit applies to
    stream_first_frame_timeout: float = 10.0    # seconds an inbound stream may wait before its first frame
    stream_idle_timeout: float = 300.0  # seconds an inbound stream may stay quiet between whole frames
    stream_progress_timeout: float = 10.0   # seconds a frame that has begun may wait for its next bytes
    stream_min_rate: float = 16384.0    # bytes/s a frame must average: it has progress_timeout + size/rate

    def validate(self) -> None:
        """Raise ConfigError(key="overlay.<key>") naming the first wrong key."""
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(msg, key=f"overlay.{key}")

        if not self.listen:
            raise bad("listen", "at least one listen address is required")
        for a in self.listen:
            _parse_tcp_multiaddr(a, "listen", need_peer=False)
        for a in self.announce:
            _parse_tcp_multiaddr(a, "announce", need_peer=False)
        for a in self.bootstrap:
            _parse_tcp_multiaddr(a, "bootstrap", need_peer=True)
        if self.peers_low < 0:
            raise bad("peers_low", f"must be 0 or more, got {self.peers_low}")
        if self.peers_high < 1:
            raise bad("peers_high", f"must be at least 1, got {self.peers_high}")
        if self.peers_low > self.peers_high:
            raise bad("peers_low", f"{self.peers_low} is above peers_high ({self.peers_high})")
        for key in ("dial_timeout", "dial_backoff", "connmgr_interval", "gossip_heartbeat",
                    "gossip_max_rate"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise bad(key, f"must be a positive number of seconds/rate, got {v!r}")
        if self.dial_backoff_max < self.dial_backoff:
            raise bad("dial_backoff_max", f"{self.dial_backoff_max} is below dial_backoff "
                      f"({self.dial_backoff})")
        if not 0 <= self.gossip_pull_delay <= 60:
            raise bad("gossip_pull_delay", f"must be between 0 and 60 s, got "
                      f"{self.gossip_pull_delay}")
        if self.dial_failures_before_backoff < 1:
            raise bad("dial_failures_before_backoff", "must be at least 1")
        if not 1 <= self.gossip_degree <= 64:
            raise bad("gossip_degree", f"must be between 1 and 64, got {self.gossip_degree}")
        if not 8192 <= self.max_message_size <= MAX_GOSSIP_MESSAGE:
            raise bad("max_message_size", f"must be between 8192 and {MAX_GOSSIP_MESSAGE} bytes "
                      f"(py-libp2p drops larger gossip silently), got {self.max_message_size}")
        for key in ("gossip_publish_queue", "gossip_handler_queue", "gossip_ring",
                    "gossip_relay_cache"):
            if getattr(self, key) < 1:
                raise bad(key, f"must be at least 1, got {getattr(self, key)}")
        if not 1 <= self.gossip_window <= 512:
            raise bad("gossip_window", f"must be between 1 and 512, got {self.gossip_window}")
        if not 0 <= self.gossip_backfill < self.gossip_window:
            raise bad("gossip_backfill", f"must be 0 or more and below gossip_window "
                      f"({self.gossip_window}), got {self.gossip_backfill}")
        for what in ("origins", "missing", "pulls"):
            total, per_peer = getattr(self, f"gossip_{what}"), getattr(self, f"gossip_{what}_per_peer")
            if not 1 <= per_peer <= total:
                raise bad(f"gossip_{what}_per_peer", f"must be between 1 and gossip_{what} "
                          f"({total}), got {per_peer}")
        if not 1024 <= self.max_frame <= 256 * 1024 * 1024:
            raise bad("max_frame", f"must be between 1 KiB and 256 MiB, got {self.max_frame}")
        PingSettings.from_overlay(self).validate()
        DhtLimits.from_overlay(self).validate()
        limits_from(self)   # the resource limits and stream deadlines (node/rcmgr.py)


def _parse_tcp_multiaddr(text: str, key: str, *, need_peer: bool) -> multiaddr.Multiaddr:
    where = f"overlay.{key}"
    try:
        ma = multiaddr.Multiaddr(text)
    except Exception as e:
        raise ConfigError(f"{text!r} is not a valid multiaddr ({e})", key=where) from None
    protos = [p.name for p in ma.protocols()]
    if not protos or protos[0] not in ("ip4", "ip6", "dns", "dns4", "dns6") or "tcp" not in protos:
        raise ConfigError(f"{text!r} must be /ip4|/ip6|/dns/<host>/tcp/<port>", key=where)
    port = int(ma.value_for_protocol("tcp"))
    if not 0 <= port <= 65535:
        raise ConfigError(f"{text!r}: port {port} is out of range 0-65535", key=where)
    if need_peer:
        if "p2p" not in protos:
            raise ConfigError(f"{text!r} must end in /p2p/<peer-id>", key=where)
        if port == 0:
            raise ConfigError(f"{text!r}: a peer to dial needs a real port, not 0", key=where)
        try:
            from libp2p.peer.id import ID
            ID.from_base58(ma.value_for_protocol("p2p"))
        except Exception:
            raise ConfigError(f"{text!r}: bad peer id", key=where) from None
    return ma


# ---------------------------------------------------------------------------------------------
# Identity helpers

def peer_id_from_pubkey(pub: bytes) -> str:
    """The libp2p peer id (base58) of an Ed25519 public key (32 bytes); ValueError otherwise.
    (node/peerid.py computes it without libp2p; tests/node/test_host.py checks they agree.)"""
    return _peerid.peer_id_from_pubkey(pub)


def pubkey_from_peer_id(pid: str) -> bytes:
    """The Ed25519 public key embedded in a peer id. ValueError if it holds none."""
    return _peerid.pubkey_from_peer_id(pid)


def quiet_libp2p_loggers() -> None:
    """Bite 15: py-libp2p logs a lot at INFO/WARNING (bite 9: the DHT warns on every normal
    stream close; the swarm's auto-connector forces INFO). Operators should see ours."""
    logging.getLogger("libp2p").setLevel(logging.WARNING)
    for name in ("libp2p.kad_dht", "libp2p.network.auto_connector", "libp2p.host.basic_host",
                 "libp2p.network.swarm", "libp2p.pubsub", "libp2p.identity",
                 "libp2p.host.autonat", "libp2p.stream_muxer", "libp2p.transport",
                 "libp2p.security", "libp2p.protocol_muxer", "libp2p.network"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # an ordinary failed dial is logged at ERROR here; we report it ourselves as a DialError
    # and a peer going away mid-handshake is logged at ERROR by these; it is reported to the
    # caller as DialError / StreamClosed instead
    for name in ("libp2p.transport.tcp", "libp2p.protocol_muxer", "libp2p.host.basic_host",
                 "libp2p.network.swarm", "libp2p.transport.upgrader",
                 "libp2p.stream_muxer"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # what peers send wrong, logged by py-libp2p at ERROR per message: rate-limited WARNINGs
    limit_libp2p_errors()


def interface_addrs(ma: multiaddr.Multiaddr) -> list[multiaddr.Multiaddr]:
    """Expand a wildcard listen address (0.0.0.0 / ::) into one per real interface address,
    loopback last; other addresses are returned as they are."""
    protos = [p.name for p in ma.protocols()]
    fam = protos[0] if protos else ""
    if fam not in ("ip4", "ip6"):
        return [ma]
    ip = ma.value_for_protocol(fam)
    if ip not in ("0.0.0.0", "::"):
        return [ma]
    rest = str(ma)[len(f"/{fam}/{ip}"):]
    found: list[tuple[bool, str]] = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            host = a.address.split("%", 1)[0]
            try:
                parsed = ipaddress.ip_address(host)
            except ValueError:
                continue
            if (fam == "ip4") != (parsed.version == 4) or parsed.is_link_local:
                continue
            found.append((parsed.is_loopback, f"/{fam}/{host}{rest}"))
    found.sort(key=lambda t: t[0])
    out = [multiaddr.Multiaddr(s) for _, s in dict.fromkeys(found)]
    return out or [ma]


# ---------------------------------------------------------------------------------------------
# The overlay

class _Notifee:
    """Connection events from the swarm -> our bookkeeping (events, metrics, DHT, connmgr)."""

    def __init__(self, overlay: "Libp2pOverlay") -> None:
        self.o = overlay

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def connected(self, network: Any, conn: Any) -> None:
        if not self.o.resources.admit_connection(conn):   # over its peer's or subnet's limit
            await conn.close()
            return
        self.o._on_connected(conn)

    async def disconnected(self, network: Any, conn: Any) -> None:
        self.o.resources.connection_closed(conn)
        self.o._on_disconnected(conn)

    async def listen(self, network: Any, ma: Any) -> None:
        pass

    async def listen_close(self, network: Any, ma: Any) -> None:
        pass


class Libp2pOverlay:
    """`Overlay` (node/overlay.py) on py-libp2p. Built only by `open_overlay`."""

    def __init__(self, config: OverlayConfig, identity: SigningKey, events: EventBus,
                 metrics: CollectorRegistry) -> None:
        from libp2p import create_identity_from_seed, new_host
        from libp2p.crypto.x25519 import create_new_key_pair as x25519
        from libp2p.custom_types import TProtocol
        from libp2p.network.config import ConnectionConfig
        from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12
        from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
        from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID

        self.config = config
        self.identity = identity
        self.events = events
        self.metrics = metrics
        self._adv_cache: tuple[tuple[str, ...], float, list[multiaddr.Multiaddr]] | None = None
        kp = create_identity_from_seed(bytes(identity))
        p2pfix_yamux.install()      # QuickYamux for BufferingNoise connections (issue 16)
        p2pfix_netstream.install()  # and their streams' state locks
        p2pfix_tasks.install()      # a new task's parent found without a scan (issue 10)
        hard_cap = config.peers_high * 4 + 64
        self.host = new_host(
            key_pair=kp,
            # bite 1; BufferingNoise: node/p2pfix_tcpio.py (buffered TCP reads, issue 16)
            sec_opt={NOISE_ID: BufferingNoise(kp, noise_privkey=x25519().private_key)},
            # py-libp2p ignores the class given here for yamux: node/p2pfix_yamux.py
            muxer_opt={TProtocol(YAMUX_ID): QuickYamux},
            # identify must advertise real interface addresses, never 0.0.0.0 (peers on other
            # machines dial what we advertise); `announce` overrides them
            addrs_factory=self._advertised,
            connection_config=ConnectionConfig(
                max_connections_per_peer=1,                                       # bite 4
                dial_timeout=config.dial_timeout,
                # our connmgr decides: the swarm's auto-connector never dials (low 0) and its
                # pruner only acts at a hard cap far above peers_high
                min_connections=0, low_watermark=0,
                high_watermark=hard_cap, max_connections=hard_cap),
        )
        self.peer_id = self.host.get_id().to_base58()
        self.peer_records = p2pfix_records.enroll(self.host)   # records verified once (issue 16)
        p2pfix_multistream.install(self.host)      # protocol proposed with the header (issue 16)
        self._app_scores: dict[str, float] = {}
        # peer score: node/peerscore.py (the parameters and why), node/scored_pubsub.py
        self.score_params = PeerScoreParams()
        self.violations = ViolationBook(half_life=self.score_params.violation_half_life,
                                        cap=self.score_params.violation_cap)
        self.faults = RemoteFaults(metrics, self._charge, log=log)
        self.gossipsub = ScoredGossipSub(
            peer_score=self.score_params, app_score=self._score_of_id,
            count=score_actions(metrics),
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11], degree=config.gossip_degree,
            degree_low=max(1, config.gossip_degree - 2), degree_high=config.gossip_degree * 2,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=config.gossip_heartbeat,  # bite 5
            spam_protection_enabled=False)                                          # bite 5
        self.pubsub = ScoredPubsub(self.host, self.gossipsub, strict_signing=True,
                                   max_inbound_rpc_size=config.max_message_size)
        # the DHT logs and counts its own refusals (node/dht.py): charge the peer, no second line
        self.dht = FognodeKadDHT(self.host, DhtLimits.from_overlay(config), metrics,  # 9, 17
                                 lambda peer, _why: self._charge(peer))
        self.pinger = Pinger(PingSettings.from_overlay(config),                        # bite 18
                             lambda peer: libp2p_ping(self.host, peer), metrics,
                             on_unresponsive=self._on_unresponsive)
        self.gossip = GossipLayer(
            self.pubsub, identity, metrics=metrics, peer_id_of=peer_id_from_pubkey,
            open_stream=self.open_stream, self_peer_id=self.peer_id,
            is_connected=lambda p: p in self._connected_since, dialable=self._has_address,
            settings=GossipSettings(
                max_message_size=config.max_message_size, max_rate=config.gossip_max_rate,
                publish_queue=config.gossip_publish_queue,
                handler_queue=config.gossip_handler_queue, ring_size=config.gossip_ring,
                relay_cache=config.gossip_relay_cache, pull_delay=config.gossip_pull_delay,
                pull_timeout=min(5.0, config.dial_timeout), backfill=config.gossip_backfill,
                head_interval=max(0.5, config.gossip_heartbeat), window=config.gossip_window,
                max_origins=config.gossip_origins, max_missing=config.gossip_missing,
                max_pulls=config.gossip_pulls, max_origins_per_peer=config.gossip_origins_per_peer,
                max_missing_per_peer=config.gossip_missing_per_peer,
                max_pulls_per_peer=config.gossip_pulls_per_peer),
            penalize=lambda peer, reason: self.penalize(peer, reason))
        self.pubsub.set_admission(self.gossip.admit)        # before signature checks
        self.backoff = DialBackoff(failures_before_backoff=config.dial_failures_before_backoff,
                                   backoff=config.dial_backoff, backoff_max=config.dial_backoff_max)
        self._connected_since: dict[str, float] = {}
        self._direction: dict[str, str] = {}
        self._address: dict[str, str] = {}
        self._protected: set[str] = set()
        self._dialing: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self.connmgr = ConnectionManager(
            ConnectionPolicy(low=config.peers_low, high=config.peers_high), self.backoff,
            connected=lambda: dict(self._connected_since), candidates=self._candidates,
            scores=lambda: {p: self._score(p) for p in
                            set(self._connected_since) | set(self._app_scores)},
            protected=lambda: frozenset(self._protected), dial=self._dial_known,
            trim=self.disconnect, discover=self._discover, interval=config.connmgr_interval,
            unresponsive=self.pinger.tracker.unresponsive)

        self.m_peers = Gauge("fognode_node_peers", "Connected peers", registry=metrics)
        self.m_dials = Counter("fognode_node_dials_total", "Outbound dials by outcome",
                               ["outcome"], registry=metrics)
        self.m_remote_errors = self.faults.counter
        self.resources = ResourceGate(*limits_from(config), metrics)
        self.host.get_network().register_notifee(_Notifee(self))  # type: ignore[arg-type]
        self.set_stream_handler(PULL_PROTOCOL, self.gossip.serve_pull)

    def _on_unresponsive(self, peer: str) -> None:
        """A peer stopped answering pings: the connection manager closes its connection now."""
        self.connmgr.wake()

    # -- scores -----------------------------------------------------------------------------

    def set_app_score(self, peer_id: str, score: float) -> None:
        """The registry's reputation: part of GossipSub's application-specific score (P6,
        node/peerscore.py) and of the connection manager's trimming order."""
        if not math.isfinite(score):
            raise LocalProtocolError(f"app score for {peer_id} must be finite, got {score}")
        self._app_scores[peer_id] = float(score)

    def _score(self, peer_id: str) -> float:
        """P6: reputation minus protocol violations (peerscore.app_score)."""
        return app_score(self.score_params, self._app_scores.get(peer_id, 0.0),
                         self.violations.value(peer_id, time.monotonic()))

    def _score_of_id(self, peer: Any) -> float:
        return self._score(str(peer))

    def gossip_score(self, peer_id: str) -> float:
        """The peer's whole GossipSub score (node/peerscore.py), as the router sees it."""
        from libp2p.peer.id import ID
        pid = ID.from_base58(peer_id)
        self.gossipsub.scorer.invalidate(peer_id)
        return self.gossipsub.scorer.score(pid, [])

    def penalize(self, peer_id: str, reason: str, *, protocol: str = "") -> None:
        """A role saw `peer_id` break `protocol` (a stream id or topic): a rate-limited
        WARNING, fognode_node_remote_protocol_errors_total and one violation charged."""
        self.faults.report(peer_id, protocol or "role", reason)

    def _charge(self, peer_id: str) -> None:
        self.violations.add(peer_id, time.monotonic())
        self.gossipsub.scorer.invalidate(peer_id)

    # -- addresses and peers ----------------------------------------------------------------

    def _advertised(self, candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        # py-libp2p calls this for every pubsub RPC (it signs a peer record each time), so the
        # interface lookup is cached for a few seconds
        key = tuple(str(c) for c in candidates)
        now = time.monotonic()
        if self._adv_cache is not None and self._adv_cache[0] == key and \
                now - self._adv_cache[1] < 10.0:
            return self._adv_cache[2]
        if self.config.announce:
            out = [multiaddr.Multiaddr(a.split("/p2p/")[0]) for a in self.config.announce]
        else:
            out = []
            for ma in candidates:
                out.extend(interface_addrs(ma))
            out = list({str(m): m for m in out}.values())
        self._adv_cache = (key, now, out)
        return out

    def listen_addrs(self) -> list[str]:
        """Full multiaddrs with /p2p/<id>: `announce` if configured, else every real interface
        address of each listener (a 0.0.0.0 listener is expanded; port 0 shows the real port)."""
        suffix = f"/p2p/{self.peer_id}"
        return [str(m) + suffix for m in self._advertised(self.host.get_transport_addrs())]

    def peers(self) -> list[PeerInfo]:
        ps = self.host.get_peerstore()
        out = []
        for pid in self.host.get_connected_peers():
            p = pid.to_base58()
            try:
                addrs = tuple(str(a) for a in ps.addrs(pid))
            except Exception:
                addrs = ()
            if not addrs and p in self._address:
                addrs = (self._address[p],)
            lat = self.pinger.latency(p)
            out.append(PeerInfo(peer_id=p, addrs=addrs, connected=True,
                                direction=self._direction.get(p, ""),
                                latency_ms=None if lat is None else round(lat * 1000.0, 3)))
        return out

    def latency(self, peer_id: str) -> float | None:
        """Smoothed ping round trip to a connected peer in seconds; None before the first."""
        return self.pinger.latency(peer_id)

    def _on_connected(self, conn: Any) -> None:
        pid = str(conn.muxed_conn.peer_id)
        if pid in self._connected_since:
            return
        self._connected_since[pid] = trio.current_time()
        d = getattr(getattr(conn, "direction", None), "name", "").lower()
        self._direction[pid] = d if d in ("inbound", "outbound") else ""
        try:
            addr = str(conn.get_transport_addresses()[0])
        except Exception:
            addr = ""
        self._address[pid] = addr
        self.m_peers.set(len(self._connected_since))
        self.backoff.record_success(pid)
        self.events.publish(PeerConnected(peer_id=pid, address=addr))
        self.pinger.connected(pid)
        if self._nursery is not None:
            self._nursery.start_soon(self._add_to_routing_table, conn.muxed_conn.peer_id)

    def _on_disconnected(self, conn: Any) -> None:
        peer = conn.muxed_conn.peer_id
        pid = str(peer)
        if self.host.get_network().get_connections(peer):
            return       # another connection to the peer is still up
        if self._connected_since.pop(pid, None) is None:
            return
        self._direction.pop(pid, None)
        self._address.pop(pid, None)
        self.m_peers.set(len(self._connected_since))
        self.events.publish(PeerDisconnected(peer_id=pid))
        self.pinger.disconnected(pid)
        self.connmgr.wake()

    async def _add_to_routing_table(self, peer: Any) -> None:
        """Bite 9: py-libp2p does not put connected peers into the DHT routing table. The
        peer's listen addresses arrive with identify, so retry briefly until they do."""
        for delay in (0.0, 0.2, 0.5, 1.0, 2.0, 4.0):
            await trio.sleep(delay)
            if str(peer) not in self._connected_since:
                return
            try:
                if await self.dht.add_peer(peer):
                    return
            except Exception as e:  # the routing table may ping and fail; try again
                log.debug("DHT add_peer %s: %s: %s", peer, type(e).__name__, e)

    def _candidates(self) -> list[str]:
        rt = [p.to_base58() for p in self.dht.routing_table.get_peer_ids()]
        ps = [p.to_base58() for p in self.host.get_peerstore().peers_with_addrs()]
        return [p for p in dict.fromkeys(rt + ps) if p != self.peer_id and p not in self._dialing]

    async def _discover(self) -> None:
        with trio.move_on_after(self.config.dial_timeout * 2):
            await self.dht.peer_routing.find_closest_peers_network(self.host.get_id().to_bytes())

    # -- dialling ---------------------------------------------------------------------------

    async def _dial(self, target: str, peer_info: Any) -> None:
        """Dial under the dial timeout (bite 14) through the circuit breaker. Raises
        DialBackoffError without dialling when the breaker is open, DialError on failure."""
        now = trio.current_time()
        self.backoff.check(target, now)
        # py-libp2p keeps its own 60 s negative cache after a failed dial, which would turn
        # our first retries into instant failures: our breaker is the one that decides.
        neg = getattr(self.host.get_network(), "_negative_peer_cache", None)
        if neg is not None:
            neg.evict(peer_info.peer_id)
        self._dialing.add(target)
        try:
            with trio.fail_after(self.config.dial_timeout):
                await self.host.connect(peer_info)
        except trio.TooSlowError:
            self.backoff.record_failure(target, trio.current_time())
            self.m_dials.labels("timeout").inc()
            raise DialError(f"dial {target}: no connection within {self.config.dial_timeout} s"
                            ) from None
        except Exception as e:
            self.backoff.record_failure(target, trio.current_time())
            self.m_dials.labels("failure").inc()
            raise DialError(f"dial {target}: {type(e).__name__}: {e}") from None
        finally:
            self._dialing.discard(target)
        self.backoff.record_success(target)
        self.m_dials.labels("success").inc()

    async def connect(self, multiaddr_text: str) -> str:
        """Dial a multiaddr ending in /p2p/<peer-id>; returns the peer id. Raises ConfigError-
        free errors: LocalProtocolError for a malformed address, DialBackoffError while the
        peer is backed off, DialError when the dial fails or times out (dial_timeout)."""
        from libp2p.peer.peerinfo import info_from_p2p_addr
        try:
            ma = multiaddr.Multiaddr(multiaddr_text)
            info = info_from_p2p_addr(ma)
        except Exception as e:
            raise LocalProtocolError(f"{multiaddr_text!r} is not a multiaddr ending in "
                                     f"/p2p/<peer-id> ({e})") from None
        pid = info.peer_id.to_base58()
        if pid == self.peer_id:
            raise LocalProtocolError(f"{multiaddr_text!r} is this node itself")
        self._protected.add(pid)
        await self._dial(pid, info)
        return pid

    async def _dial_known(self, peer_id: str) -> None:
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo
        pid = ID.from_base58(peer_id)
        try:
            addrs = self.host.get_peerstore().addrs(pid)
        except Exception:
            addrs = []
        if not addrs:
            with trio.move_on_after(self.config.dial_timeout):
                found = await self.dht.find_peer(pid)
                addrs = list(found.addrs) if found is not None else []
        if not addrs:
            self.backoff.record_failure(peer_id, trio.current_time())
            raise DialError(f"no address known for {peer_id}")
        await self._dial(peer_id, Libp2pPeerInfo(pid, addrs))

    def _has_address(self, peer_id: str) -> bool:
        from libp2p.peer.id import ID
        try:
            return bool(self.host.get_peerstore().addrs(ID.from_base58(peer_id)))
        except Exception:  # unknown peer (PeerStoreError) or not a peer id
            return False

    async def disconnect(self, peer_id: str) -> None:
        from libp2p.peer.id import ID
        self._protected.discard(peer_id)
        try:
            await self.host.disconnect(ID.from_base58(peer_id))
        except Exception as e:  # already gone
            log.debug("disconnect %s: %s", peer_id, e)

    # -- streams ----------------------------------------------------------------------------

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        """Register a handler; it runs inside streams.guard_handler (bite 2)."""
        from libp2p.custom_types import TProtocol
        self.host.set_stream_handler(
            TProtocol(protocol_id),
            guard_handler(protocol_id, handler, max_frame=self.config.max_frame,
                          on_remote_error=lambda peer, err: self._on_remote_error(
                              protocol_id, peer, err),
                          gate=self.resources))

    def _on_remote_error(self, protocol_id: str, peer: str, err: RemoteProtocolError) -> None:
        self.faults.report(peer, protocol_id, f"{err}; stream reset")

    def _libp2p_fault(self, protocol: str) -> Callable[[str, Exception], bool]:
        """For streams.guard_raw: an exception out of libp2p's own handler for `protocol` that
        is the peer's fault (bytes that do not parse) is reported, counted and charged."""
        def on_error(peer: str, e: Exception) -> bool:
            if not is_remote_fault(e):
                return False
            self.faults.report(peer, protocol, f"{type(e).__name__}: {e}; stream reset")
            return True
        return on_error

    async def open_stream(self, peer_id: str, protocol_id: str) -> FramedStream:
        """Open a framed stream, dialling the peer if needed (under dial_timeout). Raises
        DialError/DialBackoffError when the peer cannot be reached, LocalProtocolError when it
        does not speak `protocol_id`."""
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID
        pid = ID.from_base58(peer_id)
        if pid not in self.host.get_network().connections:
            await self._dial_known(peer_id)
        try:
            with trio.fail_after(self.config.dial_timeout):
                raw = await self.host.new_stream(pid, [TProtocol(protocol_id)])
        except trio.TooSlowError:
            raise DialError(f"opening {protocol_id} to {peer_id} timed out") from None
        except Exception as e:
            raise DialError(f"opening {protocol_id} to {peer_id} failed: {type(e).__name__}: "
                            f"{e}") from None
        return Libp2pFramedStream(raw, max_frame=self.config.max_frame, gate=self.resources)

    # -- gossip -----------------------------------------------------------------------------

    async def subscribe(self, topic: str, handler: GossipHandler) -> None:
        await self.gossip.subscribe(topic, handler)

    async def publish(self, topic: str, data: bytes) -> None:
        await self.gossip.publish(topic, data)

    # -- DHT --------------------------------------------------------------------------------

    def register_dht_validator(self, namespace: str, validator: DhtValidator) -> None:
        """Records under /<namespace>/ are validated by `validator` (strict validation: keys of
        unregistered namespaces are refused)."""
        from libp2p.records.validator import Validator

        class _Adapter(Validator):
            def validate(self, key: str, value: bytes) -> None:
                validator.validate(key, value)

            def select(self, key: str, values: list[bytes]) -> int:
                return validator.select(key, values)

        self.dht.register_validator(namespace, _Adapter())

    async def dht_put(self, key: str, value: bytes) -> None:
        with trio.fail_after(self.config.dial_timeout * 3):
            await self.dht.put_value(key, value)

    async def dht_get(self, key: str) -> bytes | None:
        with trio.fail_after(self.config.dial_timeout * 3):
            return await self.dht.get_value(key)

    async def dht_provide(self, key: str) -> None:
        with trio.fail_after(self.config.dial_timeout * 3):
            await self.dht.provide(key)

    async def dht_find_providers(self, key: str) -> list[str]:
        with trio.fail_after(self.config.dial_timeout * 3):
            found = await self.dht.find_providers(key)
        return [p.peer_id.to_base58() for p in found]

    # -- lifecycle helpers --------------------------------------------------------------------

    def _harden_handlers(self) -> None:
        """Bite 2 for libp2p's own handlers (pubsub, DHT, identify, ping): wrap each so an
        exception resets the stream instead of reaching the host; each stream takes a
        resource-manager slot first."""
        mux = self.host.get_mux()
        for proto, fn in list(mux.handlers.items()):
            if proto is None or fn is None or getattr(fn, "_fognode_guarded", False):
                continue
            mux.handlers[proto] = guard_raw(str(proto), fn, gate=self.resources,
                                            on_error=self._libp2p_fault(str(proto)))

    async def _reannounce_subscriptions(self) -> None:
        """Bite 16: py-libp2p's pubsub sends a peer our subscriptions once, in the hello it
        builds when their stream opens, and later ones in a broadcast to the peers registered
        then. A subscription made while the stream opens falls between the two and that peer
        never learns it: no message of that topic goes to it (seen between two fresh nodes).
        Receivers keep subscriptions as sets, so announcing them again is harmless."""
        interval = max(1.0, 5 * self.config.gossip_heartbeat)
        while True:
            await trio.sleep(interval)
            hello = self.pubsub.get_hello_packet()
            if hello.subscriptions and self.pubsub.peers:
                await self.pubsub.message_all_peers(hello.SerializeToString())

    async def _close_connections(self) -> None:
        """Close every connection concurrently: the swarm closes them one by one, each with a
        100 ms sleep, which made shutting down with 32 peers take over 3 s."""
        async def one(conn: Any) -> None:
            try:
                await conn.close()
            except Exception:   # already broken: nothing to release
                pass

        conns = [c for cs in list(self.host.get_network().connections.values()) for c in cs]
        async with trio.open_nursery() as n:
            for c in conns:
                n.start_soon(one, c)

    async def _bootstrap(self) -> None:
        async def one(addr: str) -> None:
            from libp2p.peer.peerinfo import info_from_p2p_addr
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            self.host.get_peerstore().add_addrs(info.peer_id, info.addrs, 10**8)
            try:
                await self._dial(info.peer_id.to_base58(), info)
            except DialError as e:
                log.warning("bootstrap peer %s: %s", addr, e)

        async with trio.open_nursery() as n:
            for a in self.config.bootstrap:
                n.start_soon(one, a)
        self.connmgr.wake()


def _check_ports_free(listen: list[str]) -> None:
    """Fail early and plainly when a fixed listen port is taken (inside py-libp2p the error
    arrives wrapped in several ExceptionGroups)."""
    import socket
    for text in listen:
        ma = multiaddr.Multiaddr(text)
        protos = [p.name for p in ma.protocols()]
        if protos[0] not in ("ip4", "ip6") or int(ma.value_for_protocol("tcp")) == 0:
            continue
        fam = socket.AF_INET if protos[0] == "ip4" else socket.AF_INET6
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ma.value_for_protocol(protos[0]), int(ma.value_for_protocol("tcp"))))
        except OSError as e:
            raise OSError(e.errno, f"overlay.listen: cannot listen on {text}: {e.strerror}"
                          ) from None
        finally:
            sock.close()


@asynccontextmanager
async def open_overlay(config: OverlayConfig, identity: SigningKey, events: EventBus,
                       metrics: CollectorRegistry) -> AsyncIterator[Libp2pOverlay]:
    """Start the host, Pubsub, GossipSub, Kademlia and the connection manager; yield once
    listening (bootstrap dials run in the background). On exit the host is closed FIRST, then
    the services (bite 8). Raises ConfigError for a bad config, OSError if a listen address
    cannot be bound."""
    from libp2p.tools.anyio_service import background_trio_service

    config.validate()
    _check_ports_free(config.listen)
    quiet_libp2p_loggers()
    ov = Libp2pOverlay(config, identity, events, metrics)
    listen = [multiaddr.Multiaddr(a) for a in config.listen]
    async with ov.host.run(listen):
        if not ov.host.get_transport_addrs():
            raise OSError(f"could not listen on any of {config.listen}")
        async with background_trio_service(ov.pubsub), background_trio_service(ov.gossipsub), \
                background_trio_service(ov.dht):
            try:
                async with trio.open_nursery() as nursery:
                    ov._nursery = nursery
                    ov._harden_handlers()
                    await nursery.start(ov.gossip.run)
                    nursery.start_soon(ov.connmgr.run)
                    nursery.start_soon(ov._reannounce_subscriptions)
                    nursery.start_soon(ov.pinger.run)
                    nursery.start_soon(ov._bootstrap)
                    try:
                        yield ov
                    finally:
                        nursery.cancel_scope.cancel()
            finally:
                ov._nursery = None
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await ov._close_connections()
                    await ov.host.close()    # bite 8: host first, then the services


__all__ = ["OverlayConfig", "Libp2pOverlay", "open_overlay", "peer_id_from_pubkey",
           "pubkey_from_peer_id", "interface_addrs", "quiet_libp2p_loggers", "DialError",
           "DialBackoffError"]
