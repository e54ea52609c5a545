"""The local order book (sans-IO): signed offers heard on gossip, with expiry and bounds.

Every node keeps one. Offers are keyed by (provider public key, offer id):

- **Admission.** `receive(origin, data, now)` decodes an offers-topic message (an offer or a
  withdrawal). It is accepted only from its signer (`origin`, the gossip origin, must be the
  provider's peer id), only while valid (`valid_until > now`) and not issued more than
  `max_clock_skew` ahead of our clock.
- **Replacement.** A higher `seq` for the same key replaces the offer; a lower one is stale, the
  same one a duplicate (or, with different content, an equivocation charged to the provider).
  A withdrawal removes the offer and leaves a tombstone (its seq) for the longest lifetime an
  offer can have; a replaced offer leaves one (its seq) until it would have expired. So no
  offer is admitted while one of the same key with a sequence at least as high is still
  valid, nor after a withdrawal of at least its sequence: a replayed older offer cannot come
  back, not even once its successor expired. Tombstones are bounded by `max_tombstones`
  (default twice `max_offers`; the soonest to lapse goes first): past that bound a flood of
  withdrawals could let a withdrawn offer, still validly signed, be replayed until it expires
  (its provider then refuses to negotiate on it).
- **Expiry.** `tick(now)` drops offers whose `valid_until` passed (a heap, lazily cleaned).
- **Per-provider cap.** A provider holds at most `max_per_provider` offers; a new offer id
  beyond that is refused (CAPACITY): it must replace or withdraw one of its own.
- **Bounded size, eviction rule (fair share).** With `max_offers` held, a new key from
  provider P evicts the soonest-expiring offer of a provider holding the most offers, M, if
  M > P's count; otherwise it is refused (CAPACITY). So nobody is evicted to make room for a
  provider that already holds as many offers as anyone, one peer can never hold more than
  `max_per_provider`, and a provider with a single offer loses it only once every provider
  holds at most one. An evicted offer leaves no tombstone (the book forgot it; it may be
  admitted again when there is room). Finding the victim scans the largest providers'
  offers (O(max_offers) at worst), and only when the book is full.

Refusals come back as `Refused` actions; `reason.charged` says whether the origin is to blame
(malformed, forged, spoofed, equivocating) or not (expired in transit, stale, full). `version`
changes whenever the content changes (matching caches its column snapshot on it), once per
offer put or removed, and `changes_since(version)` lists the keys touched since (a bounded
log: None when it no longer reaches back that far).
"""
from __future__ import annotations

import heapq
from typing import Iterator

from fognode.protocols.market.actions import Action, OffersExpired, Refused
from fognode.protocols.market.errors import Rejected, RejectReason
from fognode.protocols.market.messages import (MAX_OFFER_TTL, Offer, Withdraw,
                                               decode_offer_gossip)

Key = tuple[bytes, str]


class OrderBook:
    def __init__(self, *, max_offers: int = 10_000, max_per_provider: int = 16,
                 max_clock_skew: float = 300.0, max_tombstones: int | None = None) -> None:
        self.max_offers = max_offers
        self.max_tombstones = max_tombstones if max_tombstones is not None else 2 * max_offers
        self.max_per_provider = max_per_provider
        self.max_clock_skew = max_clock_skew
        self.offers: dict[Key, Offer] = {}
        self.by_provider: dict[bytes, set[str]] = {}
        self._heap: list[tuple[int, Key, int]] = []          # (valid_until, key, seq)
        self._tombs: dict[Key, tuple[int, float]] = {}        # key -> (seq, until)
        self._tomb_heap: list[tuple[float, Key]] = []
        self.version = 0
        self._log: list[Key] = []        # changed keys: _log[i] made version _log_base + i + 1
        self._log_base = 0

    def __len__(self) -> int:
        return len(self.offers)

    def __iter__(self) -> Iterator[Offer]:
        return iter(self.offers.values())

    def get(self, provider: bytes, offer_id: str) -> Offer | None:
        return self.offers.get((provider, offer_id))

    # ---- from the network -------------------------------------------------------------------

    def receive(self, origin: str, data: bytes, now: float) -> list[Action]:
        """An offers-topic message from gossip origin `origin`."""
        try:
            msg = decode_offer_gossip(data, peer=origin)
        except Rejected as e:
            return [Refused("offer", e.reason, origin, str(e))]
        what = "withdraw" if isinstance(msg, Withdraw) else "offer"
        if msg.peer != origin:
            return [Refused(what, RejectReason.SPOOFED_ORIGIN, origin,
                            f"{what} signed by {msg.peer} arrived from origin {origin}")]
        problem = self.withdraw(msg, now) if isinstance(msg, Withdraw) else self.add(msg, now)
        if problem is None:
            return []
        reason, detail = problem
        return [Refused(what, reason, origin, detail)]

    # ---- the book ---------------------------------------------------------------------------

    def add(self, offer: Offer, now: float) -> tuple[RejectReason, str] | None:
        """Admit an authenticated offer; (reason, detail) when it is refused."""
        if offer.valid_until <= now:
            return RejectReason.EXPIRED, f"offer {offer.id!r} expired at {offer.valid_until}"
        if offer.issued > now + self.max_clock_skew:
            return RejectReason.FUTURE, f"offer {offer.id!r} issued {offer.issued - now:.0f} s ahead"
        key = offer.key
        tomb = self._tombs.get(key)
        if tomb is not None and offer.seq <= tomb[0] and tomb[1] > now:
            return (RejectReason.STALE_SEQ,
                    f"offer {offer.id!r} seq {offer.seq} was superseded or withdrawn")
        old = self.offers.get(key)
        if old is not None:
            if offer.seq < old.seq:
                return RejectReason.STALE_SEQ, f"offer {offer.id!r} seq {offer.seq} < {old.seq}"
            if offer.seq == old.seq:
                if offer.sig == old.sig:
                    return RejectReason.DUPLICATE, f"offer {offer.id!r} seq {offer.seq} again"
                return (RejectReason.EQUIVOCATION,
                        f"two different offers {offer.id!r} with seq {offer.seq}")
        else:
            held = self.by_provider.get(offer.provider, set())
            if len(held) >= self.max_per_provider:
                return (RejectReason.CAPACITY,
                        f"provider holds {len(held)} offers, the limit is {self.max_per_provider}")
            if len(self.offers) >= self.max_offers and not self._evict_for(len(held)):
                return RejectReason.CAPACITY, f"order book full ({self.max_offers} offers)"
        if old is not None:
            self._tomb(key, old.seq, old.valid_until)
        self._put(offer)
        return None

    def _tomb(self, key: Key, seq: int, until: float) -> None:
        """Refuse offers of `key` up to `seq` until `until` (merged with an existing tomb)."""
        prev = self._tombs.get(key)
        if prev is not None:
            seq, until = max(seq, prev[0]), max(until, prev[1])
        self._tombs[key] = (seq, until)
        heapq.heappush(self._tomb_heap, (until, key))
        while len(self._tombs) > self.max_tombstones:
            t_until, t_key = heapq.heappop(self._tomb_heap)
            live = self._tombs.get(t_key)
            if live is not None and live[1] == t_until:
                del self._tombs[t_key]

    def _put(self, offer: Offer) -> None:
        self.offers[offer.key] = offer
        self.by_provider.setdefault(offer.provider, set()).add(offer.id)
        heapq.heappush(self._heap, (offer.valid_until, offer.key, offer.seq))
        self._changed(offer.key)
        if len(self._heap) > 4 * max(len(self.offers), 64):
            self._heap = [(o.valid_until, o.key, o.seq) for o in self.offers.values()]
            heapq.heapify(self._heap)

    def _changed(self, key: Key) -> None:
        self.version += 1
        self._log.append(key)
        if len(self._log) > 2 * max(self.max_offers, 1024):
            cut = len(self._log) // 2
            del self._log[:cut]
            self._log_base += cut

    def changes_since(self, version: int) -> list[Key] | None:
        """Keys put or removed after `version` (None: the log no longer reaches back there)."""
        if version < self._log_base or version > self.version:
            return None
        return self._log[version - self._log_base:]

    def _remove(self, key: Key) -> Offer | None:
        offer = self.offers.pop(key, None)
        if offer is not None:
            held = self.by_provider[key[0]]
            held.discard(key[1])
            if not held:
                del self.by_provider[key[0]]
            self._changed(key)
        return offer

    def _evict_for(self, newcomer_count: int) -> bool:
        """Make room for a new key of a provider holding `newcomer_count` offers (fair share)."""
        most = max(len(ids) for ids in self.by_provider.values())
        if most <= newcomer_count:
            return False
        victim: Offer | None = None
        for provider, ids in self.by_provider.items():
            if len(ids) != most:
                continue
            for oid in ids:
                o = self.offers[(provider, oid)]
                if victim is None or (o.valid_until, o.key) < (victim.valid_until, victim.key):
                    victim = o
        assert victim is not None
        self._remove(victim.key)
        return True

    def withdraw(self, w: Withdraw, now: float) -> tuple[RejectReason, str] | None:
        """Apply an authenticated withdrawal; (reason, detail) when it is stale."""
        key = w.key
        old = self.offers.get(key)
        tomb = self._tombs.get(key)
        if (old is not None and w.seq <= old.seq) or (tomb is not None and w.seq <= tomb[0]
                                                          and tomb[1] > now):
            return RejectReason.STALE_SEQ, f"withdrawal of {w.id!r} seq {w.seq} is not newer"
        if w.issued > now + self.max_clock_skew:
            return RejectReason.FUTURE, f"withdrawal of {w.id!r} issued ahead of our clock"
        self._remove(key)
        self._tomb(key, w.seq, now + MAX_OFFER_TTL)
        return None

    def tick(self, now: float) -> list[Action]:
        """Drop expired offers and lapsed tombstones; `OffersExpired` when offers went."""
        dropped = 0
        while self._heap and self._heap[0][0] <= now:
            _, key, seq = heapq.heappop(self._heap)
            o = self.offers.get(key)
            if o is not None and o.seq == seq and o.valid_until <= now:
                self._remove(key)
                dropped += 1
        while self._tomb_heap and self._tomb_heap[0][0] <= now:
            until, key = heapq.heappop(self._tomb_heap)
            live = self._tombs.get(key)
            if live is not None and live[1] <= now:
                del self._tombs[key]
        if len(self._tomb_heap) > 4 * max(len(self._tombs), 64):
            self._tomb_heap = [(u, k) for k, (_, u) in self._tombs.items()]
            heapq.heapify(self._tomb_heap)
        return [OffersExpired(dropped)] if dropped else []

    def providers(self) -> int:
        return len(self.by_provider)
