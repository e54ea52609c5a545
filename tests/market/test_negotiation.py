"""Negotiation paths between a customer core and a provider core, messages passed by hand:
accept at once, counter then accept, reject, too many rounds, timeout, bad signatures and
messages out of turn."""
from __future__ import annotations

import dataclasses

from fognode.node.wire import pack, unpack
from fognode.protocols.market.actions import Concluded, NegotiationFailed, Refused, Send
from fognode.protocols.market.agreement import (SLA, Accept, Agreement, decode_negotiation,
                                                sign_accept, sign_proposal)
from fognode.protocols.market.errors import RejectReason
from fognode.protocols.market.negotiation import (AcceptTerms, CounterTerms, Negotiations, State,
                                                  customer_policy, provider_policy, terms_for)
from tests.market.helpers import NOW, demand, key, offer, peer

C, P = key("customer"), key("provider")
CP, PP = peer(C), peer(P)


def _pair(offer_obj, *, timeout=30.0, max_rounds=6, provider_policy_for=None):
    cust = Negotiations(C, timeout=timeout, max_rounds=max_rounds,
                        provider_policy_for=lambda t: None)
    prov = Negotiations(P, timeout=timeout, max_rounds=max_rounds,
                        provider_policy_for=provider_policy_for or (
                            lambda t: provider_policy(offer_obj) if t.offer == offer_obj.id else None))
    return cust, prov


def _run(cust, prov, first, now=NOW, limit=50):
    """Deliver Sends between the two cores until quiet; return every non-Send action."""
    queue = [(a, "c") for a in first]
    outcomes = []
    for _ in range(limit):
        if not queue:
            return outcomes
        a, src = queue.pop(0)
        if not isinstance(a, Send):
            outcomes.append((src, a))
            continue
        if src == "c":
            queue += [(x, "p") for x in prov.receive(CP, a.data, now)]
        else:
            queue += [(x, "c") for x in cust.receive(PP, a.data, now)]
    raise AssertionError("negotiation did not settle")


def _start(cust, o, *, budget=5000, prices=None, min_uptime=0, uptime=9900, now=NOW):
    d = demand(C, usage={"fuel": 100}, budget=budget)
    t = terms_for(d, o, nonce=b"n" * 16, now=now, sla=SLA(uptime, 500, 10), debit_interval=120,
                  prices=prices)
    return cust.start(PP, t, customer_policy(d.per_replica_budget, min_uptime), now)


def _concluded(outcomes):
    got = [a for _, a in outcomes if isinstance(a, Concluded)]
    assert len(got) == 2, outcomes                      # both sides hold the agreement
    assert got[0].agreement == got[1].agreement and got[0].agreement.is_valid()
    return got[0].agreement


def test_accept_at_the_offer_price() -> None:
    o = offer(P, prices={"fuel": 10})
    cust, prov = _pair(o)
    ag = _concluded(_run(cust, prov, _start(cust, o)))
    assert dict(ag.terms.prices) == {"fuel": 10} and ag.terms.round == 0
    assert ag.terms.estimated_cost() == 1000 and len(ag.agreement_id) == 32
    assert not cust.active and not prov.active


def test_counter_then_accept() -> None:
    o = offer(P, prices={"fuel": 20}, uptime_bp=9500)
    cust, prov = _pair(o)
    # the customer asks for 10 a unit and 99.9 %: the provider counters with 20 and 95 %
    outs = _run(cust, prov, _start(cust, o, prices={"fuel": 10}, uptime=9990))
    ag = _concluded(outs)
    assert ag.terms.round == 1 and dict(ag.terms.prices) == {"fuel": 20}
    assert ag.terms.sla.uptime_bp == 9500 and ag.terms.max_total == 5000


def test_customer_rejects_a_counter_over_budget() -> None:
    o = offer(P, prices={"fuel": 100})
    cust, prov = _pair(o)
    outs = _run(cust, prov, _start(cust, o, prices={"fuel": 10}, budget=5000))
    fails = {src: a.reason for src, a in outs if isinstance(a, NegotiationFailed)}
    assert fails["c"].startswith("rejected: over budget")
    assert fails["p"].startswith("rejected by the customer: over budget")
    assert not any(isinstance(a, (Concluded, Refused)) for _, a in outs)


def test_unknown_offer_is_rejected_by_the_provider() -> None:
    o = offer(P, "other")
    cust, prov = _pair(offer(P, "o1"))
    outs = _run(cust, prov, _start(cust, o))
    assert [a.reason for src, a in outs if isinstance(a, NegotiationFailed)] == \
        ["rejected by the provider: no offer 'other' for service 'compute.wasm'"]


def test_too_many_rounds() -> None:
    o = offer(P, prices={"fuel": 10})
    # both sides always counter (raise or lower the price by one)
    def stubborn(delta):
        return lambda t: CounterTerms(t.revise(prices=(("fuel", dict(t.prices)["fuel"] + delta),)))
    cust = Negotiations(C, timeout=30, max_rounds=4, provider_policy_for=lambda t: None)
    prov = Negotiations(P, timeout=30, max_rounds=4, provider_policy_for=lambda t: stubborn(+1))
    d = demand(C, usage={"fuel": 100})
    t = terms_for(d, o, nonce=b"r" * 16, now=NOW, sla=SLA(), debit_interval=120)
    outs = _run(cust, prov, cust.start(PP, t, stubborn(-1), NOW))
    reasons = sorted(a.reason for _, a in outs if isinstance(a, NegotiationFailed))
    assert reasons[0].startswith("rejected by the") and reasons[1] == "too many rounds (5 > 4)"


def test_timeout_via_tick() -> None:
    o = offer(P)
    cust, _ = _pair(o, timeout=5)
    sends = _start(cust, o)
    assert len(sends) == 1 and isinstance(sends[0], Send)
    assert cust.tick(NOW + 4.9) == []
    acts = cust.tick(NOW + 5)
    assert isinstance(acts[0], Send) and decode_negotiation(acts[0].data).reason == "timed out"
    assert isinstance(acts[1], NegotiationFailed) and acts[1].reason == "timed out"
    assert acts[1].signed is None
    assert not cust.active and cust.tick(NOW + 100) == []


def test_provider_times_out_waiting_for_the_agreement() -> None:
    o = offer(P)
    cust, prov = _pair(o, timeout=5)
    proposal = _start(cust, o)[0]
    acts = prov.receive(CP, proposal.data, NOW)
    assert isinstance(decode_negotiation(acts[0].data), Accept)
    assert prov.active[(CP, b"n" * 16)].state is State.ACCEPTED
    acts = prov.tick(NOW + 5)
    assert [type(a) for a in acts] == [Send, NegotiationFailed]
    assert acts[1].signed == decode_negotiation(proposal.data).terms   # we may still be bound


def test_bad_accept_signature_is_charged() -> None:
    o = offer(P)
    cust, _ = _pair(o)
    proposal = decode_negotiation(_start(cust, o)[0].data)
    forged = dataclasses.replace(sign_accept(P, "provider", proposal.terms), sig=b"\1" * 64)
    acts = cust.receive(PP, forged.encode(), NOW)
    refused = [a for a in acts if isinstance(a, Refused)]
    assert refused[0].reason is RejectReason.BAD_SIGNATURE and refused[0].reason.charged
    assert any(isinstance(a, NegotiationFailed) for a in acts)
    # an accept signed by a third key over the right terms: also refused
    cust2, _ = _pair(o)
    proposal = decode_negotiation(_start(cust2, o)[0].data)
    acts = cust2.receive(PP, sign_accept(key("mallory"), "provider", proposal.terms).encode(), NOW)
    assert [a.reason for a in acts if isinstance(a, Refused)] == [RejectReason.BAD_SIGNATURE]


def test_tampered_and_out_of_turn_messages() -> None:
    o = offer(P)
    cust, prov = _pair(o)
    data = _start(cust, o)[0].data
    raw = unpack(data)
    raw["terms"]["max_total"] = 1                    # altered in transit
    acts = prov.receive(CP, pack(raw), NOW)
    assert [a.reason for a in acts] == [RejectReason.BAD_SIGNATURE] and not prov.active
    # a proposal relayed by someone else than the customer it names
    acts = prov.receive(peer(key("mallory")), data, NOW)
    assert [a.reason for a in acts if isinstance(a, Refused)] == [RejectReason.SPOOFED_ORIGIN]
    # the provider opens the negotiation properly, then receives an accept of its own side
    prov.receive(CP, data, NOW)
    t = decode_negotiation(data).terms
    acts = prov.receive(CP, sign_accept(C, "customer", t).encode(), NOW)
    assert [a.reason for a in acts if isinstance(a, Refused)] == [RejectReason.UNEXPECTED]
    # an agreement for a negotiation nobody opened
    ag = Agreement(t, sign_accept(C, "customer", t).sig, sign_accept(P, "provider", t).sig)
    acts = cust.receive(PP, ag.encode(), NOW)
    assert isinstance(acts[0], Refused)


def test_counter_changing_an_invariant_is_refused() -> None:
    o = offer(P, prices={"fuel": 10})
    cust, _ = _pair(o)
    t = decode_negotiation(_start(cust, o)[0].data).terms
    sneaky = t.revise(offer="elsewhere")
    acts = cust.receive(PP, sign_proposal(P, "provider", sneaky).encode(), NOW)
    refused = [a for a in acts if isinstance(a, Refused)]
    assert refused and "changes 'offer'" in refused[0].detail


def test_capacity_per_peer() -> None:
    o = offer(P)
    prov = Negotiations(P, timeout=30, max_rounds=6, max_per_peer=2,
                        provider_policy_for=lambda t: (lambda _t: CounterTerms(_t.revise())))
    cust = Negotiations(C, timeout=30, max_rounds=6, provider_policy_for=lambda t: None)
    d = demand(C)
    for i in range(3):
        t = terms_for(d, o, nonce=bytes([i]) * 16, now=NOW, sla=SLA(), debit_interval=60)
        acts = prov.receive(CP, cust.start(PP, t, lambda _t: AcceptTerms(), NOW)[0].data, NOW)
    assert acts[0].reason is RejectReason.CAPACITY and not acts[0].reason.charged
    assert len(prov.active) == 2
