"""Reverse auction (sans-IO), Akash-style: providers bid on a demand within a window.

Customer side, `Auction`: opened for one demand at `opens`, it takes bids until
`opens + window`. A bid is admitted when it is for this demand, comes from the provider that
signed it, arrives before the window closes, stays valid at least until it closes, and asks
at most the per-replica budget. One bid per provider: a higher `seq` replaces it, the same
`seq` with other content is an equivocation (charged), a lower one is stale. At most
`max_bids` providers bid (CAPACITY beyond, not charged).

When `tick(now)` sees the window closed it picks the winners once and reports
`AuctionClosed`: among bids whose provider's reputation is at least `reputation_floor`, the
lowest price wins; ties go to the higher reputation, then to the lower bid id (BLAKE2b of the
bid), so the outcome does not depend on arrival order. `replication` winners, distinct
providers by construction.

Provider side, `make_bid`: the bid a provider would place from one of its offers (the offer's
prices times the demand's usage), or None when the offer does not fit the demand.
"""
from __future__ import annotations

from typing import Callable

from nacl.signing import SigningKey

from fognode.protocols.market.actions import Action, AuctionClosed, Refused
from fognode.protocols.market.errors import Rejected, RejectReason
from fognode.protocols.market.messages import Bid, Demand, Offer, decode_bid, sign_bid


class Auction:
    def __init__(self, demand: Demand, *, opens: float, window: float,
                 reputation: Callable[[str], float], reputation_floor: float = 0.0,
                 max_bids: int = 256) -> None:
        self.demand = demand
        self.demand_id = demand.demand_id
        self.closes = opens + window
        self.reputation = reputation
        self.reputation_floor = reputation_floor
        self.max_bids = max_bids
        self.bids: dict[bytes, Bid] = {}        # provider key -> its current bid
        self.closed = False
        self.winners: tuple[Bid, ...] = ()

    def receive(self, peer: str, data: bytes, now: float) -> list[Action]:
        """A bid from `peer` (the sender on the stream or the gossip origin)."""
        try:
            bid = decode_bid(data, peer=peer)
        except Rejected as e:
            return [Refused("bid", e.reason, peer, str(e))]
        problem = self.add(peer, bid, now)
        return [] if problem is None else [Refused("bid", problem[0], peer, problem[1])]

    def add(self, peer: str, bid: Bid, now: float) -> tuple[RejectReason, str] | None:
        if bid.peer != peer:
            return RejectReason.SPOOFED_ORIGIN, f"bid signed by {bid.peer} sent by {peer}"
        if bid.demand != self.demand_id:
            return RejectReason.UNEXPECTED, "bid for another demand"
        if self.closed or now >= self.closes:
            return RejectReason.EXPIRED, "the bidding window is closed"
        if bid.valid_until < self.closes:
            return RejectReason.EXPIRED, "bid expires before the window closes"
        budget = self.demand.per_replica_budget
        if bid.price > budget:
            return RejectReason.OVER_BUDGET, f"bid {bid.price} is over the budget {budget}"
        old = self.bids.get(bid.provider)
        if old is not None:
            if bid.seq < old.seq:
                return RejectReason.STALE_SEQ, f"bid seq {bid.seq} < {old.seq}"
            if bid.seq == old.seq:
                if bid.sig == old.sig:
                    return RejectReason.DUPLICATE, "the same bid again"
                return RejectReason.EQUIVOCATION, f"two different bids with seq {bid.seq}"
        elif len(self.bids) >= self.max_bids:
            return RejectReason.CAPACITY, f"{self.max_bids} providers already bid"
        self.bids[bid.provider] = bid
        return None

    def ranking(self) -> list[Bid]:
        """Eligible bids, best first (lowest price, then higher reputation, then bid id)."""
        scored = []
        for b in self.bids.values():
            rep = float(self.reputation(b.peer))
            if rep >= self.reputation_floor:
                scored.append((b.price, -rep, b.bid_id, b))
        scored.sort(key=lambda t: t[:3])
        return [t[3] for t in scored]

    def tick(self, now: float) -> list[Action]:
        if self.closed or now < self.closes:
            return []
        self.closed = True
        self.winners = tuple(self.ranking()[:self.demand.replication])
        return [AuctionClosed(self.demand_id, self.winners, len(self.bids))]


def make_bid(key: SigningKey, offer: Offer, demand: Demand, *, seq: int, now: float,
             valid_for: float) -> Bid | None:
    """The bid `offer`'s provider places on `demand` (None: the offer does not fit it)."""
    if (offer.service != demand.service or offer.valid_until <= now
            or not demand.filter.matches(offer.properties())):
        return None
    price = demand.cost(offer)
    if price is None or price > demand.per_replica_budget:
        return None
    until = min(int(now + valid_for), offer.valid_until)
    if until <= int(now):
        return None
    return sign_bid(key, demand=demand.demand_id, offer=offer.id, price=price, seq=seq,
                    issued=int(now), valid_until=until)
