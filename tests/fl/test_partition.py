"""An FL session across a network split, through the sans-IO cores (tests/fl/harness.py): a
fallback coordinator cut off with a minority of the members never takes the session over, so
each round is planned, adopted and paid once, by the coordinator of the majority; members
that were away when the session ended learn it after the heal; a starter cut off with a
minority is replaced by the majority's fallback (session/quorum.py); a round result that
arrives after its try was given up on (plans travel slowly in a split) still completes the
round."""
from __future__ import annotations

from typing import Any

import pytest

from fognode.protocols.fl.messages import CoordinatorSilent, RoundPlan, RoundResult, coordinators_of
from fognode.protocols.fl.session.election import aggregator_order
from fognode.protocols.fl.session.standby import takeover_unit

from tests.fl.harness import Sim, SimNode
from tests.fl.test_session import spec


def _split_after_round_1(sim: Sim, minority: list[int]) -> list[float]:
    """Split the network into `minority` and the rest as soon as round 1's result is out;
    returns a list that gets the split's time."""
    at: list[float] = []
    majority = [nd.index for nd in sim.nodes if nd.index not in minority]

    def hook(sender: SimNode, msg: Any) -> None:
        if not at and isinstance(msg, RoundResult) and msg.receipt.round == 1:
            sim.partition([majority, minority])
            at.append(sim.now)
    sim.after_publish = hook
    return at


def _plans_by_rank(sim: Sim) -> dict[int, set[str]]:
    """Records, per coordinator rank, who published plans (installed after `hook`)."""
    seen: dict[int, set[str]] = {}
    inner = sim.after_publish

    def hook(sender: SimNode, msg: Any) -> None:
        if inner is not None:
            inner(sender, msg)
        if isinstance(msg, RoundPlan):
            seen.setdefault(msg.rank, set()).add(sender.peer)
    sim.after_publish = hook
    return seen


def _paid_rounds(sim: Sim) -> list[tuple[int, str, bytes]]:
    return sorted((p.receipt.round, p.receipt.aggregator, p.receipt.model_hash)
                  for nd in sim.nodes for p in nd.payments)


@pytest.mark.parametrize("cut_off", ["first fallback", "both fallbacks"])
def test_a_fallback_cut_off_with_a_minority_never_takes_over_and_each_round_pays_once(cut_off: str) -> None:
    """The first fallback and a member (or both fallbacks) are cut off after round 1."""
    sim = Sim(5)
    sid = sim.start(spec(rounds=4, reward_budget=4_000_000))
    ann = sim.nodes[0].core.sessions[sid].ann
    coords = coordinators_of(ann)
    fb1 = sim.by_peer[coords[1]]
    other = sim.by_peer[coords[2]] if cut_off == "both fallbacks" else \
        next(nd for nd in sim.nodes[1:] if nd.peer not in coords)
    minority = [fb1.index, other.index]
    split_at = _split_after_round_1(sim, minority)
    plans = _plans_by_rank(sim)
    unit = takeover_unit(ann.spec, 2.0)
    sim.run_until(lambda: bool(split_at), 200)
    # the majority plans on (its rounds wait out the cut-off members); the minority falls
    # silent, votes, and has no majority: its fallback stays a fallback
    sim.run_until(lambda: sim.now >= split_at[0] + 4 * unit, 10 * unit)
    fb_session = fb1.core.sessions[sid]
    assert fb_session.coordinator is None and fb_session.standby is not None, "the cut-off fallback took over"
    assert set(fb_session.votes) == {fb1.peer, other.peer}     # only the minority's votes
    assert sim.status(sid)["rounds_done"] >= 2, "the majority made no progress during the split"
    sim.heal()
    sim.run_until(lambda: all(sim.ended(sid, nd.index) for nd in sim.nodes), 20 * unit)
    st = sim.status(sid)
    assert st["state"] == "completed" and [h["round"] for h in st["history"]] == [1, 2, 3, 4]
    assert set(plans) == {0} and plans[0] == {sim.nodes[0].peer}, plans
    for nd in sim.nodes:
        s = sim.status(sid, nd.index)
        assert (s["state"], s["acting_coordinator"]) == ("completed", sim.nodes[0].peer), (nd.index, s)
    # each round paid once, by the aggregator whose model the starter adopted
    assert _paid_rounds(sim) == sorted((h["round"], h["aggregator"], bytes.fromhex(h["model_hash"]))
                                       for h in st["history"])


def test_members_cut_off_when_the_session_ended_learn_it_after_the_heal() -> None:
    """The majority ends the session while two members are cut off (its SessionEnded and its
    republishes never reach them); after the heal their silence votes ask, and the starter
    answers with its SessionEnded."""
    sim = Sim(5)
    sid = sim.start(spec(rounds=2))
    ann = sim.nodes[0].core.sessions[sid].ann
    minority = [nd.index for nd in sim.nodes[1:] if nd.peer not in coordinators_of(ann)][:2]
    split_at = _split_after_round_1(sim, minority)
    sim.run_until(lambda: bool(split_at), 200)
    sim.run_until(lambda: sim.ended(sid), 200)
    unit = takeover_unit(ann.spec, 2.0)
    sim.run_until(lambda: sim.now >= split_at[0] + 6 * unit, 10 * unit)   # every republish is over
    assert not any(sim.ended(sid, i) for i in minority)
    asked: list[str] = []
    inner = sim.after_publish

    def count(sender: SimNode, msg: Any) -> None:
        if inner is not None:
            inner(sender, msg)
        if isinstance(msg, CoordinatorSilent):
            asked.append(sender.peer)
    sim.after_publish = count
    sim.heal()
    sim.run_until(lambda: all(sim.ended(sid, i) for i in minority), 3 * unit)
    assert sim.status(sid)["state"] == "completed"
    assert {sim.status(sid, i)["state"] for i in minority} == {"completed"}
    assert asked and set(asked) <= {sim.nodes[i].peer for i in minority}


def test_a_starter_cut_off_with_a_minority_is_replaced_by_the_majority() -> None:
    """The starter and one member are cut off: the majority's members vote, its first fallback
    takes over with their quorum and completes the session; on heal the starter steps down."""
    sim = Sim(5)
    sid = sim.start(spec(rounds=4))
    ann = sim.nodes[0].core.sessions[sid].ann
    coords = coordinators_of(ann)
    other = next(nd for nd in sim.nodes[1:] if nd.peer not in coords)
    split_at = _split_after_round_1(sim, [0, other.index])
    unit = takeover_unit(ann.spec, 2.0)
    sim.run_until(lambda: bool(split_at), 200)
    fb1 = sim.by_peer[coords[1]]
    sim.run_until(lambda: fb1.core.sessions[sid].coordinator is not None, 6 * unit)
    sim.run_until(lambda: sim.ended(sid, fb1.index), 40 * unit)
    sim.heal()
    sim.run_until(lambda: all(sim.ended(sid, nd.index) for nd in sim.nodes), 20 * unit)
    st = sim.status(sid, fb1.index)
    assert st["state"] == "completed" and st["acting_coordinator"] == fb1.peer
    assert [h["round"] for h in st["history"]] == [1, 2, 3, 4]
    for nd in sim.nodes:
        assert sim.status(sid, nd.index)["state"] == "completed", nd.index


def test_a_late_result_of_a_try_given_up_on_completes_the_round_and_is_paid_once() -> None:
    """Round 2's results are held back until the coordinator planned try 1 (its try 0 timed
    out); then try 0's result arrives: the coordinator adopts it, and only its aggregator pays
    round 2."""
    sim = Sim(5)
    sid = sim.start(spec(rounds=3, reward_budget=3_000_000))
    coord = sim.nodes[0].core.sessions[sid].coordinator
    assert coord is not None
    sim.hold = lambda sender, msg: isinstance(msg, RoundResult) and msg.receipt.round == 2
    sim.run_until(lambda: coord.round_no == 2 and coord.try_no >= 1 and len(sim.held) >= 2, 200)
    late = next(a.msg for _, a in sim.held if a.msg.receipt.try_no == 0)
    sim.release(lambda msg: msg is late)
    sim.hold = None
    sim.release()
    sim.run_until(lambda: all(sim.ended(sid, nd.index) for nd in sim.nodes), 200)
    st = sim.status(sid)
    assert st["state"] == "completed" and [h["round"] for h in st["history"]] == [1, 2, 3]
    r2 = st["history"][1]
    assert (r2["aggregator"], r2["model_hash"]) == (late.receipt.aggregator, late.receipt.model_hash.hex())
    assert _paid_rounds(sim) == sorted((h["round"], h["aggregator"], bytes.fromhex(h["model_hash"]))
                                       for h in st["history"])


def test_participants_ask_an_aggregator_without_the_plan_again_instead_of_moving_on() -> None:
    """The primary aggregator of a round gets its plan 5 s late and the second one is cut off:
    the participants, refused with "unknown round", ask the primary again after a short wait
    (never the cut-off one while the primary's slot lasts), and it completes the round."""
    sim = Sim(5)
    starter = sim.nodes[0]
    late: dict[str, Any] = {}

    def deaf(receiver: SimNode, msg: Any) -> bool:
        if isinstance(msg, RoundPlan) and not late and msg.try_no == 0:
            order = aggregator_order(msg.seed, msg.participants, 3)
            if starter.peer not in order[:2]:
                late.update(round=msg.round, order=order, t0=sim.now, until=sim.now + 5.0)
                sim.partition([[nd.index for nd in sim.nodes if nd.peer != order[1]],
                               [sim.by_peer[order[1]].index]])
        return bool(late) and isinstance(msg, RoundPlan) and msg.round == late["round"] \
            and receiver.peer == late["order"][0] and sim.now < late["until"]
    sim.deaf = deaf
    sid = sim.start(spec(rounds=4))
    sim.run_until(lambda: bool(late) and sim.status(sid)["rounds_done"] >= late["round"], 200)
    sim.heal()
    rnd, (first, cut_off, third), t0 = late["round"], late["order"], late["t0"]
    assert sim.status(sid)["history"][rnd - 1]["aggregator"] == first
    sends = [(t, act.to, why) for t, _, act, why in sim.send_log if act.round == rnd]
    delivered = [t for t, to, why in sends if to == first and why == ""]
    assert delivered and all(to == first for t, to, _ in sends if t < t0 + 10.0), sends
    refused = [t for t, to, why in sends if why == "unknown round"]
    assert refused and max(refused) < min(delivered)
    # the primary had the plan at the next republish (2 s) and was asked again within 2 s
    assert min(delivered) <= late["until"] + 2.0 + 2.0 + 0.5, sends
    sim.run_until(lambda: sim.ended(sid), 200)
    assert sim.status(sid)["state"] == "completed"


def test_an_aggregator_whose_plan_is_50_ms_late_gets_the_updates_about_0_1_s_after_the_plan() -> None:
    """The gossip fan-out of a busy machine brings a round's plan to its aggregator after the
    participants that need no model fetch trained and sent (bench.fl, 10 daemons: 50-150 ms):
    refused with "unknown round", they ask it again 0.1 s later (rounds.py NOT_YET_DELAY), not
    0.5 s later, and the round completes within 0.2 s of its plan."""
    sim = Sim(4)
    starter = sim.nodes[0]
    late: dict[str, Any] = {}

    def deaf(receiver: SimNode, msg: Any) -> bool:
        if isinstance(msg, RoundPlan) and not late and msg.try_no == 0 and msg.round >= 2:
            agg = aggregator_order(msg.seed, msg.participants, 3)[0]
            if agg != starter.peer:
                late.update(plan=msg, aggregator=sim.by_peer[agg], t0=sim.now)
        return bool(late) and msg is late["plan"] and receiver is late["aggregator"]
    sim.deaf = deaf
    sid = sim.start(spec(rounds=4))
    sim.run_until(lambda: bool(late), 200, dt=0.05)
    sim.step(0.05)                      # the plan reaches its aggregator 50 ms late
    agg = late["aggregator"]
    sim._run(agg, agg.core.receive(starter.peer, late["plan"], sim.now))
    rnd, t0 = late["plan"].round, late["t0"]
    sim.run_until(lambda: sim.status(sid)["rounds_done"] >= rnd, 30, dt=0.05)
    sends = [(t, act.to, why) for t, _, act, why in sim.send_log if act.round == rnd]
    refused = [t for t, to, why in sends if why == "unknown round"]
    delivered = [t for t, to, why in sends if to == agg.peer and why == ""]
    assert refused and all(t == t0 for t in refused), sends     # sent at once, before the plan
    assert delivered and max(delivered) <= t0 + 0.1 + 0.05 + 1e-9, sends
    assert sim.status(sid)["history"][rnd - 1]["aggregator"] == agg.peer
    assert sim.now <= t0 + 0.25
    sim.run_until(lambda: sim.ended(sid), 200)
    assert sim.status(sid)["state"] == "completed"


@pytest.mark.xfail(strict=True, reason=(
    "known defect (session 33): takeover votes count the last plan's participants as each member "
    "knows it; the coordinator re-plans with a new membership the cut-off members never see, so a "
    "split that leaves a fallback with a majority of the old plan's participants lets it take over "
    "while the starter goes on: two coordinators, rounds adopted twice. Found by CI in "
    "tests/faults/test_fl_partition.py; the fix needs one membership both sides agree on (see the "
    "README's FL takeover paragraph)"))
def test_a_split_of_a_small_rounds_participants_does_not_give_the_session_two_coordinators() -> None:
    """Rounds of 3 participants out of 5 nodes. The network splits while round 2 runs, cutting
    off its two participants other than the starter, one of them a fallback coordinator: they
    hold 2 of the 3 members of the last plan they know, vote, and the fallback takes over; the
    starter, on the larger side, retries round 2 with a new plan and goes on. The property:
    one coordinator plans at a time."""
    for seed in range(60):
        sim = Sim(5, rng_seed=seed)
        sid = sim.start(spec(rounds=4, participants=3, min_participants=2))
        ann = sim.nodes[0].core.sessions[sid].ann
        fallbacks = set(coordinators_of(ann)[1:])
        at: list[float] = []

        def hook(sender: SimNode, msg: Any) -> None:
            if not at and isinstance(msg, RoundPlan) and msg.round == 2 and msg.rank == 0:
                others = [p for p, _ in msg.participants if p != sim.nodes[0].peer]
                if len(others) == 2 and fallbacks & set(others):
                    cut = [sim.by_peer[p].index for p in others]
                    sim.partition([[nd.index for nd in sim.nodes if nd.index not in cut], cut])
                    at.append(sim.now)
        sim.after_publish = hook
        plans = _plans_by_rank(sim)
        sim.run_until(lambda: bool(at) or sim.ended(sid), 200)
        if not at:
            continue                 # round 2 drew another set of participants: next seed
        unit = takeover_unit(ann.spec, 2.0)
        sim.run_until(lambda: sim.now >= at[0] + 6 * unit, 10 * unit)
        assert set(plans) == {0}, f"seed {seed}: ranks {sorted(plans)} planned during the split"
        return
    pytest.skip("no seed drew round 2's participants as the scenario needs")
