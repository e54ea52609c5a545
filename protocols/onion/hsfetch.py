"""Fetching a `.fog` service's descriptor from the DHT for a client (rend-spec-v3 "client
behaviour": fetch, cache, and refetch when every introduction point of a descriptor failed).

`DescriptorFetcher.get(address)` returns the cached descriptor while it is valid, else looks
up the periods a client tries (hsdesc.descriptor_lookups), in order, and opens the first value
found (`DescriptorCache.open`: forged, expired, replayed or other periods' descriptors are
refused, counted by reason in `rejected` and the metric).

`get(address, newer_than=desc)` is the refetch after `desc`'s introduction points all failed:
the cache is skipped, every replica key of the period is read and the highest revision kept (a
DHT node that missed the service's last put keeps serving the older one, and the local store
answers first), and the result must be newer than `desc`, else HsConnectError
HS_INTRO_FAILED: the service has not republished yet and the caller may try again later.

Raises HsConnectError: HS_DESC_INVALID when only refused values were found, HS_DESC_NOT_FOUND
when none. Every DHT read is bounded by `dht_timeout`; a read that fails counts as not found.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Callable

import trio

from fognode.node.errors import FognodeError
from fognode.protocols.onion.address import FogAddress
from fognode.protocols.onion.periods import TimePeriods
from fognode.protocols.onion.descriptor import HsDescriptor
from fognode.protocols.onion.hs_errors import DescriptorReason, DescriptorRejected, HsConnectError, SocksReply
from fognode.protocols.onion.hsdesc import DescriptorCache, DescriptorStore, descriptor_lookups
from fognode.protocols.onion.metrics import OnionMetrics

log = logging.getLogger("fognode.onion.client")


class DescriptorFetcher:
    def __init__(self, store: DescriptorStore, periods: TimePeriods, metrics: OnionMetrics,
                 clock: Callable[[], float], *, window: float, max_skew: float, dht_timeout: float = 15.0) -> None:
        self.store = store
        self.periods = periods
        self.metrics = metrics
        self.clock = clock
        self.window = window
        self.dht_timeout = dht_timeout
        self.cache = DescriptorCache(periods, max_skew=max_skew)
        self.rejected: Counter[str] = Counter()

    async def get(self, address: FogAddress, *, newer_than: HsDescriptor | None = None) -> HsDescriptor:
        """The descriptor of `address` (see the module docstring); HsConnectError."""
        now = self.clock()
        if newer_than is None:
            cached = self.cache.get(address, now)
            if cached is not None:
                return cached
        else:
            self.cache.forget(address)
        bad = ""
        for lookup in descriptor_lookups(address, self.periods, now=now, window=self.window):
            best: HsDescriptor | None = None
            for key in lookup.keys:
                value = await self._read(key)
                if value is None:
                    continue
                try:
                    desc = self.cache.open(value, address, lookup.period, now=self.clock())
                except DescriptorRejected as e:
                    if newer_than is not None and e.reason is DescriptorReason.OLD_REVISION:
                        continue              # an older copy than one already read: not a fault
                    self.metrics.descriptors_rejected.labels("fetch", e.reason.value).inc()
                    self.rejected[e.reason.value] += 1
                    bad = str(e)
                    continue
                if best is None or desc.revision > best.revision:
                    best = desc
                if newer_than is None:
                    break                     # a first fetch takes the first valid copy
            if best is None:
                continue
            log.debug("descriptor of %s: period %d revision %d, introduction points %s", address.host,
                      best.period, best.revision, [ip.relay for ip in best.intro_points])
            if newer_than is not None and (best.period, best.revision) <= (newer_than.period, newer_than.revision):
                self.cache.forget(address)
                raise HsConnectError(f"the descriptor of {address.host} in the DHT is still revision "
                                     f"{best.revision}, whose introduction points all failed",
                                     reply=SocksReply.HS_INTRO_FAILED)
            return best
        if bad:
            raise HsConnectError(f"no valid descriptor for {address.host}: {bad}", reply=SocksReply.HS_DESC_INVALID)
        raise HsConnectError(f"no descriptor for {address.host} in the DHT", reply=SocksReply.HS_DESC_NOT_FOUND)

    async def _read(self, key: str) -> bytes | None:
        try:
            with trio.fail_after(self.dht_timeout):
                return await self.store.get(key)
        except (trio.TooSlowError, FognodeError, OSError, ValueError) as e:
            log.debug("descriptor get %s failed: %r", key, e)
            return None
