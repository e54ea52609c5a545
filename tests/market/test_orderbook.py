"""The order book: admission from gossip, expiry, replacement by sequence, withdrawals,
the per-provider cap and the fair-share eviction rule; a bad offer is charged to its sender."""
from __future__ import annotations

from fognode.node.wire import pack, unpack
from fognode.protocols.market.actions import OffersExpired, Refused
from fognode.protocols.market.errors import RejectReason
from fognode.protocols.market.messages import sign_withdraw
from fognode.protocols.market.orderbook import OrderBook
from tests.market.helpers import NOW, key, offer, peer

A, B, C = key("alice"), key("bob"), key("carol")


def _reasons(actions) -> list[RejectReason]:
    assert all(isinstance(a, Refused) for a in actions)
    return [a.reason for a in actions]


def test_admit_replace_and_refuse_stale() -> None:
    book = OrderBook()
    o1 = offer(A, seq=1)
    assert book.receive(peer(A), o1.encode(), NOW) == []
    assert book.get(o1.provider, "o1") == o1 and len(book) == 1
    v = book.version
    o2 = offer(A, seq=2, cores=8)
    assert book.receive(peer(A), o2.encode(), NOW) == []
    assert book.get(o1.provider, "o1").cores == 8 and len(book) == 1 and book.version > v
    assert _reasons(book.receive(peer(A), o1.encode(), NOW)) == [RejectReason.STALE_SEQ]
    assert _reasons(book.receive(peer(A), o2.encode(), NOW)) == [RejectReason.DUPLICATE]
    eq = offer(A, seq=2, cores=2)                    # same seq, other content: equivocation
    acts = book.receive(peer(A), eq.encode(), NOW)
    assert _reasons(acts) == [RejectReason.EQUIVOCATION] and acts[0].reason.charged
    assert not RejectReason.STALE_SEQ.charged and not RejectReason.DUPLICATE.charged


def test_bad_offers_are_charged_to_the_sender() -> None:
    book = OrderBook()
    raw = unpack(offer(A).encode())
    raw["cores"] = 64                                # breaks the signature
    acts = book.receive(peer(B), pack(raw), NOW)
    assert _reasons(acts) == [RejectReason.BAD_SIGNATURE]
    assert acts[0].peer == peer(B) and acts[0].reason.charged and acts[0].what == "offer"
    acts = book.receive(peer(B), offer(A).encode(), NOW)   # relayed under another origin
    assert _reasons(acts) == [RejectReason.SPOOFED_ORIGIN] and acts[0].reason.charged
    acts = book.receive(peer(B), b"\x92\x01\x02", NOW)
    assert _reasons(acts) == [RejectReason.MALFORMED] and "expected a map" in acts[0].detail
    assert len(book) == 0


def test_expiry_and_future() -> None:
    book = OrderBook(max_clock_skew=60)
    short, long_ = offer(A, "s", ttl=10), offer(A, "l", ttl=100)
    for o in (short, long_):
        assert book.receive(peer(A), o.encode(), NOW) == []
    assert _reasons(book.receive(peer(B), offer(B, ttl=10).encode(), NOW + 10)) \
        == [RejectReason.EXPIRED]
    assert not RejectReason.EXPIRED.charged
    assert _reasons(book.receive(peer(B), offer(B, issued=NOW + 61).encode(), NOW)) \
        == [RejectReason.FUTURE]
    assert book.tick(NOW + 9) == [] and len(book) == 2
    assert book.tick(NOW + 10) == [OffersExpired(1)] and [o.id for o in book] == ["l"]
    assert book.tick(NOW + 1000) == [OffersExpired(1)] and len(book) == 0
    assert book.providers() == 0


def test_replacement_then_expiry_uses_the_new_lifetime() -> None:
    book = OrderBook()
    book.receive(peer(A), offer(A, seq=1, ttl=10).encode(), NOW)
    book.receive(peer(A), offer(A, seq=2, ttl=100).encode(), NOW)
    assert book.tick(NOW + 50) == [] and len(book) == 1   # the stale heap entry is skipped
    assert book.tick(NOW + 100) == [OffersExpired(1)]


def test_withdraw_leaves_a_tombstone() -> None:
    book = OrderBook()
    book.receive(peer(A), offer(A, seq=5).encode(), NOW)
    w = sign_withdraw(A, id="o1", seq=6, issued=int(NOW))
    assert book.receive(peer(A), w.encode(), NOW) == [] and len(book) == 0
    assert _reasons(book.receive(peer(A), offer(A, seq=6).encode(), NOW)) \
        == [RejectReason.STALE_SEQ]                  # a replay cannot resurrect it
    assert book.receive(peer(A), offer(A, seq=7).encode(), NOW) == []
    assert _reasons(book.receive(peer(A), w.encode(), NOW)) == [RejectReason.STALE_SEQ]
    assert _reasons(book.receive(peer(B), w.encode(), NOW)) == [RejectReason.SPOOFED_ORIGIN]


def test_per_provider_cap() -> None:
    book = OrderBook(max_offers=100, max_per_provider=3)
    for i in range(3):
        assert book.receive(peer(A), offer(A, f"o{i}").encode(), NOW) == []
    acts = book.receive(peer(A), offer(A, "o3").encode(), NOW)
    assert _reasons(acts) == [RejectReason.CAPACITY] and not acts[0].reason.charged
    assert book.receive(peer(A), offer(A, "o0", seq=2).encode(), NOW) == []   # replacing is fine
    assert book.receive(peer(B), offer(B, "o0").encode(), NOW) == []
    assert len(book) == 4


def test_fair_share_eviction() -> None:
    book = OrderBook(max_offers=4, max_per_provider=4)
    for i, ttl in enumerate((50, 40, 60)):
        assert book.receive(peer(A), offer(A, f"a{i}", ttl=ttl).encode(), NOW) == []
    assert book.receive(peer(B), offer(B, "b0").encode(), NOW) == []
    # full: C (0 offers) evicts A's soonest-expiring offer (A holds the most)
    assert book.receive(peer(C), offer(C, "c0").encode(), NOW) == []
    assert sorted(o.id for o in book if o.provider == bytes(A.verify_key)) == ["a0", "a2"]
    assert len(book) == 4
    # A now holds 2, B 1, C 1: A may not evict anyone to grow (it holds the most)
    assert _reasons(book.receive(peer(A), offer(A, "a3").encode(), NOW)) == [RejectReason.CAPACITY]
    # B (1 offer) evicts A's soonest-expiring one (a0, ttl 50)
    assert book.receive(peer(B), offer(B, "b1").encode(), NOW) == []
    assert sorted(o.id for o in book) == ["a2", "b0", "b1", "c0"]
    # now A, C hold 1 and B 2: C may evict from B, never from A
    assert book.receive(peer(C), offer(C, "c1", ttl=500).encode(), NOW) == []
    assert sorted(o.id for o in book) == ["a2", "b1", "c0", "c1"]   # equal expiry: lower id goes
    assert len(book) == 4 and book.get(bytes(A.verify_key), "a2") is not None


def test_one_peer_cannot_fill_the_book() -> None:
    book = OrderBook(max_offers=50, max_per_provider=5)
    for i in range(40):
        book.receive(peer(A), offer(A, f"x{i}").encode(), NOW)
    assert len(book) == 5
    honest = [key(f"h{i}") for i in range(45)]
    for k in honest:
        assert book.receive(peer(k), offer(k).encode(), NOW) == []
    assert len(book) == 50
    late = key("late")
    assert book.receive(peer(late), offer(late).encode(), NOW) == []   # evicts one of A's
    assert len(book.by_provider[bytes(A.verify_key)]) == 4
