"""A round's participants fetch its new model from the aggregator when the result arrives,
ahead of the next plan (session/fetches.py), in the in-memory harness: every later round's base
model is asked of the previous aggregator before that round's plan reached the node, and a
prefetch that fails after the plan came (the plan found it under way) is asked again of the
plan's sources, so the node still trains that round."""
from __future__ import annotations

from typing import Any

from fognode.protocols.fl.actions import Action, FetchModel

from tests.fl.harness import Sim, SimNode
from tests.fl.test_session import spec


class FetchSim(Sim):
    """Records every FetchModel with the round of the plan its node followed when asking;
    with `park`, holds the fetches of a single source (prefetches) of non-coordinators."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.fetches: list[tuple[int, FetchModel, int]] = []
        self.park = False
        self.parked: list[tuple[SimNode, FetchModel]] = []

    def _do(self, nd: SimNode, act: Action) -> None:
        if isinstance(act, FetchModel):
            s = nd.core.sessions[act.session_id]
            self.fetches.append((nd.index, act, s.plan.round if s.plan is not None else 0))
            if self.park and nd.index != 0 and len(act.sources) == 1:
                self.parked.append((nd, act))
                return
        super()._do(nd, act)


def _history(sim: Sim, sid: bytes) -> list[dict[str, Any]]:
    return sim.status(sid)["history"]


def test_participants_fetch_the_new_model_from_its_aggregator_before_the_next_plan() -> None:
    sim = FetchSim(4)
    sid = sim.start(spec(rounds=3, min_participants=4, participants=4))
    sim.run_until(lambda: sim.ended(sid), 600)
    hist = _history(sim, sid)
    assert sim.status(sid)["state"] == "completed" and len(hist) == 3
    for r in (1, 2):      # round r's model is round r + 1's base
        h = bytes.fromhex(hist[r - 1]["model_hash"])
        agg = hist[r - 1]["aggregator"]
        for nd in sim.nodes[1:]:
            asked = [(a.sources, plan_round) for i, a, plan_round in sim.fetches
                     if i == nd.index and a.model_hash == h]
            if nd.peer == agg:
                assert asked == [], (r, nd.index, asked)      # it built the model
            else:
                # once, of the aggregator, while the node still followed round r's plan
                assert asked == [((agg,), r)], (r, nd.index, asked)
    # each node's timeline (fl.status "marks": time, round, try, step, peer) shows the steps
    steps = {nd.index: [(m[1], m[3]) for m in sim.status(sid, nd.index)["marks"]] for nd in sim.nodes}
    assert [r for r, step in steps[0] if step == "round_done"] == [1, 2, 3]
    for nd in sim.nodes[1:]:
        assert {(1, "plan"), (2, "plan"), (1, "result")} <= set(steps[nd.index])
        assert (1, "prefetched") in steps[nd.index] or nd.peer == hist[0]["aggregator"]
    # the coordinator fetched each new model itself, as before
    for r in (1, 2, 3):
        h = bytes.fromhex(hist[r - 1]["model_hash"])
        if hist[r - 1]["aggregator"] != sim.nodes[0].peer:
            assert [a.sources for i, a, _ in sim.fetches if i == 0 and a.model_hash == h] \
                == [(hist[r - 1]["aggregator"],)]


def test_a_failed_prefetch_is_asked_of_the_plans_sources_and_the_node_trains() -> None:
    sim = FetchSim(4)
    sim.park = True       # round 1's base is every node's own round-0 model: no fetch before
    sid = sim.start(spec(rounds=2, min_participants=4, participants=4))

    def planned_round_2() -> bool:
        return all(nd.core.sessions[sid].plan is not None and nd.core.sessions[sid].plan.round == 2
                   for nd in sim.nodes)
    sim.run_until(lambda: bool(sim.parked) and planned_round_2(), 600)
    parked = list(sim.parked)
    sim.park = False
    h = bytes.fromhex(_history(sim, sid)[0]["model_hash"])
    assert parked and all(a.model_hash == h for _, a in parked)
    # the plan found the prefetch under way and asked for nothing: those nodes wait
    for nd, _ in parked:
        assert nd.trained_rounds == 1
    plan = sim.nodes[0].core.sessions[sid].plan
    assert plan is not None
    for nd, a in parked:
        again = nd.core.model_fetch_failed(sid, a.model_hash, "the aggregator is gone", sim.now)
        assert again == [FetchModel(sid, h, tuple(p for p in plan.sources if p != nd.peer))]
        sim._run(nd, again)
    sim.run_until(lambda: sim.ended(sid), 600)
    assert sim.status(sid)["state"] == "completed"
    for nd, _ in parked:
        assert nd.trained_rounds == 2, nd.index
