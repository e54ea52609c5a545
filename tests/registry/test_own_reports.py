"""The observation rate limit and a busy aggregator (pending.py): the rule every node applies
stays one token per observation (60/min, burst 120), so a spammer is refused as before; a
node's own reports over it wait, merged per subject, service and outcome, and go as the budget
refills, so every report's weight is counted by the others, later rather than never."""
from __future__ import annotations

import pytest

from fognode.protocols.registry.actions import Action, Publish, Refused
from fognode.protocols.registry.config import RegistryConfig
from fognode.protocols.registry.core import OBSERVATIONS_TOPIC, RegistryCore
from fognode.protocols.registry.errors import RejectReason
from fognode.protocols.registry.observation import (ALL_SERVICES, MAX_WEIGHT, Outcome,
                                                    decode_observations)
from fognode.protocols.registry.record import make_profile

from .helpers import NOW, key
from .test_observation import obs, pid


def core(name: str) -> RegistryCore:
    return RegistryCore(key(name), RegistryConfig(), make_profile("eu-west", "server", ["fl"]),
                        pretrusted=[], now=NOW)


def published(actions: list[Action]) -> list[bytes]:
    return [a.data for a in actions if isinstance(a, Publish) and a.topic == OBSERVATIONS_TOPIC]


def trust(c: RegistryCore, observer: str) -> dict[str, float]:
    lt = c.book.local_trust("fl")
    return {lt.peers[int(j)]: float(v) for i, j, v in zip(lt.rows, lt.cols, lt.vals)
            if lt.peers[int(i)] == observer}


def test_a_busy_aggregator_has_every_report_counted_and_never_refused() -> None:
    """10 nodes, one fixed aggregator, a round every 0.3 s for 3 minutes: 600 rounds, 5400
    reports (the old rule sent 120 + 60/min of them and refused the rest). Its gossip reaches
    the receiver bunched up at first (everything of the first 10 s at once)."""
    agg, other = core("agg"), core("other")
    subjects = [pid(f"p{i}") for i in range(9)]
    sent: list[tuple[float, bytes]] = []
    refused_here: list[str] = []
    expected = {s: 0.0 for s in subjects}
    t = NOW
    for r in range(600):
        t = NOW + 0.3 * r
        outcomes = [Outcome(s, "fl", True, 0.05 + 0.01 * i, f"round {r}/{i}".encode())
                    for i, s in enumerate(subjects)]
        for o in outcomes:
            expected[o.subject] += o.weight
        actions, refused = agg.report_outcomes(outcomes, t)
        refused_here += refused
        sent += [(t, m) for m in published(actions + agg.tick(t))]
    end = t + 600
    while agg.own_reports.waiting and t < end:     # the reports still waiting leave
        t += 1.0
        sent += [(t, m) for m in published(agg.tick(t))]
    assert refused_here == [] and not agg.own_reports.waiting
    refusals: list[Refused] = []
    for at, m in sorted(sent, key=lambda x: max(x[0], NOW + 10)):
        refusals += [a for a in other.on_observation(agg.peer_id, m, max(at, NOW + 10))
                     if isinstance(a, Refused)]
    assert refusals == []
    got = trust(other, agg.peer_id)
    assert got.keys() == expected.keys()
    for s, w in expected.items():
        assert got[s] == pytest.approx(w, rel=1e-9), s
    # within the rule: at most the burst plus 60 a minute, of which our reserve was kept
    assert other.book.accepted <= 120 + (t - NOW)


def test_a_spammer_is_still_refused_past_the_burst_and_the_rate() -> None:
    receiver = core("receiver")
    spam = [obs("spammer", f"s{i % 5}", evidence=f"e{i}".encode(), ts=NOW) for i in range(200)]
    refused = [a.reason for a in receiver.on_observation(pid("spammer"), spam[0].encode(), NOW)]
    for o in spam[1:]:
        refused += [a.reason for a in receiver.on_observation(pid("spammer"), o.encode(), NOW)
                    if isinstance(a, Refused)]
    assert refused.count(RejectReason.RATE_LIMITED) == 80 and len(refused) == 80
    # a minute later: 60 more, not 61
    late = [obs("spammer", "s0", evidence=f"late{i}".encode(), ts=NOW + 60) for i in range(61)]
    refused = [a.reason for o in late
               for a in receiver.on_observation(pid("spammer"), o.encode(), NOW + 60)
               if isinstance(a, Refused)]
    assert refused == [RejectReason.RATE_LIMITED]


def test_waiting_reports_merge_keep_their_weight_and_their_evidence_counts_once() -> None:
    agg = core("agg")
    a, b = pid("a"), pid("b")
    fill = [Outcome(pid(f"f{i}"), "fl", True, 1.0, f"fill{i}".encode()) for i in range(108)]
    actions, refused = agg.report_outcomes(fill, NOW)       # the budget down to the reserve
    assert refused == [] and len(published(actions)) == 4 and not agg.own_reports.waiting
    waits = [Outcome(a, "fl", True, 70.0, b"r1"), Outcome(a, "fl", True, 70.0, b"r2"),
             Outcome(a, "fl", False, 2.0, b"r3"), Outcome(b, "fl", True, 1.0, b"r4")]
    actions, refused = agg.report_outcomes(waits, NOW)
    assert actions == [] and refused == [] and len(agg.own_reports.waiting) == 3
    _, refused = agg.report_outcomes([Outcome(a, "fl", True, 1.0, b"r2")], NOW)   # waiting already
    assert len(refused) == 1 and "already counted" in refused[0]
    sent = []
    for s in range(1, 10):
        sent += [o for m in published(agg.tick(NOW + s)) for o in decode_observations(m)]
    # a's 140 good went as 100 then 40; each observation distinct, none with a report's own id
    good_a = [o for o in sent if o.subject == a and o.ok]
    assert [o.weight for o in good_a] == [MAX_WEIGHT, 40.0]
    assert len({o.evidence for o in good_a}) == 2 and not {b"r1", b"r2"} & {o.evidence for o in good_a}
    assert [(o.weight, o.evidence) for o in sent if o.subject == b] == [(1.0, b"r4")]   # alone: as is
    assert trust(agg, agg.peer_id)[a] == pytest.approx(140.0 - 2.0)
    # once sent, the merged reports' evidence ids are counted: reporting one again is refused
    _, refused = agg.report_outcomes([Outcome(a, "fl", True, 1.0, b"r1")], NOW + 10)
    assert len(refused) == 1 and "already counted" in refused[0]
    assert agg.book.local_trust(ALL_SERVICES).vals.size == 108 + 2
