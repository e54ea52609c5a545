"""The DHT namespace validator for device records (`/fognode/device/<peer-id>`).

Implements `node.overlay.DhtValidator`: `validate(key, value)` raises ValueError (a `Rejected`,
which is one) for unsigned, forged, foreign-key, expired, issued-in-the-future, oversize,
malformed and lower-sequence records; `select(key, values)` picks the newest (highest sequence,
then latest expiry, then the larger encoding so every node picks the same one).

It remembers the highest sequence it has accepted per key (bounded, oldest forgotten first), so
a replayed older record is refused even after the newer one was stored elsewhere. Every
refusal is counted by reason in `rejected` and passed to `on_reject` (the role's metric).
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Callable, Sequence

from fognode.protocols.registry.errors import Rejected, RejectReason
from fognode.protocols.registry.record import DeviceRecord, decode_record

NAMESPACE = "fognode"
DEVICE_PREFIX = "/fognode/device/"
REGION_PREFIX = "/fognode/region/"


def device_key(peer_id: str) -> str:
    return DEVICE_PREFIX + peer_id


def region_key(region: str) -> str:
    return REGION_PREFIX + region


class DeviceRecordValidator:
    """Stateful validator (sequence memory); `clock()` gives unix seconds."""

    def __init__(self, clock: Callable[[], float], *, max_clock_skew: float = 300.0,
                 history: int = 100_000,
                 on_reject: Callable[[RejectReason], None] | None = None) -> None:
        self.clock = clock
        self.max_clock_skew = max_clock_skew
        self.history = history
        self.on_reject = on_reject
        self.rejected: Counter[RejectReason] = Counter()
        self._highest: OrderedDict[str, int] = OrderedDict()

    def _count(self, reason: RejectReason) -> None:
        self.rejected[reason] += 1
        if self.on_reject is not None:
            self.on_reject(reason)

    def check(self, key: str, value: bytes, *, remember: bool = True,
              count: bool = True) -> DeviceRecord:
        """Decode and check `value` under `key`; returns the record or raises `Rejected`.

        `remember`: raise the highest sequence seen for `key`; `count`: count a refusal.
        """
        try:
            return self._check(key, value, remember)
        except Rejected as e:
            if count:
                self._count(e.reason)
            raise

    def _check(self, key: str, value: bytes, remember: bool) -> DeviceRecord:
        if not key.startswith(DEVICE_PREFIX):
            raise Rejected(RejectReason.MALFORMED,
                               f"key {key[:80]!r} is not under {DEVICE_PREFIX} in namespace {NAMESPACE}")
        rec = decode_record(value)
        if key != device_key(rec.peer_id):
            raise Rejected(RejectReason.WRONG_KEY,
                               f"record of {rec.peer_id} offered under key {key[:80]!r}")
        now = self.clock()
        if rec.is_expired(now):
            raise Rejected(RejectReason.EXPIRED,
                               f"record of {rec.peer_id} seq {rec.seq} expired at {rec.expires}")
        if rec.issued > now + self.max_clock_skew:
            raise Rejected(RejectReason.FUTURE,
                               f"record of {rec.peer_id} issued at {rec.issued}, ahead of our clock "
                               f"{int(now)} by more than {self.max_clock_skew:.0f} s")
        highest = self._highest.get(key)
        if highest is not None and rec.seq < highest:
            raise Rejected(RejectReason.STALE_SEQ,
                               f"record of {rec.peer_id} seq {rec.seq} is older than seq {highest}")
        if remember:
            self._remember(key, rec.seq)
        return rec

    def _remember(self, key: str, seq: int) -> None:
        self._highest[key] = max(seq, self._highest.get(key, seq))
        self._highest.move_to_end(key)
        while len(self._highest) > self.history:
            self._highest.popitem(last=False)

    def highest_seq(self, peer_id: str) -> int | None:
        return self._highest.get(device_key(peer_id))

    # node.overlay.DhtValidator
    def validate(self, key: str, value: bytes) -> None:
        """Raise ValueError (`Rejected`) if `value` may not be stored or returned under `key`."""
        self.check(key, value)

    def select(self, key: str, values: Sequence[bytes]) -> int:
        """Index of the newest valid value; ValueError when none is valid.

        Values refused here are not counted: the older of two versions is routine.
        """
        best: tuple[int, int, bytes] | None = None
        best_i = -1
        for i, v in enumerate(values):
            try:
                rec = self.check(key, v, remember=False, count=False)
            except Rejected:
                continue
            rank = (rec.seq, rec.expires, v)
            if best is None or rank > best:
                best, best_i = rank, i
        if best_i < 0:
            raise ValueError(f"no valid device record among {len(values)} values for {key[:80]!r}")
        return best_i
