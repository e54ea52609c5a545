"""Property tests of the market cores: the order book's bounds and sequence rules under any
sequence of offers, withdrawals and clock ticks; negotiations that end alike on both sides."""
from __future__ import annotations

from hypothesis import assume, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fognode.protocols.market.actions import Concluded, NegotiationFailed
from fognode.protocols.market.agreement import SLA
from fognode.protocols.market.messages import MAX_OFFER_TTL, sign_withdraw
from fognode.protocols.market.negotiation import (Negotiations, customer_policy, provider_policy,
                                                  terms_for)
from fognode.protocols.market.orderbook import OrderBook
from tests.market.helpers import NOW, demand, key, offer, peer
from tests.market.test_negotiation import _run

KEYS = [key(f"sm{i}") for i in range(5)]
IDS = ["a", "b", "c"]


class BookMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.book = OrderBook(max_offers=6, max_per_provider=2, max_clock_skew=30,
                              max_tombstones=len(KEYS) * len(IDS))
        self.now = NOW
        # key -> [(seq, until)]: an offer up to seq may not come (back) before until (an
        # evicted or expired offer leaves no block: the book forgot it)
        self.blocks: dict[tuple[bytes, str], list[tuple[int, float]]] = {}

    @rule(k=st.sampled_from(KEYS), oid=st.sampled_from(IDS), seq=st.integers(0, 6),
          ttl=st.integers(1, 300), skew=st.integers(-100, 60))
    def add(self, k, oid, seq, ttl, skew) -> None:
        o = offer(k, oid, seq=seq, ttl=ttl, issued=self.now + skew)
        before = self.book.get(o.provider, oid)
        acts = self.book.receive(peer(k), o.encode(), self.now)
        if not acts:
            assert before is None or seq > before.seq
            assert not any(seq <= s and until > self.now for s, until in self.blocks.get(o.key, []))
            assert o.valid_until > self.now and o.issued <= self.now + 30
            if before is not None:      # superseded: blocked until it would have expired
                self.blocks.setdefault(o.key, []).append((before.seq, before.valid_until))

    @rule(k=st.sampled_from(KEYS), oid=st.sampled_from(IDS), seq=st.integers(0, 8))
    def withdraw(self, k, oid, seq) -> None:
        w = sign_withdraw(k, id=oid, seq=seq, issued=int(self.now))
        if not self.book.receive(peer(k), w.encode(), self.now):
            assert self.book.get(w.provider, oid) is None
            self.blocks.setdefault(w.key, []).append((seq, self.now + MAX_OFFER_TTL))

    @rule(dt=st.integers(0, 200))
    def tick(self, dt) -> None:
        self.now += dt
        self.book.tick(self.now)
        assert all(o.valid_until > self.now for o in self.book)

    @invariant()
    def bounded_and_consistent(self) -> None:
        b = self.book
        assert len(b) <= b.max_offers
        assert all(len(ids) <= b.max_per_provider for ids in b.by_provider.values())
        assert sorted(b.offers) == sorted((p, i) for p, ids in b.by_provider.items() for i in ids)
        assert all(ids for ids in b.by_provider.values())


BookMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestBook = BookMachine.TestCase


C, P = key("customer"), key("provider")


@settings(max_examples=60, deadline=None)
@given(floor=st.integers(1, 50), ask=st.integers(1, 50), budget=st.integers(100, 6000),
       have_up=st.sampled_from([9000, 9900, 9990]), want_up=st.sampled_from([9000, 9900, 9990]),
       min_up=st.sampled_from([0, 9500]), rounds=st.integers(1, 4))
def test_negotiations_end_alike_on_both_sides(floor, ask, budget, have_up, want_up, min_up,
                                              rounds) -> None:
    assume(want_up >= min_up and ask * 100 <= budget)   # the customer proposes what it accepts
    o = offer(P, prices={"fuel": floor}, uptime_bp=have_up)
    cust = Negotiations(C, timeout=10, max_rounds=rounds, provider_policy_for=lambda t: None)
    prov = Negotiations(P, timeout=10, max_rounds=rounds,
                        provider_policy_for=lambda t: provider_policy(o))
    d = demand(C, usage={"fuel": 100}, budget=budget)
    t = terms_for(d, o, nonce=b"p" * 16, now=NOW, sla=SLA(want_up, 500, 0), debit_interval=60,
                  prices={"fuel": ask})
    outs = _run(cust, prov, cust.start(peer(P), t, customer_policy(budget, min_up), NOW))
    done = [a for _, a in outs if isinstance(a, Concluded)]
    failed = [a for _, a in outs if isinstance(a, NegotiationFailed)]
    assert (len(done), len(failed)) in ((2, 0), (0, 2)), outs
    assert not cust.active and not prov.active
    if done:
        ag = done[0].agreement
        assert done[1].agreement == ag and ag.is_valid()
        assert dict(ag.terms.prices)["fuel"] >= floor and ag.terms.sla.uptime_bp <= have_up
        assert ag.terms.estimated_cost() <= budget and ag.terms.sla.uptime_bp >= min_up
    else:
        # it fails only when no acceptable deal exists within the rounds
        assert floor * 100 > budget or have_up < min_up or rounds == 1 and (
            ask < floor or want_up > have_up)
