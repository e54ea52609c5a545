"""Sessions and rounds end to end through the sans-IO cores (tests/fl/harness.py): real
tasks, real local training, real strategies, real wire codecs; simulated clock and transport."""
from __future__ import annotations

import numpy as np
import pytest

from fognode.protocols.fl.events import TrainingRoundCompleted, TrainingRoundStarted, TrainingSessionEnded
from fognode.protocols.fl.messages import SelectionCriteria, SessionSpec
from fognode.protocols.fl.tasks import LocalData, TrainConfig, load_task

from tests.fl.harness import Sim

NON_IID = {"alpha": 0.5, "beta": 0.5, "max_samples": 300}


def spec(**kw: object) -> SessionSpec:
    base: dict[str, object] = dict(task="synthetic", rounds=8, min_participants=3, participants=5,
                                   strategy="fedavg", task_params=NON_IID, deadline=10.0,
                                   local_epochs=2, lr=0.05, batch_size=10, optin_seconds=1.0)
    base.update(kw)
    return SessionSpec(**base)  # type: ignore[arg-type]


def union(indices: list[int], params: dict[str, float] = NON_IID) -> LocalData:
    task = load_task("synthetic", params)
    ds = [task.local_data(7, k) for k in indices]
    return LocalData(*(np.concatenate([getattr(d, f) for d in ds])
                       for f in ("x_train", "y_train", "x_test", "y_test")))


def final_params(sim: Sim, sid: bytes) -> np.ndarray:
    st = sim.status(sid)
    return sim.nodes[0].saved[bytes.fromhex(st["model_hash"])]


def run(sim: Sim, sid: bytes, limit: float = 2000.0) -> dict:
    sim.run_until(lambda: sim.ended(sid), limit)
    return sim.status(sid)


def test_five_node_session_reaches_central_accuracy() -> None:
    """Tolerance: the federated model's accuracy on the union of the five nodes' held-out
    data is at most 5 points below a model trained centrally on the union of their training
    data (same model, 20 epochs of SGD)."""
    sim = Sim(5)
    sid = sim.start(spec(rounds=10))
    st = run(sim, sid)
    assert st["state"] == "completed" and st["rounds_done"] == 10 and st["reason"] == ""
    hist = st["history"]
    assert [h["round"] for h in hist] == list(range(1, 11))
    for h in hist:
        assert len(h["participants"]) == 5 and sorted(h["accepted"]) == sorted(h["participants"])
        assert h["dropped"] == [] and h["rejected"] == {}
        assert abs(sum(h["weights"].values()) - 1.0) < 1e-6
    assert hist[-1]["loss"] < hist[1]["loss"] < hist[0]["loss"]

    task = load_task("synthetic", NON_IID)
    u = union(list(range(5)))
    fl_acc = task.evaluate(final_params(sim, sid), u.x_test, u.y_test).accuracy
    p = task.initial_params(0)
    for e in range(20):
        p = task.train(p, u, TrainConfig(epochs=1, lr=0.05, batch_size=10), seed=e).params
    central_acc = task.evaluate(p, u.x_test, u.y_test).accuracy
    assert fl_acc >= central_acc - 0.05, (fl_acc, central_acc)

    # every node holds the same final model hash; events and saved models
    c = sim.nodes[0]
    assert c.final == [bytes.fromhex(st["model_hash"])]
    assert sum(isinstance(e, TrainingRoundStarted) for e in c.events) == 10
    assert sum(isinstance(e, TrainingRoundCompleted) for e in c.events) == 10
    for nd in sim.nodes[1:]:
        ps = nd.core.status(sid)
        assert ps["state"] == "completed" and ps["role"] == "participant"
        assert all(r["accepted"] for r in ps["history"])
        assert any(isinstance(e, TrainingSessionEnded) for e in nd.events)
    # accepted updates are reported to reputation as good, nothing as bad
    reports = [r for nd in sim.nodes for r in nd.reports]
    assert reports and all(r.ok for r in reports)


def _byzantine_run(strategy: str, params: dict[str, object]) -> tuple[float, float, dict]:
    """Node 2 sends -10x its delta and claims 5000 samples. Returns (honest-data training
    loss, honest-data test accuracy) of the final model and the status."""
    sim = Sim(5)
    bad = sim.nodes[2]
    bad.byzantine = lambda d: (d * -10.0).astype(np.float32)
    bad.claim_samples = 5000
    sid = sim.start(spec(strategy=strategy, strategy_params=params, rounds=8))
    st = run(sim, sid)
    assert st["state"] == "completed"
    honest = union([0, 1, 3, 4])
    task = load_task("synthetic", NON_IID)
    final = final_params(sim, sid)
    return (task.evaluate(final, honest.x_train, honest.y_train).loss,
            task.evaluate(final, honest.x_test, honest.y_test).accuracy, st)


def test_one_byzantine_node_robust_rules_converge_fedavg_does_not() -> None:
    initial_loss = float(np.log(10))   # zero weights: uniform over 10 classes
    fa_loss, fa_acc, _ = _byzantine_run("fedavg", {})
    mk_loss, mk_acc, mk = _byzantine_run("multikrum", {"f": 1, "m": 4})
    md_loss, _, _ = _byzantine_run("median", {})
    # FedAvg trusts the inflated sample count: the model is pushed away from the optimum
    assert fa_loss > 10 * initial_loss and fa_acc < 0.4
    # Multi-Krum leaves the attacker out every round and trains as if it were not there
    assert mk_loss < 0.5 * initial_loss and mk_acc > 0.8
    bad_peer = Sim(5).nodes[2].peer
    for h in mk["history"]:
        assert bad_peer not in h["accepted"] and "not selected" in h["rejected"][bad_peer]
    # the coordinate median is not moved by one outlier: the loss still goes down
    assert md_loss < 0.5 * initial_loss


def test_byzantine_update_is_reported_to_reputation() -> None:
    sim = Sim(5)
    bad = sim.nodes[2]
    bad.byzantine = lambda d: (d * -10.0).astype(np.float32)
    sid = sim.start(spec(strategy="krum", strategy_params={"f": 1}, rounds=2))
    run(sim, sid)
    bad_reports = [r for nd in sim.nodes for r in nd.reports if r.subject == bad.peer]
    assert bad_reports and not any(r.ok for r in bad_reports)
    assert all("krum" in r.detail and len(r.evidence) == 32 for r in bad_reports)


def test_aggregator_dies_before_aggregating_fallback_completes_the_round() -> None:
    """The elected aggregator receives the updates, then dies before publishing: at the end
    of its slot the participants resend to the first fallback, which completes the round
    from the same base model (the last completed round)."""
    sim = Sim(5)
    sim.kill_aggregating_from_round = 2
    sid = sim.start(spec(rounds=4, fallbacks=2))
    st = run(sim, sid)
    assert st["state"] == "completed", st["reason"]
    (rnd, dead), = sim.killed
    h = st["history"][rnd - 1]
    assert h["aggregator"] != dead and h["tries"] == 1
    assert dead in h["participants"] and h["dropped"] == [dead]
    assert h["duration"] >= 10.0            # the fallback took over at the end of slot 0
    assert st["history"][rnd - 2]["model_hash"] != h["model_hash"]
    assert all(dead not in x["participants"] for x in st["history"][rnd:])   # now offline


def test_aggregator_killed_when_the_round_starts_session_completes() -> None:
    """The elected aggregator is gone before any update reaches it: participants cannot
    reach it and go straight to the fallback."""
    sim = Sim(5)
    sim.kill_planned_aggregator_from_round = 2
    sid = sim.start(spec(rounds=4, fallbacks=2))
    st = run(sim, sid)
    assert st["state"] == "completed", st["reason"]
    (rnd, dead), = sim.killed
    h = st["history"][rnd - 1]
    assert h["aggregator"] != dead and dead not in h["accepted"] and h["dropped"] == [dead]
    assert len(h["accepted"]) == 4


def test_updates_that_cannot_be_sent_for_a_while_are_retried_within_the_round() -> None:
    """For 12 s after the first plan every update send fails (an overloaded network: streams
    cannot be opened though every aggregator is alive). Each participant tries the whole
    aggregator order, then starts over at the current slot's aggregator after a backoff, so
    round 1 completes in its first try with every update, instead of being given up and
    retried."""
    sim = Sim(5)
    sid = sim.start(spec(rounds=2, deadline=10.0, fallbacks=2))
    sim.sends_fail_until = sim.now + 1.0 + 12.0     # opt-in lasts 1 s
    st = run(sim, sid)
    assert st["state"] == "completed", st["reason"]
    h = st["history"][0]
    assert h["tries"] == 1 and len(h["accepted"]) == 5 and h["dropped"] == []
    # every participant cycled through the 3 aggregators more than once before getting through
    assert sim.failed_sends >= 2 * 3 * 4


def test_straggler_dropped_at_the_deadline() -> None:
    sim = Sim(5)
    slow = sim.nodes[3]
    slow.hold_updates = True
    sid = sim.start(spec(rounds=2))
    st = run(sim, sid)
    assert st["state"] == "completed"
    for h in st["history"]:
        assert slow.peer in h["participants"] and h["dropped"] == [slow.peer]
        assert slow.peer not in h["accepted"] and len(h["accepted"]) == 4
        assert h["duration"] >= 10.0   # waited for the deadline


def test_too_few_updates_retries_then_fails() -> None:
    sim = Sim(3)
    sim.nodes[1].never_trains = True
    sid = sim.start(spec(rounds=2, participants=3, min_participants=3, max_retries=2, fallbacks=1,
                         deadline=5.0))
    st = run(sim, sid)
    assert st["state"] == "failed"
    assert "failed 3 times" in st["reason"] and "usable updates" in st["reason"]
    assert st["history"] == []


def test_gossip_loss_is_survived_by_republishing() -> None:
    sim = Sim(4, drop=0.3, rng_seed=3)
    sid = sim.start(spec(rounds=3, participants=4, min_participants=2))
    st = run(sim, sid, 5000)
    assert st["state"] == "completed", st["reason"]


def test_stop_saves_the_final_model_and_tells_participants() -> None:
    sim = Sim(3)
    sim.nodes[2].never_trains = True      # every round waits for its deadline
    sid = sim.start(spec(rounds=50, participants=3, min_participants=2))
    sim.run_until(lambda: sim.status(sid)["rounds_done"] >= 2, 2000)
    sim._run(sim.nodes[0], sim.nodes[0].core.stop_session(sid, sim.now))
    st = sim.status(sid)
    assert st["state"] == "stopped" and st["reason"] == "stopped by the operator"
    assert sim.nodes[0].final == [bytes.fromhex(st["model_hash"])]
    assert all(nd.core.status(sid)["state"] == "stopped" for nd in sim.nodes)
    with pytest.raises(ValueError):
        sim.nodes[0].core.stop_session(sid, sim.now)
    with pytest.raises(PermissionError):
        sim.nodes[1].core.stop_session(sid, sim.now)
    with pytest.raises(LookupError):
        sim.nodes[0].core.stop_session(b"\x00" * 32, sim.now)


def test_only_eligible_nodes_with_the_task_take_part() -> None:
    sim = Sim(5, regions=["eu", "eu", "us", "eu", "eu"])
    sim.nodes[4].core.tasks_enabled = {"synthetic_mlp"}
    sid = sim.start(spec(rounds=1, participants=5, min_participants=2,
                         criteria=SelectionCriteria(region="eu")))
    st = run(sim, sid)
    assert st["state"] == "completed"
    parts = set(st["history"][0]["participants"])
    assert parts == {sim.nodes[i].peer for i in (0, 1, 3)}
    assert sid in sim.nodes[4].core.ignored and "not enabled" in sim.nodes[4].core.ignored[sid]
    assert "region" in sim.nodes[2].core.ignored[sid]


def test_mlp_task_and_server_optimiser_state_travels() -> None:
    sim = Sim(3)
    sid = sim.start(spec(task="synthetic_mlp", task_params={**NON_IID, "hidden": 8}, rounds=3,
                         participants=3, min_participants=2, strategy="fedadam",
                         strategy_params={"eta": 0.05}))
    st = run(sim, sid)
    assert st["state"] == "completed"
    # FedAdam's moments went with each model to the next round's aggregator
    coord = sim.nodes[0].core.sessions[sid]
    assert coord.models[coord.latest_model].state.keys() == {"m", "v"}


def test_dp_session_reports_epsilon() -> None:
    from fognode.protocols.fl.messages import PrivacyOptions

    sim = Sim(3)
    sid = sim.start(spec(rounds=2, participants=3, min_participants=2,
                         privacy=PrivacyOptions(dp_clip=1.0, dp_noise=1.0, dp_delta=1e-5)))
    st = run(sim, sid)
    assert st["state"] == "completed"
    assert st["epsilon"] is not None and st["epsilon"] > 0
    assert sim.nodes[1].core.status(sid)["epsilon"] == pytest.approx(st["epsilon"])
