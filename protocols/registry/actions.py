"""What the registry core asks its adapter to do (frozen action dataclasses)."""
from __future__ import annotations

from dataclasses import dataclass

from fognode.node.events import Event
from fognode.protocols.registry.errors import RejectReason


@dataclass(frozen=True)
class Publish:
    topic: str
    data: bytes


@dataclass(frozen=True)
class DhtPut:
    key: str
    value: bytes


@dataclass(frozen=True)
class DhtProvide:
    key: str


@dataclass(frozen=True)
class FetchRecord:
    """Look the peer's record up in the DHT and hand it to `RegistryCore.on_dht_record`."""

    peer_id: str


@dataclass(frozen=True)
class SyncFrom:
    """Pull records `peer` stored or replaced after its counter `after` (its run `epoch`);
    hand the reply to `RegistryCore.on_sync_reply`."""

    peer_id: str
    epoch: bytes
    after: int


@dataclass(frozen=True)
class SyncObservationsFrom:
    """Pull observations `peer` accepted after its counter `after`; hand the reply to
    `RegistryCore.on_observation_sync_reply`."""

    peer_id: str
    epoch: bytes
    after: int


@dataclass(frozen=True)
class Ping:
    """Ping the peer on the registry's ping stream; report an answer with `on_pong`."""

    peer_id: str


@dataclass(frozen=True)
class Emit:
    event: Event


@dataclass(frozen=True)
class Refused:
    """Something from `peer` was refused (counted by `what`/`reason`; lowers its score)."""

    what: str            # "record" | "observation" | "gossip"
    reason: RejectReason
    peer: str
    detail: str


@dataclass(frozen=True)
class SetAppScore:
    peer_id: str
    score: float


Action = (Publish | DhtPut | DhtProvide | FetchRecord | SyncFrom | SyncObservationsFrom | Ping
          | Emit | Refused | SetAppScore)
