"""What roles may use of the libp2p overlay: the contract between roles and node/host.py.

Roles never touch py-libp2p directly; they get an `Overlay` through `NodeContext.overlay`.
Every workaround for py-libp2p 0.8.1 lives behind this interface (node/host.py, node/streams.py,
node/gossip.py), so a role sees framed streams, paced signed gossip and a DHT with namespace
validators, and nothing that can kill the host.

Ids: peers are base58 peer-id strings; stream protocol ids are `/fognode/<role>/<semver>`;
gossip topics are `fognode/<role>/<topic>/<v>`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol as TypingProtocol, Sequence


@dataclass(frozen=True)
class PeerInfo:
    """A connected peer; `latency_ms` is the smoothed ping RTT (None before the first)."""

    peer_id: str
    addrs: tuple[str, ...]
    connected: bool
    direction: str  # "inbound" | "outbound" | ""
    latency_ms: float | None


@dataclass(frozen=True)
class GossipMessage:
    """One message received on a topic. `origin` is the signer (libp2p strict signing)."""

    topic: str
    origin: str
    data: bytes
    received_from: str


class FramedStream(TypingProtocol):
    """A libp2p stream carrying length-prefixed frames (u32 big-endian length, then bytes).

    `recv*` raise StreamClosed at EOF/reset and RemoteProtocolError for an oversize frame or
    bad msgpack. `send*`/`recv*` are cancellable; callers put deadlines with trio.fail_after.
    `close` and `reset` never raise and are not cut by the caller's cancellation: each runs
    shielded for at most a bounded time (node/p2pfix_yamux.py END_BOUND), so a `finally:` of a
    timed-out or cancelled scope calls them plainly, without a shield or a deadline of its
    own, and sees its cancellation at its next checkpoint.
    """

    remote_peer: str
    protocol_id: str

    async def send(self, obj: Any) -> None: ...              # canonical msgpack frame
    async def recv(self, *, max_size: int = ...) -> Any: ...  # one msgpack frame, validated size
    async def send_bytes(self, data: bytes) -> None: ...
    async def recv_bytes(self, *, max_size: int = ...) -> bytes: ...
    async def close(self) -> None: ...                       # half-close our side, then free
    async def reset(self) -> None: ...


StreamHandler = Callable[[FramedStream], Awaitable[None]]
GossipHandler = Callable[[GossipMessage], Awaitable[None]]
# Run on a topic's message before it is relayed or handled (also on a pulled one): False
# refuses it (not relayed, not delivered; GossipSub counts it against the peer that relayed
# it). The check charges whom it blames itself (Overlay.penalize).
GossipCheck = Callable[[GossipMessage], bool]


class DhtValidator(TypingProtocol):
    """Validates values under one DHT namespace (`/<namespace>/...`)."""

    def validate(self, key: str, value: bytes) -> None: ...      # raise ValueError if bad
    def select(self, key: str, values: Sequence[bytes]) -> int: ...  # index of the best value


class Overlay(TypingProtocol):
    peer_id: str

    def listen_addrs(self) -> list[str]: ...                 # full multiaddrs with /p2p/<id>
    def peers(self) -> list[PeerInfo]: ...
    def peer_count(self) -> int: ...                         # len(peers()), without building them
    # smoothed libp2p-ping round trip to a connected peer, seconds (node/ping.py: every
    # overlay.ping_interval); None before the first answer. For latency-aware choices
    # (market matching, onion paths).
    def latency(self, peer_id: str) -> float | None: ...
    async def connect(self, multiaddr: str) -> str: ...       # returns the peer id; timeout inside
    async def disconnect(self, peer_id: str) -> None: ...

    # streams
    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None: ...
    async def open_stream(self, peer_id: str, protocol_id: str) -> FramedStream: ...

    # gossip (signed by the origin's peer key; paced; a dedicated consumer per subscription).
    # Messages this node published are not delivered back to it; delivery may be out of order;
    # a missed message is pulled. Subscribing again to a topic replaces its handler (and its
    # check, when one is given).
    async def subscribe(self, topic: str, handler: GossipHandler, *,
                        check: GossipCheck | None = None) -> None: ...
    async def publish(self, topic: str, data: bytes) -> None: ...

    # DHT (Kademlia on /fognode/kad/1.0.0, node/dht.py; peers' puts are capped per peer,
    # per namespace and in total, node/dhtquota.py)
    def register_dht_validator(self, namespace: str, validator: DhtValidator) -> None: ...
    async def dht_put(self, key: str, value: bytes) -> None: ...
    async def dht_get(self, key: str) -> bytes | None: ...
    async def dht_provide(self, key: str) -> None: ...
    async def dht_find_providers(self, key: str) -> list[str]: ...

    # reputation feedback into GossipSub's application-specific score
    def set_app_score(self, peer_id: str, score: float) -> None: ...
    # a role saw `peer_id` break `protocol` (a stream id or topic; e.g. relay a certificate
    # that fails verification): a rate-limited WARNING, counted, and the same decaying penalty
    # as a RemoteProtocolError in a stream handler (node/faults.py, node/peerscore.py)
    def penalize(self, peer_id: str, reason: str, *, protocol: str = "") -> None: ...
