"""Coordinator failover through the sans-IO cores (tests/fl/harness.py): the starter dies
mid-session and a fallback coordinator named in the announcement finishes it; the old starter
coming back does not split the session; plans and ends from non-coordinators are refused."""
from __future__ import annotations

import dataclasses

import pytest

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import pack
from fognode.protocols.fl.actions import MessageRefused
from fognode.protocols.fl.messages import (
    RoundPlan, RoundResult, SessionAnnouncement, SessionEnded, coordinators_of, decode_gossip, encode_gossip)
from fognode.protocols.fl.session.coordinator import Phase
from fognode.protocols.fl.session.standby import choose_fallbacks, takeover_unit

from tests.fl.harness import Sim, SimNode, wire
from tests.fl.test_session import spec


def _announcement(sim: Sim, sid: bytes) -> SessionAnnouncement:
    return sim.nodes[0].core.sessions[sid].ann


def _kill_starter_in_round(sim: Sim, sid: bytes, round_no: int) -> None:
    """The starter dies right after publishing its plan of `round_no` (rounds run in zero
    simulated time in the harness, so the kill is armed in its transport)."""
    sim.kill_starter_at_round = round_no
    sim.run_until(lambda: not sim.nodes[0].alive, 500)


def _fallback(sim: Sim, sid: bytes, rank: int = 1) -> SimNode:
    return sim.by_peer[coordinators_of(_announcement(sim, sid))[rank]]


def test_announcement_names_fallback_coordinators() -> None:
    sim = Sim(5)
    sid = sim.start(spec(rounds=1))
    ann = _announcement(sim, sid)
    coords = coordinators_of(ann)
    others = [nd.peer for nd in sim.nodes[1:]]
    assert coords[0] == sim.nodes[0].peer and len(coords) == 3
    assert coords[1:] == choose_fallbacks(ann.nonce, ann.starter, others, 2)
    # every node decodes the same list from the signed announcement
    got = decode_gossip(wire(encode_gossip(ann)), peer=ann.starter)
    assert isinstance(got, SessionAnnouncement) and coordinators_of(got) == coords
    assert got.session_id == sid
    # the list is signed: a relay cannot change it
    forged = dataclasses.replace(ann, fallback_coordinators=(others[3], others[2]))
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        decode_gossip(wire(encode_gossip(forged)), peer=ann.starter)
    # the starter is rank 0 and cannot be named again
    body = {**ann.to_wire(), "coords": [ann.starter]}
    with pytest.raises(RemoteProtocolError, match="coords"):
        SessionAnnouncement.decode(wire(pack(body)), peer=ann.starter)
    # no fallbacks: the wire form (and the id) has no "coords"
    bare = dataclasses.replace(ann, fallback_coordinators=())
    assert "coords" not in bare.body() and coordinators_of(bare) == (ann.starter,)
    assert Sim(5, coordinator_fallbacks=0).start(spec(rounds=1)) != sid


def test_starter_killed_mid_session_a_fallback_completes_it() -> None:
    sim = Sim(5)
    sid = sim.start(spec(rounds=6))
    _kill_starter_in_round(sim, sid, 3)
    fb = _fallback(sim, sid)
    sim.run_until(lambda: sim.ended(sid, fb.index), 600)
    st = sim.status(sid, fb.index)
    assert st["state"] == "completed" and st["reason"] == "" and st["rounds_done"] == 6, st
    assert st["role"] == "coordinator" and st["acting_coordinator"] == fb.peer
    # the whole history: the rounds it saw complete, then its own
    hist = st["history"]
    assert [h["round"] for h in hist] == [1, 2, 3, 4, 5, 6]
    took_over = [h for h in hist if any("taken over by" in f for f in h["failures"])]
    assert len(took_over) == 1 and took_over[0]["round"] in (3, 4)
    dead = sim.nodes[0].peer
    assert all(dead not in h["participants"] for h in hist if h["round"] >= took_over[0]["round"])
    assert all(len(h["accepted"]) >= 3 for h in hist)
    # the fallback saved the final model; every live node ends with it
    final = bytes.fromhex(st["model_hash"])
    assert fb.final == [final] and final in fb.saved
    for nd in sim.nodes[1:]:
        ps = nd.core.status(sid)
        assert ps["state"] == "completed" and ps["model_hash"] == st["model_hash"]
        assert ps["acting_coordinator"] == fb.peer
    # the second fallback never took over
    fb2 = _fallback(sim, sid, 2)
    assert fb2.core.sessions[sid].coordinator is None


def test_old_starter_coming_back_does_not_split_the_session() -> None:
    sim = Sim(5)
    sid = sim.start(spec(rounds=6))
    _kill_starter_in_round(sim, sid, 2)
    fb = _fallback(sim, sid)
    old = sim.nodes[0]

    def come_back(sender: SimNode, msg: object) -> None:
        # right after the fallback's first plan went out (the old starter missed it), the old
        # starter comes back with the state it had and carries on where it was
        if sender is fb and isinstance(msg, RoundPlan) and msg.rank == 1 and not old.alive:
            old.alive = True
            sim.after_publish = None
            sim._push(old, old.core.tick(sim.now))
    sim.after_publish = come_back
    sim.run_until(lambda: sim.ended(sid, fb.index) and sim.ended(sid, 0), 600)
    assert old.alive
    st = sim.status(sid, fb.index)
    assert st["state"] == "completed" and [h["round"] for h in st["history"]] == [1, 2, 3, 4, 5, 6]
    # what the old starter said after coming back was refused as superseded, never followed
    refused = [r for nd in sim.nodes[1:] for r in nd.refused_messages if r.peer == old.peer]
    assert refused and all("superseded by " + fb.peer in r.reason for r in refused)
    for nd in sim.nodes[1:]:
        s = nd.core.sessions[sid]
        assert s.acting == 1 and s.plan is not None and s.plan.rank == 1
    # it stepped down and learnt the outcome from the acting coordinator
    ost = sim.status(sid, 0)
    assert ost["role"] == "participant" and ost["acting_coordinator"] == fb.peer
    assert ost["state"] == "completed" and ost["model_hash"] == st["model_hash"]


def test_plans_and_ends_from_non_coordinators_are_refused_with_the_reason() -> None:
    sim = Sim(5)
    for nd in sim.nodes:
        nd.never_trains = True          # keep round 1 open
    sid = sim.start(spec(rounds=3))
    sim.run_until(lambda: sim.nodes[1].core.sessions[sid].plan is not None, 100)
    coords = coordinators_of(_announcement(sim, sid))
    outsider = next(nd for nd in sim.nodes if nd.peer not in coords)
    target = next(nd for nd in sim.nodes if nd is not outsider and nd.index != 0)
    s = target.core.sessions[sid]
    plan = s.plan
    assert plan is not None
    newer = dataclasses.replace(plan, try_no=plan.try_no + 1)

    def deliver(sender: str, msg: RoundPlan | SessionEnded) -> list[MessageRefused]:
        got = decode_gossip(wire(encode_gossip(msg)), peer=sender)   # rank travels on the wire
        acts = target.core.receive(sender, got, sim.now)
        assert all(isinstance(a, MessageRefused) for a in acts)
        return [a for a in acts if isinstance(a, MessageRefused)]

    [r] = deliver(outsider.peer, newer)
    assert r.kind == "plan" and "is not a coordinator of session" in r.reason
    [r] = deliver(outsider.peer, SessionEnded(sid, "failed", 0, plan.base_model_hash, "bogus"))
    assert r.kind == "ended" and "is not a coordinator" in r.reason
    # a real coordinator claiming another coordinator's rank
    [r] = deliver(coords[0], dataclasses.replace(newer, rank=1))
    assert "rank 0, not rank 1" in r.reason
    [r] = deliver(coords[1], dataclasses.replace(newer, rank=0))
    assert "rank 1, not rank 0" in r.reason
    assert s.plan is plan and not s.state.ended
    assert sim.status(sid, target.index)["acting_coordinator"] == coords[0]


def test_fallbacks_wait_their_turn() -> None:
    """The first fallback takes over one takeover unit after the last progress it heard; the
    others hear its plans and never take over."""
    sim = Sim(5, coordinator_fallbacks=3)
    sid = sim.start(spec(rounds=3))
    plans: list[tuple[float, int]] = []

    def watch(sender: SimNode, msg: object) -> None:
        if isinstance(msg, RoundResult) and not plans:
            results.append(sim.now)
        if isinstance(msg, RoundPlan) and msg.rank > 0 and (msg.round, msg.try_no) not in \
                {(p.round, p.try_no) for p in plans_seen}:
            plans.append((sim.now, msg.rank))
            plans_seen.append(msg)
    plans_seen: list[RoundPlan] = []
    results: list[float] = []
    sim.after_publish = watch
    _kill_starter_in_round(sim, sid, 2)
    fb1, fb2, fb3 = (_fallback(sim, sid, k) for k in (1, 2, 3))
    sim.run_until(lambda: sim.ended(sid, fb1.index), 600)
    assert sim.status(sid, fb1.index)["state"] == "completed"
    unit = takeover_unit(spec(), 2.0)
    assert unit == 10.0 + 4.0
    assert plans and {r for _, r in plans} == {1}
    # round 2 still completed without its coordinator (that result was the last progress)
    assert unit <= plans[0][0] - results[-1] <= unit + 0.5
    assert fb2.core.sessions[sid].coordinator is None and fb3.core.sessions[sid].coordinator is None


def test_starter_killed_during_opt_in() -> None:
    sim = Sim(5)
    sid = sim.start(spec(rounds=2, optin_seconds=3.0))
    sim.step(0.5)
    sim.nodes[0].alive = False
    fb = _fallback(sim, sid)
    sim.run_until(lambda: sim.ended(sid, fb.index), 300)
    st = sim.status(sid, fb.index)
    assert st["state"] == "completed" and [h["round"] for h in st["history"]] == [1, 2]
    assert "taken over by" in st["history"][0]["failures"][-1]


def test_hierarchical_session_survives_its_starter() -> None:
    sim = Sim(6, regions=["eu", "eu", "eu", "us", "us", "us"])
    sid = sim.start(spec(rounds=4, participants=6, hierarchical=True))
    _kill_starter_in_round(sim, sid, 2)
    fb = _fallback(sim, sid)
    sim.run_until(lambda: sim.ended(sid, fb.index), 600)
    st = sim.status(sid, fb.index)
    assert st["state"] == "completed" and [h["round"] for h in st["history"]] == [1, 2, 3, 4]


def test_secure_aggregation_session_survives_its_starter() -> None:
    from tests.fl.test_secagg_session import SECAGG

    sim = Sim(5)
    sid = sim.start(spec(rounds=3, privacy=SECAGG))
    _kill_starter_in_round(sim, sid, 2)
    fb = _fallback(sim, sid)
    sim.run_until(lambda: sim.ended(sid, fb.index), 600)
    st = sim.status(sid, fb.index)
    assert st["state"] == "completed" and [h["round"] for h in st["history"]] == [1, 2, 3]
    assert st["secagg"] and all(len(h["accepted"]) >= 3 for h in st["history"])


def test_takeover_when_the_last_model_died_with_the_starter() -> None:
    """The starter aggregated a round itself, published the result and died before anyone
    fetched the new model: the fallback cannot fetch it, so it goes on from the round before
    (which it holds) and redoes the lost round."""
    sim = Sim(5)
    old = sim.nodes[0]
    lost: list[int] = []

    def die_after_own_result(sender: SimNode, msg: object) -> None:
        if sender is old and isinstance(msg, RoundResult) and msg.receipt.round >= 2 \
                and msg.receipt.aggregator == old.peer and not lost:
            old.alive = False
            lost.append(msg.receipt.round)
    sim.after_publish = die_after_own_result
    sid = sim.start(spec(rounds=8))
    sim.run_until(lambda: not old.alive, 500)
    assert lost, "the starter aggregated no round after the first"
    fb = _fallback(sim, sid)
    sim.run_until(lambda: sim.ended(sid, fb.index), 600)
    st = sim.status(sid, fb.index)
    assert st["state"] == "completed" and [h["round"] for h in st["history"]] == list(range(1, 9))
    redone = st["history"][lost[0] - 1]
    assert redone["aggregator"] != old.peer
    assert any("could not be fetched" in f and f"going on from round {lost[0] - 1}" in f
               for f in redone["failures"]), redone["failures"]
    assert any("taken over by" in f for f in redone["failures"]), redone["failures"]


def test_a_round_still_running_without_its_coordinator_is_waited_for() -> None:
    """The starter and the elected aggregator of a round die as it is planned and one
    participant never trains: the fallback aggregator completes the round at its slot end
    (later than one takeover unit); the fallback coordinator waits for it and goes on from it
    instead of planning the round again."""
    from fognode.protocols.fl.session.election import aggregator_order

    sim = Sim(6)
    starter, slow = sim.nodes[0], sim.nodes[5]
    sid = sim.start(spec(rounds=8, participants=6))
    fb = _fallback(sim, sid)
    if fb is slow:
        slow = sim.nodes[4]
    slow.never_trains = True
    last_aggregator = [""]
    killed: list[int] = []

    def kill(sender: SimNode, msg: object) -> None:
        if isinstance(msg, RoundResult):
            last_aggregator[0] = msg.receipt.aggregator
        if sender is starter and isinstance(msg, RoundPlan) and 2 <= msg.round < 8 and not killed \
                and last_aggregator[0] != starter.peer:   # its base model is held elsewhere
            first = sim.by_peer[aggregator_order(msg.seed, msg.participants, 3)[0]]
            if first is not fb and first.peer != last_aggregator[0]:
                starter.alive = first.alive = False
                killed.append(msg.round)
    sim.after_publish = kill
    sim.run_until(lambda: bool(killed), 500)
    rnd = killed[0]
    sim.run_until(lambda: sim.ended(sid, fb.index), 600)
    st = sim.status(sid, fb.index)
    assert st["state"] == "completed" and [h["round"] for h in st["history"]] == list(range(1, 9))
    done, after = st["history"][rnd - 1], st["history"][rnd]
    assert done["tries"] == 1 and not any("taken over" in f for f in done["failures"])
    assert done["duration"] > takeover_unit(spec(), 2.0)
    assert slow.peer in done["dropped"] and len(done["accepted"]) >= 3
    assert any("taken over by " + fb.peer in f for f in after["failures"])


def test_rank_on_the_wire() -> None:
    sim = Sim(5)
    for nd in sim.nodes:
        nd.never_trains = True
    sid = sim.start(spec(rounds=1))
    sim.run_until(lambda: sim.nodes[0].core.sessions[sid].plan is not None, 100)
    plan = sim.nodes[0].core.sessions[sid].plan
    assert plan is not None and plan.rank == 0 and "rank" not in plan.to_wire()
    ended = SessionEnded(sid, "completed", 1, plan.base_model_hash)
    assert "rank" not in ended.to_wire()
    for msg in (dataclasses.replace(plan, rank=2), dataclasses.replace(ended, rank=2)):
        got = decode_gossip(wire(encode_gossip(msg)), peer=sim.nodes[0].peer)
        assert got == msg
    for msg in (plan, ended):
        bad = {**msg.to_wire(), "rank": 17}
        with pytest.raises(RemoteProtocolError, match="rank"):
            type(msg).decode(wire(pack(bad)))
