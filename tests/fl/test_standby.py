"""A fallback coordinator's standby history through the sans-IO cores (tests/fl/harness.py):
whatever way a completed round reached the fallback, the history it reports after taking the
session over has every round. Three ways a round-1 result used to be lost to it: its task was
still loading when the round ran (the result came before it followed any plan), the result
was of a try the coordinator had already given up on (late, and adopted), and the plan never
reached it (only the result and the next plan, which builds on that result, did)."""
from __future__ import annotations

from typing import Any

from fognode.protocols.fl.messages import RoundPlan, RoundResult, coordinators_of
from fognode.protocols.fl.session.election import aggregator_order
from fognode.protocols.fl.session.standby import choose_fallbacks

from tests.fl.harness import Sim, SimNode
from tests.fl.test_session import spec


def _first_fallback(sim: Sim) -> SimNode:
    """The first fallback of the session `sim.start` will announce (same nonce, same pool)."""
    peers = [nd.peer for nd in sim.nodes[1:]]
    return sim.by_peer[choose_fallbacks(bytes([1]) * 16, sim.nodes[0].peer, peers, 2)[0]]


def _finish_after_takeover(sim: Sim, sid: bytes, fb: SimNode, kill_round: int = 3) -> dict[str, Any]:
    """The starter dies right after planning `kill_round`; the fallback completes the session."""
    assert coordinators_of(sim.nodes[0].core.sessions[sid].ann)[1] == fb.peer
    sim.kill_starter_at_round = kill_round
    sim.run_until(lambda: sim.ended(sid, fb.index), 600)
    st = sim.status(sid, fb.index)
    assert st["state"] == "completed" and st["role"] == "coordinator", st
    assert any("taken over by" in f for h in st["history"] for f in h["failures"])
    return st


def test_a_fallback_whose_task_loaded_after_round_1_still_records_it() -> None:
    sim = Sim(5)
    fb = _first_fallback(sim)
    fb.hold_prepare = True
    first: list[RoundResult] = []

    def load_after_round_1(sender: SimNode, msg: Any) -> None:
        if isinstance(msg, RoundResult) and msg.receipt.round == 1 and not first:
            first.append(msg)
            sim.after_publish = None
            sim.finish_prepare(fb)
    sim.after_publish = load_after_round_1
    sid = sim.start(spec(rounds=4))
    st = _finish_after_takeover(sim, sid, fb)
    # round 1 as the starter ran it (before, the fallback went on from round 0 and redid it)
    assert [h["round"] for h in st["history"]] == [1, 2, 3, 4]
    r1 = st["history"][0]
    assert r1["model_hash"] == first[0].receipt.model_hash.hex() and fb.peer not in r1["participants"]
    assert not any("taken over" in f for f in r1["failures"])


def test_a_fallback_records_a_late_result_of_a_try_given_up_on() -> None:
    """The results of the first round another node than the starter aggregates are held until
    the coordinator planned the round's try 1, then try 0's arrives: the coordinator adopts
    it, and so does the fallback's history."""
    sim = Sim(5)
    fb, starter = _first_fallback(sim), sim.nodes[0]
    late_round: list[int] = []

    def pick(sender: SimNode, msg: Any) -> None:
        if isinstance(msg, RoundPlan) and not late_round and msg.try_no == 0 and \
                aggregator_order(msg.seed, msg.participants, 3)[0] != starter.peer:
            late_round.append(msg.round)
    sim.after_publish = pick
    sim.hold = lambda sender, msg: isinstance(msg, RoundResult) and msg.receipt.round in late_round
    sid = sim.start(spec(rounds=6))
    coord = starter.core.sessions[sid].coordinator
    assert coord is not None
    sim.run_until(lambda: coord.try_no >= 1 and any(a.msg.receipt.try_no == 0 for _, a in sim.held), 200)
    assert late_round[0] <= 4
    late = next(a.msg for _, a in sim.held if a.msg.receipt.try_no == 0)
    sim.hold = sim.after_publish = None
    sim.kill_starter_at_round = late_round[0] + 1
    sim.release(lambda msg: msg is late)    # the coordinator adopts it and plans the next round
    sim.held.clear()            # any other result of that round is lost
    st = _finish_after_takeover(sim, sid, fb, late_round[0] + 1)
    assert [h["round"] for h in st["history"]] == [1, 2, 3, 4, 5, 6]
    assert st["history"][late_round[0] - 1]["model_hash"] == late.receipt.model_hash.hex()


def test_a_fallback_that_missed_round_1s_plan_records_the_result_the_next_plan_builds_on() -> None:
    sim = Sim(5)
    fb = _first_fallback(sim)
    sim.deaf = lambda receiver, msg: receiver is fb and isinstance(msg, RoundPlan) and msg.round == 1
    sid = sim.start(spec(rounds=4))
    st = _finish_after_takeover(sim, sid, fb)
    assert [h["round"] for h in st["history"]] == [1, 2, 3, 4]
    r1 = st["history"][0]
    assert len(r1["accepted"]) >= 3 and set(r1["accepted"]) <= set(r1["participants"])
