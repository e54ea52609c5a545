"""Hierarchical rounds (session/hier.py) end to end in the in-memory harness: real tasks, real
local training, real strategies and wire codecs; simulated clock and transport."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import pack
from fognode.protocols.fl.errors import SessionRejected
from fognode.protocols.fl.messages import MemberMeta, PrivacyOptions, RoundPlan, UpdateHeader
from fognode.protocols.fl.session.election import regional_orders
from fognode.protocols.fl.strategies.base import ClientUpdate, StrategyConfigError
from fognode.protocols.fl.strategies.registry import build_strategy, make_strategy
from fognode.protocols.fl.tasks import load_task
from fognode.protocols.fl.transfer.tensors import encode_tensor

from tests.fl.harness import Sim
from tests.fl.test_session import NON_IID, final_params, run, spec, union

THREE = ["eu", "eu", "us", "us", "asia", "asia"]
TWO = ["eu", "eu", "eu", "us", "us", "us"]


def test_hierarchical_fedavg_round_equals_flat_fedavg_over_the_same_updates() -> None:
    sim = Sim(6, regions=THREE)
    sid = sim.start(spec(rounds=1, participants=6, min_participants=3, hierarchical=True))
    st = run(sim, sid)
    assert st["state"] == "completed", st["reason"]
    assert st["hierarchical"] is True
    h, = st["history"]
    assert sorted(h["accepted"]) == sorted(h["participants"]) and len(h["accepted"]) == 6
    # the participants' own updates (first one each) and the regional forwards
    own: dict[str, ClientUpdate] = {}
    forwards = []
    for sender, act in sim.sent_updates:
        if act.members:
            forwards.append((sender, act))
        else:
            own.setdefault(sender, ClientUpdate(sender, act.delta, act.num_samples))
    # a participant that is its region's aggregator hands its update over in memory
    s0 = sim.nodes[0].core.sessions[sid]
    assert s0.prepared is not None
    base = s0.prepared.initial_params
    region_of = {nd.peer: THREE[nd.index] for nd in sim.nodes}
    assert {region_of[sender] for sender, _ in forwards} == {"eu", "us", "asia"}
    members = [m for _, a in forwards for m in a.members]
    assert sorted(m.peer for m in members) == sorted(nd.peer for nd in sim.nodes)
    for sender, a in forwards:
        assert {region_of[m.peer] for m in a.members} == {region_of[sender]}
        assert a.weight == sum(m.num_samples for m in a.members) == a.num_samples
    # regional aggregators handed their own update over in memory: take those from the node
    for nd in sim.nodes:
        if nd.peer not in own:
            pr = nd.core.sessions[sid].participant
            assert pr is not None and pr.delta is not None and pr.meta is not None
            own[nd.peer] = ClientUpdate(nd.peer, pr.delta, pr.meta.num_samples)
    flat = make_strategy("fedavg", {}).aggregate(base, list(own.values()))
    np.testing.assert_allclose(final_params(sim, sid), flat.params, rtol=0, atol=1e-6)
    # the receipt lists every participant with its sample-count weight
    total = sum(u.num_samples for u in own.values())
    for p, w in h["weights"].items():
        assert w == pytest.approx(own[p].num_samples / total)


def test_six_nodes_two_regions_match_a_flat_session() -> None:
    """Tolerance: the hierarchical session's accuracy on the union of the six nodes' held-out
    data is within 3 points of a flat session with the same settings."""
    task = load_task("synthetic", NON_IID)
    u = union(list(range(6)))
    accs = []
    for hier in (False, True):
        sim = Sim(6, regions=TWO)
        sid = sim.start(spec(rounds=6, participants=6, min_participants=4, hierarchical=hier))
        st = run(sim, sid)
        assert st["state"] == "completed", st["reason"]
        assert all(len(h["accepted"]) == 6 for h in st["history"])
        accs.append(task.evaluate(final_params(sim, sid), u.x_test, u.y_test).accuracy)
    flat_acc, hier_acc = accs
    assert hier_acc >= flat_acc - 0.03, (hier_acc, flat_acc)
    assert hier_acc > 0.5


def test_dead_regional_aggregator_is_replaced_by_its_fallback() -> None:
    sim = Sim(6, regions=TWO)
    sim.kill_regional_aggregator_round = 1
    sid = sim.start(spec(rounds=2, participants=6, min_participants=3, fallbacks=2,
                         hierarchical=True))
    st = run(sim, sid)
    assert st["state"] == "completed", st["reason"]
    (rnd, dead), = sim.killed
    h = st["history"][rnd - 1]
    region = TWO[sim.by_peer[dead].index]
    mates = {nd.peer for nd in sim.nodes if TWO[nd.index] == region and nd.peer != dead}
    assert dead in h["dropped"] and dead not in h["accepted"]
    assert mates <= set(h["accepted"]) and len(h["accepted"]) == 5
    # the region's update reached the global aggregator through a fallback regional aggregator
    fwd = [(s, a) for s, a in sim.sent_updates if a.members and a.round == rnd
           and {m.peer for m in a.members} == mates]
    assert fwd and all(s in mates for s, _ in fwd)
    assert st["history"][1]["tries"] == 1 and dead not in st["history"][1]["participants"]


def test_dead_global_aggregator_regions_forward_to_its_fallback() -> None:
    """The global aggregator dies as it is about to aggregate: participants without a result
    resend at their regional slot ends, the regional aggregators' new forwards find the dead
    global aggregator unreachable and go to the next one, which completes the round."""
    sim = Sim(6, regions=THREE)
    sim.kill_aggregating_from_round = 1
    sid = sim.start(spec(rounds=4, participants=6, min_participants=3, fallbacks=2,
                         hierarchical=True))
    st = run(sim, sid)
    assert st["state"] == "completed", st["reason"]
    (rnd, dead), = sim.killed
    h = st["history"][rnd - 1]
    assert h["aggregator"] != dead and h["tries"] == 1 and len(h["accepted"]) >= 3
    assert h["duration"] >= 10.0     # only after a regional slot ended


def test_region_with_no_update_is_dropped_round_goes_on() -> None:
    sim = Sim(6, regions=["eu", "eu", "eu", "eu", "us", "us"])
    for i in (4, 5):
        sim.nodes[i].never_trains = True
    sid = sim.start(spec(rounds=1, participants=6, min_participants=4, fallbacks=1,
                         hierarchical=True))
    st = run(sim, sid)
    assert st["state"] == "completed", st["reason"]
    h, = st["history"]
    assert sorted(h["dropped"]) == sorted(sim.nodes[i].peer for i in (4, 5))
    assert len(h["accepted"]) == 4


def test_refused_combinations() -> None:
    with pytest.raises(StrategyConfigError, match="robust"):
        build_strategy(spec(strategy="krum", strategy_params={"f": 1}, hierarchical=True))
    with pytest.raises(StrategyConfigError, match="secure"):
        build_strategy(spec(hierarchical=True, privacy=PrivacyOptions(secagg=True)))
    sim = Sim(2)
    with pytest.raises(SessionRejected, match="robust"):
        sim.start(spec(strategy="median", hierarchical=True))
    # mean-based strategies are fine, and the flag survives the announcement's wire round trip
    sid = sim.start(spec(strategy="fedadam", hierarchical=True, rounds=1, participants=2,
                         min_participants=2))
    st = run(sim, sid)
    assert st["state"] == "completed", st["reason"]
    assert sim.nodes[1].core.sessions[sid].spec.hierarchical is True


def test_malformed_update_is_refused_at_its_regional_aggregator() -> None:
    sim = Sim(6, regions=THREE)
    bad = sim.nodes[3]
    bad.byzantine = lambda d: np.full_like(d, np.nan)
    sid = sim.start(spec(rounds=1, participants=6, min_participants=3, hierarchical=True))
    st = run(sim, sid)
    assert st["state"] == "completed", st["reason"]
    h, = st["history"]
    assert bad.peer not in h["accepted"] and len(h["accepted"]) == 5
    reports = [r for nd in sim.nodes for r in nd.reports if r.subject == bad.peer]
    assert reports and not any(r.ok for r in reports)
    assert h["duration"] < 10.0     # its regional aggregator counted the refusal as an answer


def _wire(obj: object) -> object:
    return msgpack.unpackb(pack(obj), raw=False, strict_map_key=True)


def test_wire_fields_round_trip_and_flat_messages_are_unchanged() -> None:
    plan = RoundPlan(b"s" * 32, 1, 0, b"x" * 32, (("a", 0.5), ("b", 0.5)), b"m" * 32, 0, ("a",))
    assert "regions" not in plan.to_wire()
    hplan = RoundPlan(plan.session_id, 1, 0, plan.seed, plan.participants, plan.base_model_hash,
                      0, ("a",), ("eu", "us"))
    assert RoundPlan.decode(_wire(hplan.to_wire())) == hplan
    assert hplan.region_of("b") == "us" and plan.region_of("b") == ""
    bad = {**hplan.to_wire(), "regions": ["eu"]}
    with pytest.raises(RemoteProtocolError, match="regions"):
        RoundPlan.decode(_wire(bad))
    th = encode_tensor(np.zeros(4, dtype=np.float32))[0]
    flat = UpdateHeader(b"s" * 32, 1, 0, 0, 10, 1.0, 0.5, 0.9, th)
    assert "members" not in flat.to_wire()
    reg = UpdateHeader(b"s" * 32, 1, 0, 1, 30, -1.0, -1.0, -1.0, th,
                       (MemberMeta("a", 10, 1.0, 0.5, 0.9), MemberMeta("b", 20, 2.0, 0.25, 1.5)),
                       30.0)
    assert UpdateHeader.decode(_wire(reg.to_wire()), expected_shape=(4,), max_bytes=1 << 20) == reg
    dup = {**reg.to_wire(), "members": [reg.members[0].to_wire()] * 2}
    with pytest.raises(RemoteProtocolError, match="distinct"):
        UpdateHeader.decode(_wire(dup), expected_shape=(4,), max_bytes=1 << 20)
    assert spec().to_wire().get("hier") is None and spec(hierarchical=True).to_wire()["hier"] is True


def test_regional_election_is_per_region_and_deterministic() -> None:
    parts = tuple((f"p{i}", 0.5) for i in range(6))
    regions = ("eu", "us", "eu", "us", "eu", "asia")
    a = regional_orders(b"k" * 32, parts, regions, 2)
    assert a == regional_orders(b"k" * 32, parts, regions, 2)
    assert set(a) == {"eu", "us", "asia"} and a["asia"] == ("p5",)
    assert set(a["eu"]) <= {"p0", "p2", "p4"} and len(a["eu"]) == 2
    assert set(a["us"]) == {"p1", "p3"}
