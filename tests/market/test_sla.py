"""The SLA monitor (sla.py) on a fake clock, its agreement with the ledger's slashing rule,
the probe/pong and service-stream codecs (sla_messages.py), and the SLA terms' checks."""
from __future__ import annotations

from typing import Any, Callable

import pytest
from hypothesis import given, settings, strategies as st

from fognode.ledger.escrow import Escrow, state_problem
from fognode.ledger.escrow_orders import BreachReport, EscrowSlashOrder
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import pack, unpack
from fognode.protocols.market.agreement import SLA, Terms, decode_negotiation, decode_terms, sign_accept
from fognode.protocols.market.errors import Rejected
from fognode.protocols.market.jobwire import Simple
from fognode.protocols.market.sla import (MIN_PROBES, SlaMonitor, WindowVerdict, answers_request, breached,
                                          note_to_sign, prorata_due)
from fognode.protocols.market.sla_messages import (Probe, Ready, decode_pong, decode_probe, decode_service,
                                                   sign_pong)
from tests.market.helpers import NOW, key

CUST, PROV = key("customer"), key("provider")
SLA_TERMS = SLA(uptime_bp=9000, max_response_ms=500, penalty=2_000_000, collateral=5_000_000, window=10)


class FakeClock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def drive(mon: SlaMonitor, clock: FakeClock, until: float,
          answer: Callable[[float], int | None]) -> list[WindowVerdict]:
    """Probe on schedule until `until`; `answer(t)` gives the round trip in ms or None."""
    verdicts = []
    while clock.t < until:
        clock.t = max(clock.t, mon.next_probe())
        if clock.t >= until:
            break
        mon.record(clock.t, answer(clock.t))
        verdicts += mon.tick(clock.t)
        clock.t += 0.001
    return verdicts


def test_an_outage_breaches_exactly_the_windows_it_covers_and_the_penalty_is_capped() -> None:
    clock = FakeClock()
    mon = SlaMonitor(SLA_TERMS, NOW, NOW + 60, probe_interval=1.0)
    assert mon.window_count == 6
    down = (NOW + 20, NOW + 42)          # windows 2 and 3 wholly, window 4 for 2 s of 10

    verdicts = drive(mon, clock, NOW + 60, lambda t: None if down[0] <= t < down[1] else 40)
    verdicts += mon.tick(NOW + 70)
    assert [v.window for v in verdicts] == [0, 1, 2, 3, 4, 5]        # each window judged once
    assert [v.window for v in mon.breaches()] == [2, 3, 4]           # 8 of 10 answered < 90 %
    w4 = mon.verdict(4)
    assert (w4.probes, w4.failures) == (10, 2)
    assert mon.penalty_due() == 5_000_000                           # 3 * 2 capped at the collateral
    acc = mon.compliance(NOW + 70)
    assert acc["breached_windows"] == [2, 3, 4] and not acc["compliant"] and not acc["probing"]
    assert acc["probes"] == 60 and acc["failures"] == 22 and acc["rtt_max_ms"] == 40
    assert mon.tick(NOW + 1000) == []


def test_slow_answers_are_failures_and_a_window_with_too_few_probes_is_not_judged() -> None:
    clock = FakeClock()
    mon = SlaMonitor(SLA_TERMS, NOW, NOW + 30, probe_interval=1.0)
    drive(mon, clock, NOW + 10, lambda t: 501)                       # window 0: all too slow
    clock.t = NOW + 20                                               # window 1: the customer was away
    mon.record(NOW + 15, 10)
    mon.record(NOW + 16, None)
    drive(mon, clock, NOW + 30, lambda t: 499)                       # window 2: all in time
    mon.tick(NOW + 40)
    v0, v1, v2 = mon.windows()
    assert v0.breached and v0.failures == v0.probes == 10
    assert not v1.judged and not v1.breached and v1.probes == 2 < MIN_PROBES
    assert v2.judged and not v2.breached
    assert [v.window for v in mon.breaches()] == [0]


def test_probes_outside_the_windows_or_after_judgement_do_not_count() -> None:
    mon = SlaMonitor(SLA_TERMS, NOW, NOW + 25, probe_interval=1.0)   # windows 0 and 1; 20..25 is not one
    assert mon.window_count == 2
    mon.record(NOW - 1, None)
    mon.record(NOW + 22, None)
    for i in range(5):
        mon.record(NOW + i, 10)
    assert [v.window for v in mon.tick(NOW + 11)] == [0]
    mon.record(NOW + 5, None)                                        # late, window 0 was judged
    assert mon.verdict(0).failures == 0 and mon.counts.get(0) == [5, 0]
    assert mon.done(NOW + 20) and not mon.done(NOW + 19)


def test_the_monitor_survives_its_record() -> None:
    clock = FakeClock()
    mon = SlaMonitor(SLA_TERMS, NOW, NOW + 60, probe_interval=2.0)
    drive(mon, clock, NOW + 35, lambda t: None if t > NOW + 20 else 30)
    back = SlaMonitor.from_record(SLA_TERMS, unpack(pack(mon.to_record())))
    assert back.to_record() == mon.to_record()
    assert back.compliance(clock.t) == mon.compliance(clock.t)
    assert [v.window for v in back.breaches()] == [2]


@settings(max_examples=300, deadline=None)
@given(probes=st.integers(1, 200), failures=st.integers(0, 200), uptime_bp=st.integers(0, 10_000))
def test_the_monitor_claims_exactly_what_the_validators_accept(probes: int, failures: int, uptime_bp: int) -> None:
    """What the customer's monitor calls a breach is what escrow.state_problem lets it slash
    (given a signed report and collateral): one rule on both sides."""
    failures = min(failures, probes)
    sla = SLA(uptime_bp=uptime_bp, penalty=1, collateral=10)
    esc = b"e" * 32
    e = Escrow(customer=bytes(CUST.verify_key), payee=bytes(PROV.verify_key), agreement=b"a" * 32, amount=100,
               deadline=int(NOW), grace=3600, uptime_ppm=100 * uptime_bp, penalty=1,
               witnesses=(bytes(CUST.verify_key),), threshold=1, collateral=10)
    body = BreachReport(esc, 0, probes, failures, ())
    report = BreachReport(esc, 0, probes, failures, (body.witness_signature(CUST),))
    order = EscrowSlashOrder(chain="c", epoch=0, sender=bytes(CUST.verify_key), sequence=0, fee=0, escrow=esc,
                             escrow_sequence=1, report=report)
    accepted = state_problem(e, order) is None
    assert breached(sla, probes, failures, min_probes=1) == accepted


def test_a_report_without_the_witness_signature_is_refused_by_the_validators() -> None:
    esc = b"e" * 32
    e = Escrow(customer=bytes(CUST.verify_key), payee=bytes(PROV.verify_key), agreement=b"a" * 32, amount=100,
               deadline=int(NOW), grace=3600, uptime_ppm=990_000, penalty=1,
               witnesses=(bytes(CUST.verify_key),), threshold=1, collateral=10)
    forged = BreachReport(esc, 0, 10, 10, (BreachReport(esc, 0, 10, 10, ()).witness_signature(PROV),))
    order = EscrowSlashOrder(chain="c", epoch=0, sender=bytes(CUST.verify_key), sequence=0, fee=0, escrow=esc,
                             escrow_sequence=1, report=forged)
    problem = state_problem(e, order)
    assert problem is not None and "witness" in problem[1]


def test_prorata_due() -> None:
    assert prorata_due(1000, NOW, NOW + 100, NOW - 5) == 0
    assert prorata_due(1000, NOW, NOW + 100, NOW + 33.9) == 330
    assert prorata_due(1000, NOW, NOW + 100, NOW + 500) == 1000


@pytest.mark.parametrize("skew", [-30.0, -8.0, -4.0, 0.0, 4.0, 8.0, 30.0])
def test_debit_notes_under_clock_skew(skew: float) -> None:
    """The provider's clock is `skew` s ahead of the customer's. Within the 5 s margin every
    request is paid in full; up to 15 s behind the provider still counts the clamped note as an
    answer (it loses at most the skew's worth); a customer further behind looks unpaying, and
    no skew ever makes the customer sign more than its own clock plus the margin says."""
    cost, start, deadline, margin = 600_000, NOW, NOW + 600, 5.0
    signed, paid_in_full, answered = 0, True, True
    for t in range(10, 600, 10):                          # the customer's clock
        asked_at = NOW + t + skew
        asked = prorata_due(cost, start, deadline, asked_at)
        note = note_to_sign(asked, signed, cost, cost, start, deadline, NOW + t, margin)
        assert note <= prorata_due(cost, start, deadline, NOW + t + margin) or note == signed
        assert note >= signed
        signed = note
        paid_in_full &= note >= asked
        answered &= answers_request(note, asked, cost, start, deadline, asked_at, margin)
    assert paid_in_full == (skew <= margin)
    assert answered == (skew <= 3 * margin)


# ---- wire ------------------------------------------------------------------------------------

def test_a_pong_answers_only_its_probe_signed_by_the_provider() -> None:
    p = Probe(b"c" * 32, 7, b"n" * 16)
    pong = decode_pong(unpack(pack(sign_pong(PROV, p, True).wire())))
    assert pong.answers(p, bytes(PROV.verify_key))
    assert not pong.answers(p, bytes(CUST.verify_key))                       # someone else's key
    assert not pong.answers(Probe(p.contract, 7, b"m" * 16), bytes(PROV.verify_key))   # another nonce
    assert not pong.answers(Probe(p.contract, 8, p.nonce), bytes(PROV.verify_key))
    assert not sign_pong(PROV, p, False).answers(p, bytes(PROV.verify_key))  # "not running"
    assert decode_probe(unpack(pack(p.wire()))) == p


@pytest.mark.parametrize("mutate, field", [
    (lambda m: m.update(nonce=b"short"), "nonce"),
    (lambda m: m.update(ok="yes"), "ok"),
    (lambda m: m.update(seq=-1), "seq"),
    (lambda m: m.update(extra=1), "extra"),
    (lambda m: m.update(t="probe"), "pong"),
    (lambda m: m.pop("sig"), "sig"),
])
def test_bad_pongs_are_refused_naming_the_field(mutate: Callable[[dict[str, Any]], Any], field: str) -> None:
    m = sign_pong(PROV, Probe(b"c" * 32, 1, b"n" * 16), True).wire()
    mutate(m)
    with pytest.raises(RemoteProtocolError) as e:
        decode_pong(unpack(pack(m)), peer="p")
    assert field in str(e.value)


def test_the_service_stream_takes_its_own_messages_only() -> None:
    assert decode_service({"v": 1, "t": "ready", "collateral": 5}) == Ready(5)
    assert decode_service({"v": 1, "t": "debit", "due": 3}) == Simple("debit", due=3)
    for bad in ({"v": 1, "t": "task"}, {"v": 1, "t": "ready", "collateral": -1}, {"v": 1, "t": "blob"}):
        with pytest.raises(RemoteProtocolError):
            decode_service(bad, peer="p")


def _terms(sla: SLA) -> Terms:
    return Terms(nonce=b"n" * 16, round=0, customer=bytes(CUST.verify_key), provider=bytes(PROV.verify_key),
                 service="fog.hosting", offer="o1", demand=b"d" * 32, prices=(("gb_h", 10),), usage=(("gb_h", 1),),
                 max_total=10, start=int(NOW), deadline=int(NOW) + 60, debit_interval=5, sla=sla)


def test_sla_terms_round_trip_and_a_penalty_over_the_collateral_is_refused() -> None:
    t = _terms(SLA_TERMS)
    assert decode_terms(pack(t.body())) == t
    bad = _terms(SLA(penalty=6, collateral=5))
    with pytest.raises(RemoteProtocolError) as e:
        decode_terms(pack(bad.body()))
    assert "penalty" in str(e.value)
    from fognode.protocols.market.agreement import Agreement
    ag = Agreement(bad, sign_accept(CUST, "customer", bad).sig, sign_accept(PROV, "provider", bad).sig)
    with pytest.raises(Rejected) as r:
        decode_negotiation(ag.encode(), peer="p")
    assert "penalty" in str(r.value)
