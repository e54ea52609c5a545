"""The resource manager's policy core: limits and accounting of what remote peers make us hold.

Sans-IO (no trio, no libp2p; time is never read here): node/resources.py carries its verdicts
out on real streams and connections. In the spirit of go-libp2p's resource manager, every
inbound stream takes a slot from four scopes at once (the system, its protocol, its peer, and
that peer on that protocol) plus the IP subnet of its connection; every byte a framed stream
holds of a frame that has not fully arrived is charged to its peer and to the system, and so is
every byte of Yamux receive window granted beyond a stream's initial 256 KiB (`reserve`: window
growth may use at most a `WINDOW_SHARE` of either budget, as go-yamux reserves window growth from
go-libp2p's memory scope at a low priority, so parked window never starves frames); every
connection takes a slot from its peer and its IP subnet (/24 for IPv4, /64 for IPv6). A
request over any limit is refused with a `Refusal` naming the scope; nothing is queued.
`StreamDeadlines` says how long a framed stream may wait for its next bytes.

Why not py-libp2p 0.8.1's `libp2p.rcmgr`: `new_host` does create one (and its swarm takes a
stream slot per inbound stream from it), but it bounds nothing that matters here. Its stream
limit is one global count (10,000 by default) taken before the protocol is known; the
per-protocol and per-peer stream scopes (`acquire_scoped_stream`) exist but nothing in the
swarm or the muxer calls them; its memory accounting (`acquire_memory`) is called by nobody, so
the partial frames a peer makes us buffer are never charged; and its CIDR limits count
connections only. It also takes a threading lock and rate-limits connections per peer with
a circuit breaker, none of which is sans-IO or testable without a host. So the limits live
here, are enforced in our handler wrappers (streams.guard_handler, host._guard_raw), and
libp2p's own manager is left as it is (its global limit is far above ours).
"""
from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from fognode.node.errors import ConfigError

MIB = 1 << 20

# Addresses whose connections and streams no subnet limit applies to: loopback (devnets on one
# machine) and private LAN ranges, where a fog cluster of phones and boards shares one /24.
DEFAULT_EXEMPT = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                  "fc00::/7"]


WINDOW_SHARE = 0.25   # of each buffer budget that Yamux window growth may hold (see `reserve`)


class Refusal(str, Enum):
    """Why a stream, a connection or a buffer charge was refused (the metric's `reason`)."""

    STREAMS_TOTAL = "streams_total"
    STREAMS_PROTOCOL = "streams_protocol"
    STREAMS_PEER = "streams_peer"
    STREAMS_PEER_PROTOCOL = "streams_peer_protocol"
    STREAMS_SUBNET = "streams_subnet"
    BUFFER_PEER = "buffer_peer"
    BUFFER_TOTAL = "buffer_total"
    WINDOW_CAPPED = "window_capped"   # a Yamux window grew less than asked (`reserve`)
    CONNS_PEER = "conns_peer"
    CONNS_SUBNET = "conns_subnet"


class Wait(str, Enum):
    """What a framed stream is waiting for (the deadline metric's `phase`)."""

    FIRST_FRAME = "first_frame"     # an inbound stream's first byte
    IDLE = "idle"                   # an inbound stream's next frame after a whole one
    PARTIAL_FRAME = "partial_frame"  # the rest of a frame (header or body) that has begun
    SLOW_FRAME = "slow_frame"       # a frame whose bytes come, but slower than the minimum rate


@dataclass(frozen=True)
class ResourceLimits:
    """Every limit, built from the [overlay] section (see `limits_from`)."""

    streams_total: int = 512            # inbound streams at once, all peers and protocols
    streams_per_protocol: int = 256     # inbound streams at once on one protocol
    streams_per_peer: int = 64          # inbound streams at once from one peer
    streams_per_peer_protocol: int = 16  # inbound streams at once from one peer on one protocol
    streams_per_subnet: int = 128       # inbound streams at once from one /24 or /64
    buffer_per_peer: int = 8 * MIB      # bytes of unfinished frames held for one peer
    buffer_total: int = 32 * MIB        # bytes of unfinished frames held for all peers
    conns_per_peer: int = 2             # connections at once to one peer
    conns_per_subnet: int = 16          # connections at once from one /24 or /64
    exempt: tuple[str, ...] = tuple(DEFAULT_EXEMPT)  # CIDRs no subnet limit applies to

    def validate(self, *, max_frame: int) -> None:
        """Raise ConfigError naming the overlay key of the first wrong limit. A peer must be
        able to hold one whole frame of `max_frame` bytes, or no large frame could arrive."""
        for name in ("streams_total", "streams_per_protocol", "streams_per_peer",
                     "streams_per_peer_protocol", "streams_per_subnet", "conns_per_peer",
                     "conns_per_subnet"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be at least 1, got {getattr(self, name)}",
                                  key=f"overlay.{OVERLAY_KEYS[name]}")
        if self.buffer_per_peer < max_frame:
            raise ConfigError(f"{self.buffer_per_peer} is below overlay.max_frame ({max_frame}): "
                              "a peer could never send one whole frame",
                              key="overlay.buffer_limit_per_peer")
        if self.buffer_total < self.buffer_per_peer:
            raise ConfigError(f"{self.buffer_total} is below buffer_limit_per_peer "
                              f"({self.buffer_per_peer})", key="overlay.buffer_limit_total")
        for cidr in self.exempt:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"{cidr!r} is not an IP network (e.g. 192.168.0.0/16)",
                                  key="overlay.subnet_limit_exempt") from None


# ResourceLimits field -> [overlay] key (the operator-facing names)
OVERLAY_KEYS = {
    "streams_total": "stream_limit_total",
    "streams_per_protocol": "stream_limit_per_protocol",
    "streams_per_peer": "stream_limit_per_peer",
    "streams_per_peer_protocol": "stream_limit_per_peer_protocol",
    "streams_per_subnet": "stream_limit_per_subnet",
    "buffer_per_peer": "buffer_limit_per_peer",
    "buffer_total": "buffer_limit_total",
    "conns_per_peer": "conn_limit_per_peer",
    "conns_per_subnet": "conn_limit_per_subnet",
    "exempt": "subnet_limit_exempt",
}


@dataclass(frozen=True)
class StreamDeadlines:
    """How long a framed stream may wait for bytes, in seconds (None: no deadline).

    An inbound stream must start its first frame within `first_frame`; once a frame has
    begun, each further chunk of it must come within `progress` (a partial frame must
    progress: it holds memory); between whole frames an inbound stream may stay quiet for
    `idle` (a long-lived request stream waits there). A frame must also arrive whole within
    `frame_time(length)`: a peer trickling a byte now and then would otherwise hold its
    buffered bytes for ever. Outbound streams are ours: only `progress` and `frame_time` apply
    to them (the role bounds the wait for a reply)."""

    first_frame: float = 10.0
    idle: float = 300.0
    progress: float = 10.0
    min_rate: float = 16384.0   # bytes/s a frame's body must average, after `progress`

    def frame_time(self, length: int) -> float:
        """Seconds a frame body of `length` bytes may take from its header on."""
        return self.progress + length / self.min_rate

    def validate(self) -> None:
        for name, key in (("first_frame", "stream_first_frame_timeout"),
                          ("idle", "stream_idle_timeout"), ("progress", "stream_progress_timeout")):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= 86400):
                raise ConfigError(f"must be a positive number of seconds (at most a day), got "
                                  f"{v!r}", key=f"overlay.{key}")
        if not (math.isfinite(self.min_rate) and self.min_rate >= 1):
            raise ConfigError(f"must be at least 1 byte/s, got {self.min_rate!r}",
                              key="overlay.stream_min_rate")

    def for_read(self, *, inbound: bool, frames_received: int,
                 in_frame: bool) -> tuple[Wait, float] | None:
        """The deadline of the next read: what is awaited and for how long, or None."""
        if in_frame:
            return Wait.PARTIAL_FRAME, self.progress
        if not inbound:
            return None
        if frames_received == 0:
            return Wait.FIRST_FRAME, self.first_frame
        return Wait.IDLE, self.idle


def subnet_of(ip: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) network of `ip`, as text; "" if `ip` is not an address."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


@dataclass
class Usage:
    """What is held right now (for gauges and node.info)."""

    streams: int = 0
    buffered: int = 0
    connections: int = 0


@dataclass
class _Counts:
    streams_peer: dict[str, int] = field(default_factory=dict)
    streams_protocol: dict[str, int] = field(default_factory=dict)
    streams_peer_protocol: dict[tuple[str, str], int] = field(default_factory=dict)
    streams_subnet: dict[str, int] = field(default_factory=dict)
    buffer_peer: dict[str, int] = field(default_factory=dict)
    conns_peer: dict[str, int] = field(default_factory=dict)
    conns_subnet: dict[str, int] = field(default_factory=dict)


def _inc(d: dict[Any, int], k: Any, n: int = 1) -> None:
    d[k] = d.get(k, 0) + n


def _dec(d: dict[Any, int], k: Any, n: int = 1) -> None:
    v = d.get(k, 0) - n
    if v > 0:
        d[k] = v
    else:
        d.pop(k, None)


class ResourceManager:
    """Counts what peers hold and refuses what would go over a limit.

    Every `open_*` that returns None must be paired with one `close_*` of the same arguments;
    `charge`/`uncharge` likewise per byte. A refused request holds nothing."""

    def __init__(self, limits: ResourceLimits) -> None:
        self.limits = limits
        self._exempt = [ipaddress.ip_network(c, strict=False) for c in limits.exempt]
        self._c = _Counts()
        self.usage = Usage()

    def subnet_key(self, ip: str) -> str:
        """The subnet `ip` is counted under; "" when no subnet limit applies (exempt/unknown)."""
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return ""
        if any(addr in net for net in self._exempt):
            return ""
        return subnet_of(ip)

    # -- streams ------------------------------------------------------------------------------

    def open_stream(self, peer: str, protocol: str, subnet: str = "") -> Refusal | None:
        """Take an inbound stream slot for `peer` on `protocol` (from `subnet`, see
        subnet_key). None if taken, else the first scope that is full."""
        lim, c = self.limits, self._c
        if self.usage.streams >= lim.streams_total:
            return Refusal.STREAMS_TOTAL
        if c.streams_peer.get(peer, 0) >= lim.streams_per_peer:
            return Refusal.STREAMS_PEER
        if c.streams_peer_protocol.get((peer, protocol), 0) >= lim.streams_per_peer_protocol:
            return Refusal.STREAMS_PEER_PROTOCOL
        if c.streams_protocol.get(protocol, 0) >= lim.streams_per_protocol:
            return Refusal.STREAMS_PROTOCOL
        if subnet and c.streams_subnet.get(subnet, 0) >= lim.streams_per_subnet:
            return Refusal.STREAMS_SUBNET
        self.usage.streams += 1
        _inc(c.streams_peer, peer)
        _inc(c.streams_peer_protocol, (peer, protocol))
        _inc(c.streams_protocol, protocol)
        if subnet:
            _inc(c.streams_subnet, subnet)
        return None

    def close_stream(self, peer: str, protocol: str, subnet: str = "") -> None:
        """Give back a slot taken by open_stream with the same arguments."""
        c = self._c
        self.usage.streams = max(0, self.usage.streams - 1)
        _dec(c.streams_peer, peer)
        _dec(c.streams_peer_protocol, (peer, protocol))
        _dec(c.streams_protocol, protocol)
        if subnet:
            _dec(c.streams_subnet, subnet)

    def streams_of(self, peer: str, protocol: str | None = None) -> int:
        if protocol is None:
            return self._c.streams_peer.get(peer, 0)
        return self._c.streams_peer_protocol.get((peer, protocol), 0)

    # -- buffered bytes -------------------------------------------------------------------------

    def buffer_room(self, peer: str) -> int:
        """Bytes `peer` may still have us buffer (0 when its or the system's budget is spent)."""
        return max(0, min(self.limits.buffer_per_peer - self._c.buffer_peer.get(peer, 0),
                          self.limits.buffer_total - self.usage.buffered))

    def charge(self, peer: str, n: int) -> Refusal | None:
        """Charge `n` buffered bytes to `peer`; None if within both budgets, else nothing is
        charged and the budget that is spent is named."""
        if n <= 0:
            return None
        if self._c.buffer_peer.get(peer, 0) + n > self.limits.buffer_per_peer:
            return Refusal.BUFFER_PEER
        if self.usage.buffered + n > self.limits.buffer_total:
            return Refusal.BUFFER_TOTAL
        _inc(self._c.buffer_peer, peer, n)
        self.usage.buffered += n
        return None

    def reserve(self, peer: str, n: int, share: float = WINDOW_SHARE) -> int:
        """Charge up to `n` bytes to `peer` such that its charges stay within `share` of its
        budget and all charges within `share` of the total; returns the bytes charged (0..n).
        For Yamux window growth: bytes a peer may send us unasked, so they get a low share."""
        if n <= 0:
            return 0
        room = min(int(self.limits.buffer_per_peer * share) - self._c.buffer_peer.get(peer, 0),
                   int(self.limits.buffer_total * share) - self.usage.buffered)
        granted = max(0, min(n, room))
        if granted:
            _inc(self._c.buffer_peer, peer, granted)
            self.usage.buffered += granted
        return granted

    def uncharge(self, peer: str, n: int) -> None:
        """Give back `n` bytes charged to `peer`."""
        if n <= 0:
            return
        n = min(n, self._c.buffer_peer.get(peer, 0))
        _dec(self._c.buffer_peer, peer, n)
        self.usage.buffered = max(0, self.usage.buffered - n)

    def buffered_by(self, peer: str) -> int:
        return self._c.buffer_peer.get(peer, 0)

    # -- connections ----------------------------------------------------------------------------

    def open_connection(self, peer: str, subnet: str = "") -> Refusal | None:
        """Take a connection slot for `peer` from `subnet` (see subnet_key)."""
        c = self._c
        if c.conns_peer.get(peer, 0) >= self.limits.conns_per_peer:
            return Refusal.CONNS_PEER
        if subnet and c.conns_subnet.get(subnet, 0) >= self.limits.conns_per_subnet:
            return Refusal.CONNS_SUBNET
        _inc(c.conns_peer, peer)
        if subnet:
            _inc(c.conns_subnet, subnet)
        self.usage.connections += 1
        return None

    def close_connection(self, peer: str, subnet: str = "") -> None:
        """Give back a slot taken by open_connection with the same arguments."""
        _dec(self._c.conns_peer, peer)
        if subnet:
            _dec(self._c.conns_subnet, subnet)
        self.usage.connections = max(0, self.usage.connections - 1)


def limits_from(overlay: object) -> tuple[ResourceLimits, StreamDeadlines]:
    """Build and validate the limits and deadlines from an OverlayConfig (node/host.py).
    Raises ConfigError naming the overlay key."""
    kw: dict[str, Any] = {f: getattr(overlay, k) for f, k in OVERLAY_KEYS.items()}
    kw["exempt"] = tuple(kw["exempt"])
    limits = ResourceLimits(**kw)
    limits.validate(max_frame=getattr(overlay, "max_frame"))
    deadlines = StreamDeadlines(first_frame=getattr(overlay, "stream_first_frame_timeout"),
                                idle=getattr(overlay, "stream_idle_timeout"),
                                progress=getattr(overlay, "stream_progress_timeout"),
                                min_rate=getattr(overlay, "stream_min_rate"))
    deadlines.validate()
    return limits, deadlines


__all__ = ["ResourceLimits", "StreamDeadlines", "ResourceManager", "Refusal", "Wait", "Usage",
           "subnet_of", "limits_from", "OVERLAY_KEYS", "DEFAULT_EXEMPT", "MIB", "WINDOW_SHARE"]
