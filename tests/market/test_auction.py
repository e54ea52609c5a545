"""Reverse auction: admission of bids within the window, replacement, the reputation floor
and deterministic winners; the provider's bid from its offer."""
from __future__ import annotations

from fognode.protocols.market.actions import AuctionClosed, Refused
from fognode.protocols.market.auction import Auction, make_bid
from fognode.protocols.market.errors import RejectReason
from fognode.protocols.market.messages import sign_bid
from tests.market.helpers import NOW, demand, key, offer, peer

CUSTOMER = key("customer")
P = [key(f"prov{i}") for i in range(6)]


def _bid(k, d, price, *, seq=1, until=NOW + 60):
    return sign_bid(k, demand=d.demand_id, offer="o1", price=price, seq=seq, issued=int(NOW),
                    valid_until=int(until))


def _auction(d, rep=None, floor=0.0, max_bids=256):
    rep = rep or {}
    return Auction(d, opens=NOW, window=10, reputation=lambda p: rep.get(p, 0.5),
                   reputation_floor=floor, max_bids=max_bids)


def test_lowest_price_wins_with_deterministic_ties_and_floor() -> None:
    d = demand(CUSTOMER, budget=3000, replication=2)
    rep = {peer(P[0]): 0.9, peer(P[1]): 0.2, peer(P[2]): 0.6, peer(P[3]): 0.05}
    a = _auction(d, rep, floor=0.1)
    for k, price in [(P[0], 800), (P[1], 700), (P[2], 700), (P[3], 100)]:
        assert a.receive(peer(k), _bid(k, d, price).encode(), NOW + 1) == []
    assert a.tick(NOW + 9.9) == []
    acts = a.tick(NOW + 10)
    assert len(acts) == 1 and isinstance(acts[0], AuctionClosed)
    # P3 is cheapest but under the floor; P1 and P2 tie on price: higher reputation first
    assert [b.peer for b in acts[0].winners] == [peer(P[2]), peer(P[1])]
    assert acts[0].bids == 4 and a.tick(NOW + 20) == []


def test_outcome_does_not_depend_on_arrival_order() -> None:
    d = demand(CUSTOMER, budget=10_000, replication=3)
    bids = [(k, _bid(k, d, 500)) for k in P]            # all equal, equal reputation
    first = _auction(d)
    for k, b in bids:
        first.receive(peer(k), b.encode(), NOW)
    second = _auction(d)
    for k, b in reversed(bids):
        second.receive(peer(k), b.encode(), NOW)
    w1 = first.tick(NOW + 10)[0].winners
    w2 = second.tick(NOW + 10)[0].winners
    assert w1 == w2 and len(w1) == 3
    assert [b.bid_id for b in w1] == sorted(b.bid_id for _, b in bids)[:3]


def test_bid_admission() -> None:
    d = demand(CUSTOMER, budget=1000, replication=1)
    other = demand(CUSTOMER, id="d2")
    a = _auction(d, max_bids=2)

    def reason(k, b, at=NOW, sender=None):
        acts = a.receive(sender or peer(k), b.encode(), at)
        return acts[0].reason if acts else None

    assert reason(P[0], _bid(P[0], d, 1001)) is RejectReason.OVER_BUDGET
    assert reason(P[0], _bid(P[0], other, 10)) is RejectReason.UNEXPECTED
    assert reason(P[0], _bid(P[0], d, 10, until=NOW + 5)) is RejectReason.EXPIRED
    assert reason(P[0], _bid(P[0], d, 10), sender=peer(P[1])) is RejectReason.SPOOFED_ORIGIN
    assert reason(P[0], _bid(P[0], d, 10, seq=2)) is None
    assert reason(P[0], _bid(P[0], d, 9, seq=1)) is RejectReason.STALE_SEQ
    assert reason(P[0], _bid(P[0], d, 9, seq=2)) is RejectReason.EQUIVOCATION
    assert reason(P[0], _bid(P[0], d, 8, seq=3)) is None         # a newer bid replaces
    assert reason(P[1], _bid(P[1], d, 10)) is None
    assert reason(P[2], _bid(P[2], d, 10)) is RejectReason.CAPACITY
    assert reason(P[3], _bid(P[3], d, 10), at=NOW + 10) is RejectReason.EXPIRED
    acts = a.receive(peer(P[4]), b"\xc1", NOW)
    assert isinstance(acts[0], Refused) and acts[0].reason.charged
    assert [b.price for b in a.tick(NOW + 10)[0].winners] == [8]


def test_make_bid_from_an_offer() -> None:
    d = demand(CUSTOMER, "(cores>=4)", usage={"fuel": 100}, budget=2000, replication=2)
    o = offer(P[0], prices={"fuel": 10}, cores=4)
    b = make_bid(P[0], o, d, seq=1, now=NOW, valid_for=30)
    assert b is not None and b.price == 1000 and b.valid_until == int(NOW) + 30
    assert make_bid(P[0], offer(P[0], prices={"fuel": 11}), d, seq=1, now=NOW,
                    valid_for=30) is None                        # over the per-replica budget
    assert make_bid(P[0], offer(P[0], cores=2), d, seq=1, now=NOW, valid_for=30) is None
    a = _auction(d)
    assert a.receive(peer(P[0]), b.encode(), NOW) == []
