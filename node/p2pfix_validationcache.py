"""py-libp2p 0.8.1 fix: the pubsub validation cache in constant time per message, not a scan of
its whole recency list.

Symptom (upstream report form). `Pubsub.validate_msg` stores every validated message's result
in `libp2p/pubsub/pubsub.py: ValidationCache` (1,000 entries by default, least recently used
evicted). Its recency order is a Python list: `put` evicts with `list.pop(0)` and then asks
`msg_id in access_order` and maybe `access_order.remove(msg_id)`, both scans of the list, and
`get` does the same on a hit. Once the cache is full (after 1,000 messages, so always in a
running node) each new message pays a scan of 1,000 ids: 7.8 us per `put` on the project's
2-core machine (thread CPU clock, 5,000 puts into a full cache), 10 to 15 % of what
`validate_msg` costs a gossip message apart from the validators themselves. Reproduction:
fill a `ValidationCache()` with 1,000 random 46-byte ids, time 5,000 more `put`s.

Fix. `QuickValidationCache(ValidationCache)` keeps the same entries in an OrderedDict whose
order is the recency order (`move_to_end` on a hit or a put, `popitem(last=False)` to evict),
with py-libp2p's rules unchanged: the same TTL check on `get` (an expired entry is removed and
reported missing), the same eviction while the cache holds `max_size` entries or more (also
when the id put is already in it), the same `clear_expired`. Pubsub builds its cache in its
constructor with no option for the class, so node/scored_pubsub.py's ScoredPubsub replaces
the instance right after (a subclass of py-libp2p's class; no monkeypatch). Nothing on the wire
changes; which messages are refused, and charged, is unchanged.
"""
from __future__ import annotations

import time
from collections import OrderedDict

from libp2p.pubsub.pubsub import ValidationCache, ValidationResult


class QuickValidationCache(ValidationCache):
    """py-libp2p's ValidationCache with O(1) recency bookkeeping (module doc). `ttl` seconds,
    at most `max_size` entries, as py-libp2p's."""

    def __init__(self, ttl: int = 300, max_size: int = 1000) -> None:
        super().__init__(ttl, max_size)
        self.cache: OrderedDict[bytes, ValidationResult] = OrderedDict()   # oldest use first
        del self.access_order           # the order is the cache's own

    def get(self, msg_id: bytes) -> ValidationResult | None:
        result = self.cache.get(msg_id)
        if result is None:
            return None
        if time.time() - result.timestamp > self.ttl:
            del self.cache[msg_id]
            return None
        self.cache.move_to_end(msg_id)
        return result

    def put(self, msg_id: bytes, result: ValidationResult) -> None:
        while len(self.cache) >= self.max_size and self.cache:
            self.cache.popitem(last=False)
        self.cache[msg_id] = result
        self.cache.move_to_end(msg_id)

    def _remove(self, msg_id: bytes) -> None:
        self.cache.pop(msg_id, None)

    def order(self) -> list[bytes]:
        """The ids from least to most recently used (py-libp2p's `access_order`)."""
        return list(self.cache)
