"""The local view: the newest valid record of every device heard of, and queries over it.

Records come from gossip and DHT look-ups; `offer` keeps the highest sequence per peer and says
whether it was new, a capability/profile change, or nothing new. Queries filter on the record
and on two facts supplied by the caller: liveness and reputation (so the view stays a plain
data structure). `device_row` is one device as `registry.devices` lists it.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from fognode.protocols.registry.record import DeviceRecord

GIB = 1024**3


class Change(enum.Enum):
    NEW = "new"                 # first record of this peer
    UPDATED = "updated"         # a newer record with different capabilities, profile or harvest state
    REFRESHED = "refreshed"     # a newer record, same content (republish)
    STALE = "stale"             # not newer than what we hold: ignored


@dataclass(frozen=True)
class Criteria:
    """What `registry.devices` filters on; None/False means "don't care"."""

    region: str | None = None
    role: str | None = None
    device_type: str | None = None
    min_cores: int | None = None
    min_memory_gb: float | None = None
    gpu: bool | None = None
    battery: bool | None = None        # True: has a battery; False: mains only
    charging: bool | None = None
    online: bool | None = None
    min_reputation: float | None = None
    service: str | None = None         # reputation service min_reputation applies to
    available: bool | None = None      # True: announces harvest "available"; False: does not
                                       # (suspended, or no harvest role: unknown)


class LocalView:
    def __init__(self, *, max_devices: int = 100_000) -> None:
        self.max_devices = max_devices
        self._records: dict[str, DeviceRecord] = {}
        self._order: dict[str, int] = {}     # peer -> local change counter (for delta sync)
        self._counter = 0
        # bumped whenever the set of peers held changes (a new peer, an eviction, an expiry),
        # not by a newer record of a peer already held (the registry's online count is
        # memoised on it)
        self.members_version = 0

    def offer(self, rec: DeviceRecord) -> Change:
        """Keep `rec` if it is newer than the one held; returns what changed."""
        old = self._records.get(rec.peer_id)
        if old is not None and rec.seq <= old.seq:
            return Change.STALE
        if old is None and len(self._records) >= self.max_devices:
            oldest = min(self._records.values(), key=lambda r: r.expires)
            del self._records[oldest.peer_id]
            self._order.pop(oldest.peer_id, None)
        if old is None:
            self.members_version += 1
        self._records[rec.peer_id] = rec
        self._counter += 1
        self._order[rec.peer_id] = self._counter
        if old is None:
            return Change.NEW
        if old.caps != rec.caps or old.profile != rec.profile or old.harvest != rec.harvest:
            return Change.UPDATED
        return Change.REFRESHED

    def get(self, peer: str) -> DeviceRecord | None:
        return self._records.get(peer)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, peer: object) -> bool:
        return peer in self._records

    def peers(self) -> list[str]:
        return list(self._records)

    def records(self) -> Iterable[DeviceRecord]:
        return self._records.values()

    def expire(self, now: float) -> list[str]:
        """Drop expired records; returns their peers."""
        gone = [p for p, r in self._records.items() if r.is_expired(now)]
        for p in gone:
            del self._records[p]
            self._order.pop(p, None)
        if gone:
            self.members_version += 1
        return gone

    def changed_since(self, after: int, limit: int) -> tuple[list[DeviceRecord], int, bool]:
        """Records stored or replaced after local counter `after`, oldest change first, at most
        `limit`: (records, the counter to ask from next time, whether more remain)."""
        newer = sorted((c, p) for p, c in self._order.items() if c > after)
        page = newer[:limit]
        nxt = page[-1][0] if page else min(after, self._counter)
        return [self._records[p] for _, p in page], nxt, len(newer) > limit

    def regions(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self._records.values():
            out[r.profile.region] = out.get(r.profile.region, 0) + 1
        return out

    def query(self, c: Criteria, *, is_online: Callable[[str], bool],
              reputation: Callable[[str, str], float]) -> list[DeviceRecord]:
        """Records matching every given criterion, best reputation first, then by peer id.

        `reputation(peer, service)` is the relative score (1.0 = average peer).
        """
        service = c.service or "*"
        out: list[tuple[float, str, DeviceRecord]] = []
        for r in self._records.values():
            caps, prof = r.caps, r.profile
            if c.region is not None and prof.region != c.region:
                continue
            if c.role is not None and c.role not in prof.roles:
                continue
            if c.device_type is not None and prof.device_type != c.device_type:
                continue
            if c.min_cores is not None and (caps.cores is None or caps.cores < c.min_cores):
                continue
            if c.min_memory_gb is not None and (caps.memory_bytes is None
                                                or caps.memory_bytes < c.min_memory_gb * GIB):
                continue
            if c.gpu is not None and (caps.gpu is not None) != c.gpu:
                continue
            if c.battery is not None and bool(caps.battery_present) != c.battery:
                continue
            if c.charging is not None:
                # A device on mains power counts as "charging" (it is not draining a battery).
                on_power = caps.charging if caps.battery_present else (caps.battery_present is False)
                if bool(on_power) != c.charging:
                    continue
            if c.available is not None and \
                    (r.harvest is not None and r.harvest.available) != c.available:
                continue
            if c.online is not None and is_online(r.peer_id) != c.online:
                continue
            score = reputation(r.peer_id, service)
            if c.min_reputation is not None and score < c.min_reputation:
                continue
            out.append((-score, r.peer_id, r))
        out.sort(key=lambda x: (x[0], x[1]))
        return [r for _, _, r in out]


def device_row(rec: DeviceRecord, *, online: bool, reputation: float) -> dict[str, Any]:
    """One row of `registry.devices` (JSON-friendly): `rec` plus its liveness and reputation."""
    c, p, h = rec.caps, rec.profile, rec.harvest
    return {
        "peer": rec.peer_id, "region": p.region, "type": p.device_type, "roles": ",".join(p.roles),
        "cores": c.cores,
        "memory_gb": round(c.memory_bytes / GIB, 1) if c.memory_bytes is not None else None,
        "gpu": c.gpu,
        "battery": (None if not c.battery_present else
                    (round(c.battery_percent) if c.battery_percent is not None else "yes")),
        "charging": c.charging, "online": online,
        "harvest": (None if h is None else "available" if h.available
                    else f"suspended: {h.reason}"),
        "reputation": round(reputation, 3),
    }
