"""Registry and reputation events on the node's event bus."""
from __future__ import annotations

from dataclasses import dataclass

from fognode.node.events import Event


@dataclass(frozen=True)
class DeviceRegistered(Event):
    """A device's record was seen for the first time (or our own was first published)."""

    peer_id: str
    region: str
    device_type: str
    roles: tuple[str, ...]
    seq: int
    own: bool


@dataclass(frozen=True)
class DeviceCapabilitiesChanged(Event):
    peer_id: str
    seq: int
    changed: tuple[str, ...]      # names of the capability/profile fields that changed
    own: bool


@dataclass(frozen=True)
class DeviceOffline(Event):
    peer_id: str
    last_seen: float
    reason: str                   # "silent" (no heartbeat/ping) | "goodbye" (announced)


@dataclass(frozen=True)
class DeviceOnline(Event):
    peer_id: str


@dataclass(frozen=True)
class ReputationUpdated(Event):
    peer_id: str
    service: str                  # "*" for the score over every service
    score: float                  # relative: 1.0 is an average peer
    previous: float
