"""Content checks of the registry's gossip, run before a message is relayed (sans-IO).

The gossip layer (node/gossip.py `subscribe(..., check=)`) calls a topic's check on every
message before it is relayed, cached for pulls or handed to the role, pulled ones included. A
message that fails is refused there, and the peer that relayed it to us is charged, not its
origin: the origin may be a throw-away key that no charge reaches, while every node runs the
same check before relaying, so an honest relayer never passes a bad message on.

A check judges content only, never timing or state that can be stale on one node and not on
another (expiry, sequence memory, rate limits, a record we hold): those stay in the core
(core.py), which refuses them without charging anyone. What is checked here:

- devices topic (`decode_device_gossip`): the envelope (version, kind, fields, sizes); for a
  record, the record itself (`record.decode_record`: shape, signature by its key) and that it
  describes the origin (a record travels on gossip only from its own device).
- observations topic (`check_observations`): `observation.decode_observations` (one
  observation or a batch; each one's shape and signature by the observer's key) and that the
  observer of each is the origin.

Every refusal is a `Rejected` whose reason is one an honest peer never causes.
`GossipChecks` binds the two checks to a node: the topic's `check=` callables, which count a
refusal in the registry's rejection metric and charge the relaying peer (`penalize`), and keep
the observations of a batch that passed in `kept` (checked.py) for the role's handler, which
takes them there instead of verifying the batch again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from prometheus_client import Counter

from fognode.node.errors import RemoteProtocolError
from fognode.node.overlay import GossipMessage
from fognode.node.wire import Fields, unpack
from fognode.protocols.registry.checked import CheckedBatches
from fognode.protocols.registry.errors import Rejected, RejectReason
from fognode.protocols.registry.observation import (Observation, decode_observation,
                                                    decode_observations)
from fognode.protocols.registry.record import decode_record

ENVELOPE_VERSION = 1
MAX_ENVELOPE = 8192
KINDS = ("record", "hb", "bye")


@dataclass(frozen=True)
class DeviceGossip:
    """One message of the devices topic: a record, a heartbeat or a goodbye (core.py)."""

    kind: str           # "record" | "hb" | "bye"
    at: int             # the sender's clock, ms
    record: bytes = b""   # kind "record": the signed record, not yet decoded
    seq: int = 0          # kind "hb": the sender's record sequence


def decode_device_gossip(data: bytes, origin: str) -> DeviceGossip:
    """Decode one devices-topic envelope. Raises Rejected(MALFORMED) naming what was wrong."""
    try:
        f = Fields(unpack(data, max_size=MAX_ENVELOPE, what="registry gossip"),
                   "registry gossip", versions={ENVELOPE_VERSION}, peer=origin)
        kind = f.str("t", max_len=16)
        at = f.int("at", lo=0, hi=2**63 - 1)
        if kind == "record":
            g = DeviceGossip(kind, at, record=f.bytes("record", max_len=MAX_ENVELOPE))
        elif kind == "hb":
            g = DeviceGossip(kind, at, seq=f.int("seq", lo=0, hi=2**63 - 1))
        elif kind == "bye":
            g = DeviceGossip(kind, at)
        else:
            raise RemoteProtocolError(f"registry gossip: unknown message type {kind!r} "
                                      f"(one of {', '.join(KINDS)})", peer=origin)
        f.done()
    except Rejected:
        raise
    except RemoteProtocolError as e:
        raise Rejected(RejectReason.MALFORMED, str(e), peer=origin) from None
    return g


def check_device_gossip(data: bytes, origin: str) -> DeviceGossip:
    """The devices topic's content check: the envelope, and a record's signature and subject.
    Returns the decoded envelope; raises Rejected."""
    g = decode_device_gossip(data, origin)
    if g.kind == "record":
        rec = decode_record(g.record, peer=origin)
        if rec.peer_id != origin:
            raise Rejected(RejectReason.WRONG_KEY,
                           f"record of {rec.peer_id} announced on gossip by {origin}", peer=origin)
    return g


def check_observation(data: bytes, origin: str) -> Observation:
    """A message of one signed observation by the origin itself. Returns it; raises Rejected."""
    o = decode_observation(data, peer=origin)
    if o.observer != origin:
        raise Rejected(RejectReason.SPOOFED_ORIGIN,
                       f"observation by {o.observer} relayed as its own by {origin}", peer=origin)
    return o


def check_observations(data: bytes, origin: str) -> list[Observation]:
    """The observations topic's content check: one signed observation or a batch of them
    (observation.py), each by the origin itself. Returns them; raises Rejected."""
    obs = decode_observations(data, peer=origin)
    spoofed = [o.observer for o in obs if o.observer != origin]
    if spoofed:
        raise Rejected(RejectReason.SPOOFED_ORIGIN,
                       f"observation by {spoofed[0]} relayed as its own by {origin}", peer=origin)
    return obs


Penalize = Callable[..., None]      # Overlay.penalize(peer_id, reason, *, protocol=...)


class GossipChecks:
    """The registry topics' `check=` callables for one node. `rejected` is the registry's
    rejection counter (labels what, reason); `penalize` is the overlay's; `kept` receives the
    observations of every observations-topic message that passed."""

    def __init__(self, rejected: Counter, penalize: Penalize, kept: CheckedBatches) -> None:
        self.rejected = rejected
        self.penalize = penalize
        self.kept = kept

    def devices(self, msg: GossipMessage) -> bool:
        return self._run(msg, "gossip", check_device_gossip)

    def observations(self, msg: GossipMessage) -> bool:
        return self._run(msg, "observation", self._keep_observations)

    def _keep_observations(self, data: bytes, origin: str) -> list[Observation]:
        obs = check_observations(data, origin)
        self.kept.put(data, origin, obs)
        return obs

    def _run(self, msg: GossipMessage, what: str, check: Callable[[bytes, str], object]) -> bool:
        try:
            check(msg.data, msg.origin)
        except Rejected as e:
            self.rejected.labels(what, e.reason.value).inc()
            self.penalize(msg.received_from or msg.origin,
                          f"relayed a bad {what} of {msg.origin}: {e}", protocol=msg.topic)
            return False
        return True
