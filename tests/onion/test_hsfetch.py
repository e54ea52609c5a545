"""A client's descriptor fetch and refetch (hsfetch.py) over an in-memory DescriptorStore
holding real signed descriptors: the refetch after every introduction point failed reads every
replica and keeps the newest, and refuses to retry with a descriptor no newer than the one that
failed (before, the client took the first copy, which a DHT node that missed the service's
last put kept serving: 'introduction point ... does not know the service' on every retry)."""
from __future__ import annotations

import hashlib
import os

import pytest
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.peerid import peer_id_from_pubkey
from fognode.protocols.onion.address import FogAddress
from fognode.protocols.onion.periods import TimePeriods
from fognode.protocols.onion.descriptor import IntroPoint
from fognode.protocols.onion.hs_errors import HsConnectError, SocksReply
from fognode.protocols.onion.hsdesc import descriptors_to_publish
from fognode.protocols.onion.hsfetch import DescriptorFetcher
from fognode.protocols.onion.metrics import OnionMetrics

TP = TimePeriods(3600, 0)
NOW = 1_796_083_200.0 + 1800          # mid-period: one period's keys
KEY = SigningKey(b"k" * 32)
ADDRESS = FogAddress(bytes(KEY.verify_key))


class MemoryStore:
    """The DHT as a dict (the real DescriptorStore interface: put, get)."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.gets = 0

    async def put(self, key: str, value: bytes) -> None:
        self.values[key] = value

    async def get(self, key: str) -> bytes | None:
        self.gets += 1
        return self.values.get(key)


def relay(name: str) -> str:
    return peer_id_from_pubkey(bytes(SigningKey(hashlib.sha256(name.encode()).digest()).verify_key))


def points(*names: str) -> list[IntroPoint]:
    return [IntroPoint(relay(n), bytes(SigningKey.generate().verify_key), os.urandom(32)) for n in names]


def relays(*names: str) -> list[str]:
    return [relay(n) for n in names]


def publish(store: MemoryStore, at: float, *relays: str, replicas: tuple[int, ...] = (0, 1)) -> None:
    """The service's descriptors built at `at`, put under the given replica keys only."""
    puts = descriptors_to_publish(KEY, TP, points(*relays), now=at, window=0)
    for i in replicas:
        store.values[puts[i].key] = puts[i].value


def fetcher(store: MemoryStore, clock: list[float]) -> DescriptorFetcher:
    return DescriptorFetcher(store, TP, OnionMetrics.create(CollectorRegistry()), lambda: clock[0],
                             window=0, max_skew=300)


async def test_the_refetch_reads_every_replica_and_keeps_the_newest() -> None:
    store, clock = MemoryStore(), [NOW]
    publish(store, NOW - 60, "old-a", "old-b")
    f = fetcher(store, clock)
    first = await f.get(ADDRESS)
    assert [p.relay for p in first.intro_points] == relays("old-a", "old-b") and store.gets == 1
    assert await f.get(ADDRESS) is first and store.gets == 1          # cached
    # the service moved its points; its put reached the second replica's node only
    publish(store, NOW - 10, "new-a", "new-b", replicas=(1,))
    again = await f.get(ADDRESS, newer_than=first)
    assert [p.relay for p in again.intro_points] == relays("new-a", "new-b") and again.revision > first.revision
    assert store.gets == 3 and not f.rejected                          # both replicas read; no fault counted
    assert await f.get(ADDRESS) is again                               # the newer one is cached


async def test_a_refetch_no_newer_than_what_failed_is_refused_until_the_service_republishes() -> None:
    store, clock = MemoryStore(), [NOW]
    publish(store, NOW - 60, "a", "b")
    f = fetcher(store, clock)
    first = await f.get(ADDRESS)
    with pytest.raises(HsConnectError, match="still revision") as e:
        await f.get(ADDRESS, newer_than=first)
    assert e.value.reply is SocksReply.HS_INTRO_FAILED
    gets = store.gets
    publish(store, NOW - 5, "c")                                       # the service republished
    clock[0] += 1
    assert [p.relay for p in (await f.get(ADDRESS)).intro_points] == relays("c")   # the stale one was not cached
    assert store.gets > gets


async def test_nothing_or_only_bad_values_found() -> None:
    store, clock = MemoryStore(), [NOW]
    f = fetcher(store, clock)
    with pytest.raises(HsConnectError) as e:
        await f.get(ADDRESS)
    assert e.value.reply is SocksReply.HS_DESC_NOT_FOUND
    puts = descriptors_to_publish(SigningKey.generate(), TP, points("x"), now=NOW, window=0)
    for put, key in zip(puts, descriptors_to_publish(KEY, TP, points("y"), now=NOW, window=0)):
        store.values[key.key] = put.value                              # another service's, under ours
    with pytest.raises(HsConnectError) as e:
        await f.get(ADDRESS)
    assert e.value.reply is SocksReply.HS_DESC_INVALID and sum(f.rejected.values()) >= 1
