"""The [overlay] section of node.toml (`OverlayConfig`): listen, announce and bootstrap
addresses, peer counts, dialling, GossipSub, stream, DHT and resource limits, each validated
with a ConfigError naming its key. Built by node/config.py, used by node/host.py."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import multiaddr

from fognode.node.dhtquota import DhtLimits
from fognode.node.errors import ConfigError
from fognode.node.latency import PingSettings
from fognode.node.rcmgr import DEFAULT_EXEMPT, limits_from

MAX_GOSSIP_MESSAGE = 1048576   # py-libp2p (and other implementations) drop RPCs over 1 MiB


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
