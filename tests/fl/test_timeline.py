"""Each node's round timeline (`Session.mark`, shown by `fl.status` as "marks": time, round,
try, step, peer), in the in-memory harness: the steps the core notes at the coordinator, the
aggregators and the participants of every round, in time order."""
from __future__ import annotations

from tests.fl.harness import Sim
from tests.fl.test_session import spec


def test_every_node_notes_its_steps_of_every_round() -> None:
    sim = Sim(4)
    sid = sim.start(spec(rounds=2, min_participants=4, participants=4))
    sim.run_until(lambda: sim.ended(sid), 600)
    hist = sim.status(sid)["history"]
    assert sim.status(sid)["state"] == "completed" and len(hist) == 2
    marks = {nd.index: sim.status(sid, nd.index)["marks"] for nd in sim.nodes}
    for m in marks.values():
        assert [x[0] for x in m] == sorted(x[0] for x in m)      # in time order
    coordinator = [(r, step) for _, r, _, step, _ in marks[0]]
    assert [r for r, step in coordinator if step == "round_done"] == [1, 2]
    for nd in sim.nodes:
        steps = {(r, step, peer) for _, r, _, step, peer in marks[nd.index]}
        for h in hist:
            r, agg = h["round"], h["aggregator"]
            assert (r, "plan", sim.nodes[0].peer) in steps
            assert (r, "result", agg) in steps
            if nd.peer != agg:      # the aggregator hands its own update over in memory
                assert (r, "delivered", "") in steps
            else:                   # every update it accepted, by sender
                assert {p for rr, step, p in steps if rr == r and step == "update_in"} \
                    == set(h["accepted"])
