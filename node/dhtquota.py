"""Admission control for the DHT value store: who may make it hold how many records (sans-IO).

py-libp2p 0.8.1 stores every valid PUT_VALUE and, once it holds 50,000 records, evicts the
oldest one to make room. A flood of validly signed records from fresh identities (each device
may store its own record under `/fognode/device/<its peer id>`, and keys cost nothing) can so
push out every real record. `RecordQuota` refuses instead of evicting:

- a record larger than `max_record_size` is refused (`TOO_LARGE`);
- a new key is charged to the peer whose PUT_VALUE created it (the *source*); a source holding
  `records_per_peer` keys gets no more (`PER_PEER`);
- a namespace (the key up to its last "/", e.g. `/fognode/device`) holds at most
  `records_per_namespace` keys (`NAMESPACE_FULL`), the whole store `max_records` (`STORE_FULL`);
- a key already stored is an update: it grows nothing and stays charged to its creator.

Provider records (ADD_PROVIDER: "peer P provides key K") are kept on a second set of books
with the same per-peer and total limits, one record per (key, provider); py-libp2p already
limits a key to 20 providers and a peer to 10 ADD_PROVIDERs per 10 s, but not the total, so
fresh identities could grow the provider store without bound.

Records this node stores itself (its own puts, records it fetched) are charged to the local
source "" and never refused: they are bounded by what this node's roles do. A record leaves the
books when the store drops it (`release`, `reconcile`). Nothing here is evicted to make room:
records already held win over newcomers until they expire.

Who is a legitimate source: each device puts its own record (the registry role), so normally
the source is the record's owner; py-libp2p's entry correction after a `get_value` also sends
the best record to close peers that lacked it, so a peer that looks records up may be charged
for others' keys too. `records_per_peer` is sized with room for that.
"""
from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from fognode.node.errors import ConfigError

LOCAL = ""                       # the source of records this node stored itself
LIBP2P_STORE_LIMIT = 50_000      # py-libp2p's own limit, above which it evicts the oldest record


class Refusal(enum.Enum):
    """Why a PUT_VALUE was not stored (the `reason` label of the refusal metric)."""

    TOO_LARGE = "too_large"
    PER_PEER = "per_peer"
    NAMESPACE_FULL = "namespace_full"
    STORE_FULL = "store_full"
    INVALID = "invalid"          # the namespace validator (or strict namespaces) refused it
    STALE = "stale"              # the record already held is better (routine, not a fault)

    @property
    def peer_fault(self) -> bool:
        """True when only a misbehaving peer gets this refusal (it is penalised)."""
        return self in (Refusal.TOO_LARGE, Refusal.PER_PEER, Refusal.INVALID)


@dataclass(frozen=True)
class DhtLimits:
    """The DHT keys of [overlay] (node.toml)."""

    records_per_peer: int = 256
    records_per_namespace: int = 2048
    max_records: int = 4096
    max_record_size: int = 16384

    @classmethod
    def from_overlay(cls, config: Any) -> "DhtLimits":
        """From an OverlayConfig (node/host.py): its `dht_*` fields."""
        return cls(records_per_peer=config.dht_records_per_peer,
                   records_per_namespace=config.dht_records_per_namespace,
                   max_records=config.dht_max_records,
                   max_record_size=config.dht_max_record_size)

    def validate(self) -> None:
        """Raise ConfigError(key="overlay.dht_<key>") naming the first wrong key."""
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(msg, key=f"overlay.dht_{key}")

        if not 1 <= self.max_records <= LIBP2P_STORE_LIMIT // 2:
            raise bad("max_records", f"must be between 1 and {LIBP2P_STORE_LIMIT // 2} (py-libp2p "
                      f"evicts the oldest records above {LIBP2P_STORE_LIMIT}), got "
                      f"{self.max_records}")
        if not 1 <= self.records_per_namespace <= self.max_records:
            raise bad("records_per_namespace", f"must be between 1 and dht_max_records "
                      f"({self.max_records}), got {self.records_per_namespace}")
        if not 1 <= self.records_per_peer <= self.records_per_namespace:
            raise bad("records_per_peer", f"must be between 1 and dht_records_per_namespace "
                      f"({self.records_per_namespace}), got {self.records_per_peer}")
        if not 256 <= self.max_record_size <= 1024 * 1024:
            raise bad("max_record_size", f"must be between 256 bytes and 1 MiB, got "
                      f"{self.max_record_size}")


def namespace_of(key: bytes) -> str:
    """The key up to its last "/" (`/fognode/device/<id>` -> `/fognode/device`); a key with no
    inner "/" is its own namespace."""
    text = key.decode("utf-8", "replace")
    head, sep, _ = text.rpartition("/")
    return head if sep and head else text


class RecordQuota:
    """The books of the value store: for each stored key, its source and namespace."""

    def __init__(self, limits: DhtLimits, *,
                 namespace: Callable[[bytes], str] = namespace_of) -> None:
        self.limits = limits
        self.namespace = namespace
        self._keys: dict[bytes, tuple[str, str]] = {}      # key -> (source, namespace)
        self._per_source: Counter[str] = Counter()
        self._per_namespace: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def held_by(self, source: str) -> int:
        return self._per_source[source]

    def in_namespace(self, namespace: str) -> int:
        return self._per_namespace[namespace]

    def check(self, key: bytes, size: int, source: str) -> Refusal | None:
        """May `source` store `size` bytes under `key`? None if yes, else the reason."""
        if source == LOCAL:
            return None
        if size > self.limits.max_record_size:
            return Refusal.TOO_LARGE
        if key in self._keys:
            return None
        if self._per_source[source] >= self.limits.records_per_peer:
            return Refusal.PER_PEER
        if len(self._keys) >= self.limits.max_records:
            return Refusal.STORE_FULL
        if self._per_namespace[self.namespace(key)] >= self.limits.records_per_namespace:
            return Refusal.NAMESPACE_FULL
        return None

    def charge(self, key: bytes, source: str) -> None:
        """`key` is now stored; a new key is charged to `source`, an update changes nothing."""
        if key in self._keys:
            return
        ns = self.namespace(key)
        self._keys[key] = (source, ns)
        self._per_source[source] += 1
        self._per_namespace[ns] += 1

    def release(self, key: bytes) -> None:
        """`key` left the store."""
        found = self._keys.pop(key, None)
        if found is None:
            return
        source, ns = found
        for counter, k in ((self._per_source, source), (self._per_namespace, ns)):
            counter[k] -= 1
            if counter[k] <= 0:
                del counter[k]

    def reconcile(self, stored: Iterable[bytes]) -> None:
        """Forget every key not in `stored` (the store dropped it by itself: expiry, eviction)."""
        keep = set(stored)
        for key in [k for k in self._keys if k not in keep]:
            self.release(key)
