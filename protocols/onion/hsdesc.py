"""What a service stores in the DHT and where a client looks: the sans-IO plans the role's
adapter carries out with the overlay's DHT (`DescriptorStore` is the interface it fulfils).

Service side: `descriptors_to_publish(identity, periods, intro_points, now=..., window=...)`
builds one descriptor per period of `periods.periods_to_publish(now, window)` (the current
one, and the neighbour within `window` of a boundary, so a service keeps reachable when the
period changes) and lists every (DHT key, value) to put: each descriptor under its
`HSDESC_REPLICAS` keys. The adapter republishes them every `republish_interval` (well inside a
descriptor's lifetime) and whenever its introduction points change.

Client side: `descriptor_lookups(address, periods, now=..., window=...)` lists, in order, the
periods to try and each one's DHT keys; the client gets a value under any key, opens it with
`DescriptorCache.open` (descriptor.open_descriptor with the highest revision already seen for
that address and period, so a DHT node replaying an older descriptor is refused), and stops
at the first that opens. `DescriptorCache` keeps opened descriptors until they expire.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from nacl.signing import SigningKey

from fognode.protocols.onion.address import FogAddress
from fognode.protocols.onion.blinding import blind_public_key, descriptor_keys
from fognode.protocols.onion.periods import TimePeriods
from fognode.protocols.onion.descriptor import (DEFAULT_LIFETIME, HsDescriptor, IntroPoint,
                                                build_descriptor, open_descriptor)


class DescriptorStore(Protocol):
    """The DHT as the onion role needs it (the adapter wraps node.overlay's DHT)."""

    async def put(self, key: str, value: bytes) -> None: ...        # raises on failure
    async def get(self, key: str) -> bytes | None: ...              # None: nothing stored


@dataclass(frozen=True)
class DescriptorPut:
    key: str
    value: bytes
    period: int


@dataclass(frozen=True)
class Lookup:
    period: int
    keys: tuple[str, ...]


def descriptors_to_publish(identity: SigningKey, periods: TimePeriods, intro_points: Sequence[IntroPoint], *,
                           now: float, window: float, lifetime: int = DEFAULT_LIFETIME) -> list[DescriptorPut]:
    """Every (key, value) the service `identity` puts now (see the module docstring)."""
    out = []
    for period in periods.periods_to_publish(now, window):
        value = build_descriptor(identity, periods, period, intro_points, now=now, lifetime=lifetime)
        blinded = blind_public_key(bytes(identity.verify_key), period, periods.length)
        out += [DescriptorPut(k, value, period) for k in descriptor_keys(blinded, period, periods.length)]
    return out


def descriptor_lookups(address: FogAddress, periods: TimePeriods, *, now: float, window: float) -> list[Lookup]:
    """The periods a client tries for `address`, in order, with their DHT keys."""
    return [Lookup(p, tuple(descriptor_keys(blind_public_key(address.pubkey, p, periods.length), p, periods.length)))
            for p in periods.periods_to_fetch(now, window)]


def _bound(table: "OrderedDict[tuple[bytes, int], Any]", key: tuple[bytes, int], limit: int) -> None:
    table.move_to_end(key)
    while len(table) > limit:
        table.popitem(last=False)


class DescriptorCache:
    """Opened descriptors by (address, period) until they expire, and the highest revision
    seen for each (kept after expiry, bounded) to refuse replays."""

    def __init__(self, periods: TimePeriods, *, max_entries: int = 4096, max_skew: float = 300.0) -> None:
        self.periods = periods
        self.max_entries = max_entries
        self.max_skew = max_skew
        self._desc: OrderedDict[tuple[bytes, int], HsDescriptor] = OrderedDict()
        self._revision: OrderedDict[tuple[bytes, int], int] = OrderedDict()

    def get(self, address: FogAddress, now: float) -> HsDescriptor | None:
        """A cached, unexpired descriptor of `address` for a period a client would try now."""
        n = self.periods.number(now)
        for p in (n, n - 1, n + 1):
            d = self._desc.get((address.pubkey, p))
            if d is not None and now < d.expires:
                return d
        return None

    def open(self, data: bytes, address: FogAddress, period: int, *, now: float,
             peer: str | None = None) -> HsDescriptor:
        """Open `data` (open_descriptor, no older than what was seen) and cache it;
        DescriptorRejected as open_descriptor raises it."""
        k = (address.pubkey, period)
        desc = open_descriptor(data, address, period, self.periods, now=now, min_revision=self._revision.get(k),
                               max_skew=self.max_skew, peer=peer)
        self._desc[k] = desc
        self._revision[k] = desc.revision
        _bound(self._desc, k, self.max_entries)
        _bound(self._revision, k, self.max_entries)
        return desc

    def forget(self, address: FogAddress) -> None:
        """Drop cached descriptors of `address` (its introduction points all failed); the
        revisions seen stay, so the next fetch cannot be an older one."""
        for k in [k for k in self._desc if k[0] == address.pubkey]:
            del self._desc[k]
