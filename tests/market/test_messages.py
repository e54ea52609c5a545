"""Market codecs: round trips, and refusals that name the field (wrong types, missing,
unknown or oversize fields, unknown version, forged signatures, non-canonical maps)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from fognode.node.wire import pack, unpack
from fognode.protocols.market.agreement import (SLA, Agreement, Proposal, Reject, Terms,
                                                decode_negotiation, sign_accept, sign_proposal,
                                                sign_reject)
from fognode.protocols.market.errors import Rejected, RejectReason
from fognode.protocols.market.messages import (MAX_OFFER_BYTES, decode_bid, decode_demand,
                                               decode_offer, decode_offer_gossip, decode_withdraw,
                                               sign_bid, sign_offer, sign_withdraw)
from fognode.protocols.market.wirecommon import SERVICES
from tests.market.helpers import NOW, demand, key, offer

A, B = key("alice"), key("bob")


def _resign(raw: dict, k=A) -> bytes:
    from fognode.node.wire import sign
    body = {kk: v for kk, v in raw.items() if kk != "sig"}
    return pack({**body, "sig": sign(k, body)})


def _refused(fn, data: bytes, reason: RejectReason, needle: str) -> Rejected:
    with pytest.raises(Rejected) as ei:
        fn(data, peer="p")
    assert ei.value.reason is reason, str(ei.value)
    assert needle in str(ei.value), str(ei.value)
    return ei.value


@settings(max_examples=60, deadline=None)
@given(cores=st.integers(1, 4096), mem=st.integers(0, 2**40), region=st.text(max_size=64),
       service=st.sampled_from(SERVICES), seq=st.integers(0, 2**63 - 1),
       prices=st.dictionaries(st.sampled_from(["fuel", "cpu_s", "gb_h"]), st.integers(0, 10**15),
                              min_size=1), uptime=st.integers(0, 10_000))
def test_offer_round_trip(cores, mem, region, service, seq, prices, uptime) -> None:
    o = sign_offer(A, id="o-1", seq=seq, service=service, cores=cores, memory_mib=mem,
                   disk_mib=mem, region=region, prices=prices, uptime_bp=uptime,
                   issued=int(NOW), valid_until=int(NOW) + 60)
    back = decode_offer(o.encode())
    assert back == o and back.peer == o.peer
    assert decode_offer_gossip(o.encode()) == o


def test_withdraw_demand_bid_round_trip() -> None:
    w = sign_withdraw(A, id="o1", seq=3, issued=int(NOW))
    assert decode_withdraw(w.encode()) == w and decode_offer_gossip(w.encode()) == w
    d = demand(A, "(&(cores>=2)(region=eu-*))", replication=3, usage={"fuel": 5, "gb_h": 0})
    back = decode_demand(d.encode())
    assert back == d and back.filter.terms == 2 and back.demand_id == d.demand_id
    b = sign_bid(B, demand=d.demand_id, offer="o1", price=50, seq=1, issued=int(NOW),
                 valid_until=int(NOW) + 30)
    assert decode_bid(b.encode()) == b


@pytest.mark.parametrize("change, needle", [
    (lambda r: r.update(cores="4"), "field 'cores' must be an integer"),
    (lambda r: r.pop("region"), "missing field 'region'"),
    (lambda r: r.update(region="x" * 65), "field 'region' is 65 characters"),
    (lambda r: r.update(v=2), "unknown version 2"),
    (lambda r: r.update(extra=1), "unknown field(s) ['extra']"),
    (lambda r: r.update(service="bitcoin"), "unknown service 'bitcoin'"),
    (lambda r: r.update(prices={"gpu_h": 1}), "unknown unit 'gpu_h'"),
    (lambda r: r.update(prices={}), "field 'prices' names no unit"),
    (lambda r: r.update(prices={"fuel": -1}), "fuel must be an integer"),
    (lambda r: r.update(uptime_bp=10_001), "field 'uptime_bp' = 10001 is above 10000"),
    (lambda r: r.update(valid_until=r["issued"]), "lifetime"),
    (lambda r: r.update(valid_until=r["issued"] + 8 * 86400), "lifetime"),
    (lambda r: r.update(id="a b"), "field 'id' must be"),
    (lambda r: r.update(provider=b"\0" * 31), "field 'provider' must be 32 bytes"),
    (lambda r: r.update(t="demand"), "type 'demand' is not 'offer'"),
])
def test_offer_refusals_name_the_field(change, needle) -> None:
    raw = unpack(offer(A).encode())
    change(raw)
    _refused(decode_offer, _resign(raw), RejectReason.MALFORMED, needle)


def test_offer_forged_oversize_and_garbage() -> None:
    raw = unpack(offer(A).encode())
    raw["cores"] = 64                                     # altered after signing
    _refused(decode_offer, pack(raw), RejectReason.BAD_SIGNATURE, "not signed")
    raw = unpack(offer(A).encode())
    _refused(decode_offer, _resign(raw, B), RejectReason.BAD_SIGNATURE, "not signed")
    _refused(decode_offer, b"\x00" * (MAX_OFFER_BYTES + 1), RejectReason.OVERSIZE, "over")
    _refused(decode_offer, b"\xc1garbage", RejectReason.MALFORMED, "msgpack")
    _refused(decode_offer, pack([1, 2]), RejectReason.MALFORMED, "expected a map")
    _refused(decode_offer_gossip, pack({"v": 1, "t": "bid"}), RejectReason.MALFORMED, "'t'")


def test_offer_non_canonical_is_refused() -> None:
    raw = unpack(offer(A).encode())
    raw["uptime_bp"] = True                               # bool where an int belongs
    _refused(decode_offer, _resign(raw), RejectReason.MALFORMED, "uptime_bp")


def test_demand_refusals() -> None:
    raw = unpack(demand(A).encode())
    raw["constraints"] = "(cores>=4"
    e = _refused(decode_demand, _resign(raw), RejectReason.MALFORMED, "field 'constraints'")
    assert "at 9" in str(e)
    for change, needle in [(dict(replication=0), "'replication' = 0 is below 1"),
                           (dict(replication=17), "above 16"),
                           (dict(budget=0), "'budget' = 0 is below 1"),
                           (dict(deadline=int(NOW)), "'deadline' is not after"),
                           (dict(usage={}), "names no unit"),
                           (dict(constraints="x" * 1025), "'constraints' is 1025 characters")]:
        raw = unpack(demand(A).encode())
        raw.update(change)
        _refused(decode_demand, _resign(raw), RejectReason.MALFORMED, needle)


def test_bid_refusals() -> None:
    b = sign_bid(B, demand=b"\1" * 32, offer="o1", price=5, seq=1, issued=int(NOW),
                 valid_until=int(NOW) + 1)
    raw = unpack(b.encode())
    raw["demand"] = b"\1" * 31
    _refused(decode_bid, _resign(raw, B), RejectReason.MALFORMED, "'demand' must be 32 bytes")
    raw = unpack(b.encode())
    raw["price"] = 1.5
    _refused(decode_bid, _resign(raw, B), RejectReason.MALFORMED, "'price' must be an integer")


def _terms(round: int = 0) -> Terms:
    return Terms(nonce=b"n" * 16, round=round, customer=bytes(A.verify_key),
                 provider=bytes(B.verify_key), service="compute.wasm", offer="o1",
                 demand=b"d" * 32, prices=(("fuel", 10),), usage=(("fuel", 100),),
                 max_total=2000, start=int(NOW), deadline=int(NOW) + 600, debit_interval=120,
                 sla=SLA(9900, 500, 100))


def test_negotiation_messages_round_trip() -> None:
    t = _terms()
    p = sign_proposal(A, "customer", t)
    assert decode_negotiation(p.encode()) == p
    c = sign_proposal(B, "provider", t.revise(prices=(("fuel", 12),)))
    back = decode_negotiation(c.encode())
    assert isinstance(back, Proposal) and back.counter and back.terms.round == 1
    a = sign_accept(B, "provider", t)
    assert decode_negotiation(a.encode()) == a
    r = sign_reject(B, "provider", t.nonce, 0, "too cheap")
    assert decode_negotiation(r.encode()) == r and isinstance(r, Reject)
    ag = Agreement(t, sign_accept(A, "customer", t).sig, a.sig)
    assert ag.is_valid() and decode_negotiation(ag.encode()) == ag
    assert ag.agreement_id == t.terms_id and len(ag.agreement_id) == 32


def test_negotiation_refusals() -> None:
    t = _terms()
    # a proposal signed by the provider key while claiming to be the customer's
    p = sign_proposal(B, "customer", t)
    _refused(decode_negotiation, p.encode(), RejectReason.BAD_SIGNATURE, "not signed")
    # a proposal by the provider, and a counter in round 0
    raw = unpack(sign_proposal(B, "provider", t).encode())
    _refused(decode_negotiation, _resign(raw, B), RejectReason.MALFORMED, "only the customer")
    raw = unpack(sign_proposal(A, "customer", t).encode())
    raw["t"] = "counter"
    _refused(decode_negotiation, _resign(raw), RejectReason.MALFORMED, "cannot carry round 0")
    # an agreement with one signature forged
    ag = Agreement(t, sign_accept(A, "customer", t).sig, b"\0" * 64)
    _refused(decode_negotiation, ag.encode(), RejectReason.BAD_SIGNATURE, "both parties")
    # same keys on both sides, unknown message type, deadline before start
    raw = unpack(sign_proposal(A, "customer", t).encode())
    raw["terms"]["provider"] = raw["terms"]["customer"]
    _refused(decode_negotiation, _resign(raw), RejectReason.MALFORMED, "the same key")
    _refused(decode_negotiation, pack({"v": 1, "t": "exec"}), RejectReason.MALFORMED,
             "unknown message type 'exec'")
    raw = unpack(sign_proposal(A, "customer", t).encode())
    raw["terms"]["sla"]["max_response_ms"] = 0
    _refused(decode_negotiation, _resign(raw), RejectReason.MALFORMED, "max_response_ms")
    _refused(decode_negotiation, b"\x91" * 5000, RejectReason.OVERSIZE, "over")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_decoders_refuse_arbitrary_bytes_cleanly(data: bytes) -> None:
    for fn in (decode_offer, decode_offer_gossip, decode_withdraw, decode_demand, decode_bid,
               decode_negotiation):
        with pytest.raises(Rejected):
            fn(data, peer="p")
