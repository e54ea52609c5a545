"""Waiting for candidates (session/coordinator.py, issue 16) through the sans-IO cores
(tests/fl/harness.py, simulated clock): too few eligible candidates is not a failed try."""
from __future__ import annotations

from typing import Any

from fognode.protocols.fl.messages import RoundPlan, SessionSpec
from fognode.protocols.fl.session.coordinator import Coordinator, Phase, candidate_wait

from tests.fl.harness import Sim, SimNode
from tests.fl.test_session import spec


def _coordinator(sim: Sim, sid: bytes) -> Coordinator:
    c = sim.nodes[0].core.sessions[sid].coordinator
    assert c is not None
    return c


def _start_with_slow_loads(sim: Sim, sp: SessionSpec) -> tuple[bytes, Coordinator]:
    """Start `sp` on node 0 while every other node's task load is parked."""
    for nd in sim.nodes[1:]:
        nd.hold_prepare = True
    sid = sim.start(sp)
    return sid, _coordinator(sim, sid)


def test_candidates_arriving_late_are_planned_on_the_round_s_first_try() -> None:
    """Four of five task loads take longer than the opt-in window plus two deadlines (where
    the coordinator used to give up two tries): round 1 is planned as try 0 once they opt in."""
    sim = Sim(5)
    sp = spec(rounds=2, min_participants=4, deadline=4.0, max_retries=3, optin_seconds=1.0)
    sid, c = _start_with_slow_loads(sim, sp)
    start = sim.now
    sim.run_until(lambda: sim.now >= start + sp.optin_seconds + 2.5 * sp.deadline, 60)
    assert (c.phase, c.round_no, c.try_no, c.failures, c.plan) == (Phase.OPT_IN, 1, 0, [], None)
    assert sim.status(sid)["state"] == "running"
    for nd in sim.nodes[1:4]:
        sim.finish_prepare(nd)
    sim.run_until(lambda: sim.ended(sid), 300)
    st = sim.status(sid)
    assert st["state"] == "completed", st
    assert [(h["round"], h["tries"], h["failures"]) for h in st["history"]] == [(1, 1, []), (2, 1, [])]
    assert len(st["history"][0]["participants"]) == 4


def test_no_candidates_arriving_fails_the_session_after_the_wait() -> None:
    sim = Sim(4)
    sp = spec(rounds=2, min_participants=3, deadline=4.0, max_retries=2, optin_seconds=1.0)
    sid, c = _start_with_slow_loads(sim, sp)
    bound = sim.now + sp.optin_seconds + candidate_wait(sp)
    assert candidate_wait(sp) == sp.deadline * (1 + sp.max_retries)
    sim.run_until(lambda: sim.ended(sid), 60)
    st = sim.status(sid)
    assert st["state"] == "failed" and bound <= sim.now <= bound + 0.5, (st, sim.now, bound)
    assert st["reason"] == ("round 1: only 1 eligible candidates after waiting 12s for more, "
                            "fewer than the minimum 3"), st["reason"]
    assert (c.try_no, c.failures, c.plan) == (0, [], None)


def test_too_few_candidates_after_a_failed_try_wait_without_using_more_tries() -> None:
    """Round 1 runs with 4; round 2's try 0 fails and its try 1 finds too few: the wait
    starts then and ends the session after candidate_wait, with round 2 never tried."""
    sim = Sim(4)
    sp = spec(rounds=3, min_participants=3, participants=4, deadline=4.0, max_retries=1,
              optin_seconds=1.0)
    # two participants of round 2's first plan go offline when it is out: the try fails (too
    # few updates) and the next try finds too few candidates

    def kill_two(sender: SimNode, msg: Any) -> None:
        if isinstance(msg, RoundPlan) and (msg.round, msg.try_no) == (2, 0):
            sim.after_publish = None
            for nd in [nd for nd in sim.nodes[1:] if nd.peer in msg.peers][:2]:
                nd.alive = False
    sim.after_publish = kill_two
    sid = sim.start(sp)
    c = _coordinator(sim, sid)
    sim.run_until(lambda: (c.round_no, c.try_no, c.phase) == (2, 1, Phase.OPT_IN), 120)
    waited_from = sim.now
    # the try failed by this node's own RoundFailed (handed the plan's time): the wait starts
    # at the latest tick all the same
    assert (c.round_no, c.try_no) == (2, 1) and waited_from - 0.25 <= c.wait_from <= waited_from
    sim.run_until(lambda: sim.ended(sid), 120)
    st = sim.status(sid)
    assert st["state"] == "failed" and sim.now <= waited_from + candidate_wait(sp) + 0.5, st
    assert st["reason"].startswith("round 2: only 2 eligible candidates after waiting 8s"), st["reason"]
    assert c.try_no == 1
