"""Secure aggregation inside FL rounds, end to end through the sans-IO cores (harness.py):
real tasks and training, the real SecAgg protocol and codecs; simulated clock and transport."""
from __future__ import annotations

import numpy as np
import pytest

from fognode.protocols.fl.messages import PrivacyOptions
from fognode.protocols.fl.strategies.base import StrategyConfigError
from fognode.protocols.fl.strategies.registry import build_strategy
from fognode.protocols.fl.tasks import load_task

from tests.fl.harness import Sim
from tests.fl.test_session import NON_IID, final_params, run, spec, union

SECAGG = PrivacyOptions(secagg=True)


def accuracy(sim: Sim, sid: bytes) -> float:
    task = load_task("synthetic", NON_IID)
    u = union(list(range(5)))
    return task.evaluate(final_params(sim, sid), u.x_test, u.y_test).accuracy


def test_secagg_session_matches_plain_fedavg() -> None:
    """Same data and task: the secure sum equals the plain sum up to fixed-point rounding
    (2^-24 per element); the sessions differ only in their round seeds (the announcement, so
    the session id, differs), so the accuracy matches plain FedAvg within 2 points."""
    plain = Sim(5)
    sid_p = plain.start(spec(rounds=6))
    assert run(plain, sid_p)["state"] == "completed"
    sim = Sim(5)
    sid = sim.start(spec(rounds=6, privacy=SECAGG))
    st = run(sim, sid)
    assert st["state"] == "completed" and st["rounds_done"] == 6, st["reason"]
    assert sim.secagg_frames > 0
    for h in st["history"]:
        assert sorted(h["accepted"]) == sorted(h["participants"]) and h["dropped"] == []
        assert abs(sum(h["weights"].values()) - 1.0) < 1e-6
    # no plain update ever travelled: nothing was refused, every sum came from SecAgg
    assert all(not nd.refused for nd in sim.nodes)
    acc, acc_plain = accuracy(sim, sid), accuracy(plain, sid_p)
    assert abs(acc - acc_plain) <= 0.02, (acc, acc_plain)


def test_receipt_weights_follow_declared_samples() -> None:
    sim = Sim(5)
    sid = sim.start(spec(rounds=1, privacy=SECAGG))
    st = run(sim, sid)
    assert st["state"] == "completed", st["reason"]
    h = st["history"][0]
    samples = {nd.peer: nd.core.sessions[sid].prepared.local.data.x_train.shape[0] for nd in sim.nodes}
    total = sum(samples[p] for p in h["accepted"])
    for p in h["accepted"]:
        assert abs(h["weights"][p] - samples[p] / total) < 1e-6


def test_dropout_after_masked_input_still_completes() -> None:
    sim = Sim(5)
    sim.kill_after_masked_round = 1
    sid = sim.start(spec(rounds=2, privacy=SECAGG))
    st = run(sim, sid)
    assert st["state"] == "completed", st["reason"]
    assert len(sim.killed) == 1
    dead = sim.killed[0][1]
    h1 = st["history"][0]
    # its masked input arrived, so its contribution is in the sum (its self mask was
    # recovered from the survivors' shares), and the round did not need a retry
    assert dead in h1["accepted"] and len(h1["accepted"]) == 5 and h1["tries"] == 1
    assert dead not in st["history"][1]["participants"]


def test_too_many_silent_at_unmasking_fails_round_and_retries() -> None:
    """Threshold 3 of 5: when three participants do not answer the unmask request the round
    fails (nothing is revealed) and the retry, with a new SecAgg round id, completes."""
    sim = Sim(5)
    sim.silent_unmask[(1, 0)] = 3
    sid = sim.start(spec(rounds=2, privacy=SECAGG))
    st = run(sim, sid)
    assert st["state"] == "completed", st["reason"]
    assert st["history"][0]["tries"] >= 2
    assert any("secure aggregation failed" in f for f in st["history"][0]["failures"])


def test_too_many_dropouts_fail_the_session_cleanly() -> None:
    sim = Sim(5)
    sim.kill_after_masked_round = 1
    sim.kill_after_masked_count = 3
    sid = sim.start(spec(rounds=2, privacy=SECAGG, max_retries=1))
    st = run(sim, sid)
    assert st["state"] == "failed" and st["rounds_done"] == 0
    assert st["reason"]


@pytest.mark.parametrize("strategy", ["median", "krum", "trimmed_mean", "bulyan"])
def test_robust_with_secagg_is_refused(strategy: str) -> None:
    with pytest.raises(StrategyConfigError, match="robust"):
        build_strategy(spec(strategy=strategy, privacy=SECAGG))
    assert build_strategy(spec(strategy="fedadam", privacy=SECAGG)).name == "fedadam"


def test_large_masked_input_travels_in_frames_below_the_message_limit() -> None:
    from fognode.node.errors import RemoteProtocolError
    from fognode.node.wire import MAX_MESSAGE, pack, unpack
    from fognode.protocols.fl.secagg import round as secagg_round
    from fognode.protocols.fl.secagg.messages import MaskedInput
    from fognode.protocols.fl.session.rounds import UpdateMeta

    y = np.arange(700_000, dtype="<u8").tobytes()          # 5.6 MB: over one wire message
    assert len(y) > MAX_MESSAGE
    msg = MaskedInput(b"r" * 32, y)
    env_map, frames = secagg_round.encode(b"s" * 32, 3, 1, 0, msg, None, frame_size=1 << 20)
    assert len(frames) == 6 and all(len(f) <= 1 << 20 for f in frames)
    env = secagg_round.Envelope.decode(unpack(pack(env_map)))
    assert (env.session_id, env.round, env.try_no, env.fallback, env.parts, env.meta) == \
        (b"s" * 32, 3, 1, 0, 6, None)
    assert secagg_round.decode_body(frames) == msg
    meta = UpdateMeta(120, 0.5, 0.25, 0.4)
    env_map, _ = secagg_round.encode(b"s" * 32, 3, 1, 0, msg, meta, frame_size=1 << 20)
    assert secagg_round.Envelope.decode(unpack(pack(env_map))).meta == meta
    with pytest.raises(RemoteProtocolError):
        secagg_round.Envelope.decode({**env_map, "parts": 0})
    with pytest.raises(RemoteProtocolError):
        secagg_round.decode_body([b"\x81\xa1v\x01"])             # a map without a type


def test_plain_updates_are_refused_in_a_secagg_session() -> None:
    sim = Sim(5)
    for nd in sim.nodes:
        nd.never_trains = True          # keep round 1 open
    sid = sim.start(spec(rounds=1, privacy=SECAGG))
    sim.run_until(lambda: sim.nodes[0].core.sessions[sid].plan is not None, 60)
    plan = sim.nodes[0].core.sessions[sid].plan
    assert plan is not None
    agg = sim.nodes[0].core.sessions[sid].order[0]
    sender = next(p for p in plan.peers if p != agg)
    why = sim.by_peer[agg].core.admit_update(sender, sid, plan.round, plan.try_no, 0).refusal
    assert why == "plain update in a secure-aggregation session"


def test_dead_aggregator_fallback_runs_a_fresh_secagg() -> None:
    """The elected aggregator dies when the plan is out: participants cannot reach it, join
    the fallback aggregator's run (new round id, new keys) and the round completes there."""
    sim = Sim(5)
    sim.kill_planned_aggregator_from_round = 1
    sid = sim.start(spec(rounds=2, privacy=SECAGG))
    st = run(sim, sid)
    assert st["state"] == "completed", st["reason"]
    assert len(sim.killed) == 1
    rnd, dead = sim.killed[0]      # the first round whose elected aggregator is not node 0
    h1 = st["history"][rnd - 1]
    assert h1["aggregator"] != dead and dead not in h1["accepted"] and len(h1["accepted"]) == 4
    assert h1["tries"] == 1


def test_key_adverts_must_be_signed_by_the_sender() -> None:
    from nacl.signing import SigningKey

    from fognode.protocols.fl.secagg.core import SecAggParticipant
    from fognode.protocols.fl.session.rounds import UpdateMeta

    sim = Sim(5)
    for nd in sim.nodes:
        nd.never_trains = True          # keep round 1 open
    sid = sim.start(spec(rounds=1, privacy=SECAGG))
    sim.run_until(lambda: sim.nodes[0].core.sessions[sid].plan is not None, 60)
    s = sim.nodes[0].core.sessions[sid]
    assert s.plan is not None
    agg = sim.by_peer[s.order[0]]
    sender = next(p for p in s.plan.peers if p != agg.peer)
    cfg = agg.core.secagg_rounds.config(agg.core.sessions[sid], s.plan, 0)
    meta = UpdateMeta(100, 1.0, 0.5, 0.9)
    for identity in (None, SigningKey(b"\x77" * 32)):        # unsigned, or signed by another key
        adv = SecAggParticipant(cfg, sender, identity=identity).advertise()
        why, _ = agg.core.receive_secagg(sender, sid, s.plan.round, s.plan.try_no, 0, adv, meta, sim.now)
        assert why is not None and "not signed by the sender" in why
    good = SecAggParticipant(cfg, sender, identity=sim.by_peer[sender].key).advertise()
    assert agg.core.receive_secagg(sender, sid, s.plan.round, s.plan.try_no, 0, good, meta, sim.now)[0] is None
