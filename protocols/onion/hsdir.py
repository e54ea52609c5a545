"""The DHT namespace validator for hidden-service descriptors (`/fognode-hsdesc/<hex>`;
register it with `overlay.register_dht_validator(HSDESC_NAMESPACE, validator)`).

Implements `node.overlay.DhtValidator` for the nodes that store descriptors (every DHT node:
our "hidden-service directories" are the Kademlia peers closest to a key). It sees only the
outer layer (descriptor.decode_outer) and refuses, with a `DescriptorRejected` (a ValueError):
- anything decode_outer refuses (oversize, malformed, forged, expired, issued in the future);
- WRONG_KEY: the DHT key is not one of the descriptor's own keys (blinding.descriptor_keys of
  its blinded key, period and period length), so nobody can store a valid descriptor under
  another service's key;
- WRONG_PERIOD: another period length than the network's, or a period that is neither ours
  nor a neighbour within `window + max_skew` seconds of now;
- OLD_REVISION: a lower revision than the highest accepted under that key (remembered,
  bounded, oldest forgotten first), or the same revision with other bytes.
`select` picks the highest revision, then the latest expiry, then the larger encoding, so
every node picks the same value. Every refusal is counted by reason in `rejected`.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Callable, Sequence

from fognode.node.wire import digest
from fognode.protocols.onion.blinding import HSDESC_PREFIX, descriptor_keys
from fognode.protocols.onion.periods import TimePeriods
from fognode.protocols.onion.descriptor import OuterDescriptor, decode_outer
from fognode.protocols.onion.hs_errors import DescriptorReason, DescriptorRejected

_R = DescriptorReason


class HsDescValidator:
    """Stateful validator (revision memory); `clock()` gives unix seconds."""

    def __init__(self, clock: Callable[[], float], periods: TimePeriods, *, window: float = 3600.0,
                 max_skew: float = 300.0, history: int = 100_000,
                 on_reject: Callable[[DescriptorReason], None] | None = None) -> None:
        self.clock = clock
        self.periods = periods
        self.window = window
        self.max_skew = max_skew
        self.history = history
        self.on_reject = on_reject
        self.rejected: Counter[DescriptorReason] = Counter()
        self._highest: OrderedDict[str, tuple[int, bytes]] = OrderedDict()

    def check(self, key: str, value: bytes, *, remember: bool = True) -> OuterDescriptor:
        """The checked outer layer of `value` stored under `key`; DescriptorRejected if refused."""
        try:
            return self._check(key, value, remember)
        except DescriptorRejected as e:
            self.rejected[e.reason] += 1
            if self.on_reject is not None:
                self.on_reject(e.reason)
            raise

    def _check(self, key: str, value: bytes, remember: bool) -> OuterDescriptor:
        if not key.startswith(HSDESC_PREFIX):
            raise DescriptorRejected(_R.WRONG_KEY, f"key {key[:80]!r} is not under {HSDESC_PREFIX}")
        now = self.clock()
        outer = decode_outer(value, now=now, max_skew=self.max_skew)
        if outer.period_length != self.periods.length:
            raise DescriptorRejected(_R.WRONG_PERIOD, f"period length {outer.period_length} s is not "
                                                      f"this network's {self.periods.length} s")
        slack = self.window + self.max_skew
        if not self.periods.number(now - slack) <= outer.period <= self.periods.number(now + slack):
            raise DescriptorRejected(_R.WRONG_PERIOD, f"period {outer.period} is not near the current "
                                                      f"period {self.periods.number(now)}")
        if key not in descriptor_keys(outer.blinded, outer.period, outer.period_length):
            raise DescriptorRejected(_R.WRONG_KEY, "the key is not this descriptor's blinded key's")
        seen = self._highest.get(key)
        if seen is not None:
            rev, seen_digest = seen
            if outer.revision < rev or (outer.revision == rev and digest(value) != seen_digest):
                raise DescriptorRejected(_R.OLD_REVISION, f"revision {outer.revision} is not newer than "
                                                          f"{rev} already stored")
        if remember:
            self._highest[key] = (outer.revision, digest(value))
            self._highest.move_to_end(key)
            while len(self._highest) > self.history:
                self._highest.popitem(last=False)
        return outer

    # node.overlay.DhtValidator
    def validate(self, key: str, value: bytes) -> None:
        self.check(key, value)

    def select(self, key: str, values: Sequence[bytes]) -> int:
        """Index of the best valid value (highest revision, latest expiry, larger bytes);
        0 when none is valid (the DHT then keeps what it has)."""
        best, best_rank = 0, None
        for i, v in enumerate(values):
            try:
                o = decode_outer(v, now=self.clock(), max_skew=self.max_skew)
            except DescriptorRejected:
                continue
            rank = (o.revision, o.expires, v)
            if best_rank is None or rank > best_rank:
                best, best_rank = i, rank
        return best
