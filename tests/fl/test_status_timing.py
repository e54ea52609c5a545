"""The timing fields of `fl.status` (what tools/bench/fl_rounds.py reads): the coordinator's
rounds carry `started_at`, each participant's rounds carry `plan_at` (wall clock, seconds)."""
from __future__ import annotations

from fognode.protocols.fl.messages import SessionSpec

from tests.fl.harness import Sim


def test_round_start_and_plan_arrival_times() -> None:
    sim = Sim(3)
    sid = sim.start(SessionSpec(task="synthetic", rounds=2, min_participants=3, participants=3,
                                strategy="fedavg", task_params={"max_samples": 100.0}, deadline=10.0,
                                local_epochs=1, lr=0.05, batch_size=10, optin_seconds=1.0))
    sim.run_until(lambda: sim.ended(sid), 500.0)
    st = sim.status(sid)
    assert st["state"] == "completed"
    starts = [h["started_at"] for h in st["history"]]
    assert 1000.0 <= starts[0] <= starts[1]
    assert starts[0] + st["history"][0]["duration"] <= starts[1] + 1e-6
    for nd in sim.nodes[1:]:
        part = nd.core.status(sid)["history"]
        assert [e["round"] for e in part] == [1, 2]
        for e, start in zip(part, starts):
            assert start <= e["plan_at"] <= start + 1.0     # the simulated gossip takes one step
