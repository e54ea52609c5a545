"""FedAvgM, q-FedAvg and the "flower" semantics against hand-computed values (small arrays,
the numbers written out), next to the paper semantics they differ from."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fognode.node.wire import Fields, pack, unpack
from fognode.protocols.fl.messages import PrivacyOptions, SessionSpec
from fognode.protocols.fl.strategies.base import (
    ClientUpdate, StrategyConfigError, StrategyError, check_secagg_compatible)
from fognode.protocols.fl.strategies.qfedavg import qffl_coefficients
from fognode.protocols.fl.strategies.registry import build_strategy, make_strategy, wire_params
from tests.fl.harness import Sim
from tests.fl.test_session import run, spec

F32 = np.float32


def upd(peer: str, values: list[float], n: int = 1, loss: float | None = None) -> ClientUpdate:
    return ClientUpdate(peer, np.asarray(values, dtype=F32), n, loss)


# --- FedAdam / FedYogi / FedAdagrad, semantics "flower" --------------------------------------

def test_fedadam_flower_two_rounds_by_hand() -> None:
    s = make_strategy("fedadam", {"eta": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-9,
                                  "semantics": "flower"})
    x0 = np.array([1.0, 2.0], F32)
    x1 = s.aggregate(x0, [upd("a", [0.1, -0.2])]).params
    # round 1 (t = 2): m = [0.01, -0.02], v = 0.01 * d^2 = [1e-4, 4e-4] (v0 = 0),
    # eta_t = 0.1 * sqrt(1 - 0.99^2) / (1 - 0.9^2) = 0.07424597884034684
    e1 = 0.07424597884034684
    np.testing.assert_allclose(x1, [1.0 + e1 * 0.01 / (0.01 + 1e-9), 2.0 - e1 * 0.02 / (0.02 + 1e-9)],
                               rtol=1e-6)
    x2 = s.aggregate(x1, [upd("a", [0.3, 0.1])]).params
    # round 2 (t = 3): m = 0.9 m + 0.1 d = [0.039, -0.008], v = 0.99 v + 0.01 d^2 =
    # [0.000999, 0.000496], eta_t = 0.1 * sqrt(1 - 0.99^3) / (1 - 0.9^3) = 0.06359401500589872
    e2 = 0.06359401500589872
    np.testing.assert_allclose(
        x2, [x1[0] + e2 * 0.039 / (math.sqrt(0.000999) + 1e-9),
             x1[1] - e2 * 0.008 / (math.sqrt(0.000496) + 1e-9)], rtol=1e-6)
    assert s.state_arrays()["t"].tolist() == [2.0]
    # the paper's FedAdam on the same first round: v0 = tau^2, no bias correction
    p = make_strategy("fedadam", {"eta": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-9})
    np.testing.assert_allclose(p.aggregate(x0, [upd("a", [0.1, -0.2])]).params,
                               [1.0 + 0.1 * 0.01 / (math.sqrt(0.99e-18 + 1e-4) + 1e-9),
                                2.0 - 0.1 * 0.02 / (math.sqrt(0.99e-18 + 4e-4) + 1e-9)], rtol=1e-6)


def test_fedyogi_flower_by_hand() -> None:
    s = make_strategy("fedyogi", {"eta": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-9,
                                  "semantics": "flower"})
    x1 = s.aggregate(np.array([0.0], F32), [upd("a", [0.1])]).params
    # round 1: v = 0 - 0.01 * 0.01 * sign(0 - 0.01) = 1e-4, m = 0.01, eta_t as FedAdam's
    e1 = 0.07424597884034684
    np.testing.assert_allclose(x1, [e1 * 0.01 / (0.01 + 1e-9)], rtol=1e-6)
    x2 = s.aggregate(x1, [upd("a", [0.2])]).params
    # round 2: d^2 = 0.04 > v: v = 1e-4 + 0.01 * 0.04 = 5e-4, m = 0.009 + 0.02 = 0.029
    e2 = 0.06359401500589872
    np.testing.assert_allclose(x2, [x1[0] + e2 * 0.029 / (math.sqrt(5e-4) + 1e-9)], rtol=1e-6)


def test_fedadagrad_flower_by_hand() -> None:
    with pytest.raises(StrategyConfigError, match="beta1 = 0"):
        make_strategy("fedadagrad", {"semantics": "flower"})
    s = make_strategy("fedadagrad", {"eta": 0.1, "beta1": 0.0, "tau": 1e-3, "semantics": "flower"})
    x1 = s.aggregate(np.array([1.0, 1.0], F32), [upd("a", [0.5, -0.25])]).params
    # m = d, v = d^2 (v0 = 0), no bias correction: x + 0.1 * d / (|d| + 1e-3)
    np.testing.assert_allclose(x1, [1.0 + 0.1 * 0.5 / 0.501, 1.0 - 0.1 * 0.25 / 0.251], rtol=1e-6)
    x2 = s.aggregate(x1, [upd("a", [0.5, 0.0])]).params
    # v = [0.25 + 0.25, 0.0625]: x + 0.1 * m / (sqrt(v) + 1e-3)
    np.testing.assert_allclose(x2, [x1[0] + 0.1 * 0.5 / (math.sqrt(0.5) + 1e-3), x1[1]], rtol=1e-6)


def test_semantics_parameter_is_validated_and_carried_in_state() -> None:
    with pytest.raises(StrategyConfigError, match="'semantics' must be one of paper, flower"):
        make_strategy("fedadam", {"semantics": "flwr"})
    # a session announcement carries the choice as its index (numbers only): 0 paper, 1 flower
    assert make_strategy("multikrum", {"semantics": 1}).semantics == "flower"   # type: ignore[attr-defined]
    assert make_strategy("fedyogi", {"semantics": 0.0}).semantics == "paper"    # type: ignore[attr-defined]
    for bad in (2, 1.5, -1, True):
        with pytest.raises(StrategyConfigError, match="semantics"):
            make_strategy("multikrum", {"semantics": bad})
    a = make_strategy("fedadam", {"semantics": "flower"})
    a.aggregate(np.zeros(2, F32), [upd("a", [0.1, 0.1])])
    b = make_strategy("fedadam", {"semantics": "flower"})
    b.load_state_arrays(a.state_arrays())
    g = np.ones(2, F32)
    np.testing.assert_array_equal(a.aggregate(g, [upd("a", [0.2, 0.1])]).params,
                                  b.aggregate(g, [upd("a", [0.2, 0.1])]).params)
    with pytest.raises(StrategyError, match="'t'"):
        make_strategy("fedadam", {"semantics": "flower"}).load_state_arrays(
            {"m": np.zeros(2, F32), "v": np.zeros(2, F32)})


# --- Multi-Krum, semantics "flower" ----------------------------------------------------------

def test_multikrum_flower_weights_the_selection_by_samples() -> None:
    # points 0, 1, 2, 10 with f = 0: scores 5, 2, 5, 145; m = 2 keeps the points 0 and 1
    ups = [upd("a", [0.0], 1), upd("b", [1.0], 3), upd("c", [2.0], 5), upd("d", [10.0], 1)]
    paper = make_strategy("multikrum", {"f": 0, "m": 2}).aggregate(np.zeros(1, F32), ups)
    flower = make_strategy("multikrum", {"f": 0, "m": 2, "semantics": "flower"}).aggregate(
        np.zeros(1, F32), ups)
    assert paper.accepted == flower.accepted == ("a", "b")
    np.testing.assert_allclose(paper.params, [0.5])                 # (0 + 1) / 2
    np.testing.assert_allclose(flower.params, [0.75])               # (1 * 0 + 3 * 1) / 4
    assert flower.weights == {"a": 0.25, "b": 0.75}


# --- FedAvgM ----------------------------------------------------------------------------------

def test_fedavgm_by_hand_and_state_moves() -> None:
    s = make_strategy("fedavgm", {"eta": 0.5, "momentum": 0.9})
    x1 = s.aggregate(np.zeros(1, F32), [upd("a", [2.0], 1), upd("b", [0.0], 3)]).params
    # mean delta = (1 * 2 + 3 * 0) / 4 = 0.5; u = 0.5; x = 0 + 0.5 * 0.5
    np.testing.assert_allclose(x1, [0.25])
    other = make_strategy("fedavgm", {"eta": 0.5, "momentum": 0.9})
    other.load_state_arrays(s.state_arrays())
    x2 = other.aggregate(x1, [upd("a", [1.0])]).params
    # u = 0.9 * 0.5 + 1.0 = 1.45; x = 0.25 + 0.5 * 1.45 = 0.975
    np.testing.assert_allclose(x2, [0.975])
    assert make_strategy("fedavgm", {"momentum": 0.0}).aggregate(
        np.ones(1, F32), [upd("a", [1.0])]).params.tolist() == [2.0]      # FedAvg
    with pytest.raises(StrategyConfigError, match="'momentum'"):
        make_strategy("fedavgm", {"momentum": 1.0})
    with pytest.raises(StrategyConfigError, match="'eta'"):
        make_strategy("fedavgm", {"eta": 0.0})


def test_fedavgm_runs_on_a_secure_sum() -> None:
    ups = [upd("a", [2.0, 1.0], 1), upd("b", [0.0, 1.0], 3)]
    direct = make_strategy("fedavgm", {}).aggregate(np.zeros(2, F32), ups)
    s = make_strategy("fedavgm", {})
    check_secagg_compatible(s)
    contribs = [s.client_contribution(u.delta, u.num_samples) for u in ups]
    summed = s.aggregate_sum(np.zeros(2, F32), contribs[0][0] + contribs[1][0],
                             contribs[0][1] + contribs[1][1], ["a", "b"])
    np.testing.assert_allclose(summed.params, direct.params)


# --- q-FedAvg ----------------------------------------------------------------------------------

QFFL_UPDATES = [upd("a", [0.1, 0.0], 7, loss=2.0), upd("b", [0.0, -0.2], 1, loss=0.5)]


@pytest.mark.parametrize("q, expected", [
    # L = 10. Dw_a = [-1, 0], ||Dw_a||^2 = 1; Dw_b = [0, 2], ||Dw_b||^2 = 4.
    # q = 1: D = [-2, 0] + [0, 1]; h_a = 1 + 10 * 2 = 21, h_b = 4 + 10 * 0.5 = 9; w - sum D / 30
    (1.0, [1.0 + 2 / 30, 1.0 - 1 / 30]),
    # q = 2: D = 4 * [-1, 0] + 0.25 * [0, 2]; h_a = 2*2*1 + 10*4 = 44, h_b = 2*0.5*4 + 2.5 = 6.5
    (2.0, [1.0 + 4 / 50.5, 1.0 - 0.5 / 50.5]),
    # q = 0: every h = L = 10, D = Dw: the unweighted mean delta (sample counts ignored)
    (0.0, [1.0 + 1 / 20, 1.0 - 2 / 20]),
])
def test_qfedavg_by_hand(q: float, expected: list[float]) -> None:
    res = make_strategy("qfedavg", {"q": q, "L": 10.0}).aggregate(np.ones(2, F32), QFFL_UPDATES)
    np.testing.assert_allclose(res.params, expected, rtol=1e-6)
    assert res.accepted == ("a", "b") and sum(res.weights.values()) == pytest.approx(1.0)


def test_qfedavg_rejects_updates_without_a_loss_and_never_makes_one_up() -> None:
    ups = QFFL_UPDATES + [upd("none", [5.0, 5.0]), upd("unmeasured", [5.0, 5.0], loss=-1.0),
                          upd("nan", [5.0, 5.0], loss=float("nan"))]
    res = make_strategy("qfedavg", {"q": 1.0, "L": 10.0}).aggregate(np.ones(2, F32), ups)
    np.testing.assert_allclose(res.params, [1.0 + 2 / 30, 1.0 - 1 / 30], rtol=1e-6)
    assert set(res.rejected) == {"none", "unmeasured", "nan"}
    assert all("loss of the base model" in why for why in res.rejected.values())
    zero = [upd("a", [0.1, 0.0], loss=0.0), upd("b", [0.0, 0.1], loss=1.0)]
    res = make_strategy("qfedavg", {"q": 0.5}).aggregate(np.ones(2, F32), zero)
    assert res.accepted == ("b",) and "positive base loss" in res.rejected["a"]


def test_qfedavg_huge_losses_do_not_overflow() -> None:
    # F^q = (1e10)^40 overflows float64; the step only depends on the ratios of the F^q
    c = qffl_coefficients([1e10, 1e10], [1.0, 1.0], 40.0, 10.0)
    # s_k = q L^2 ||d||^2 / F + L = 4000 / 1e10 + 10 for both: c_k = 10 / (2 * s_k)
    np.testing.assert_allclose(c, [10 / (2 * (4000 / 1e10 + 10))] * 2, rtol=1e-12)


def test_qfedavg_params_and_refusals() -> None:
    with pytest.raises(StrategyConfigError, match="'q'"):
        make_strategy("qfedavg", {"q": -1.0})
    with pytest.raises(StrategyConfigError, match="'L'"):
        make_strategy("qfedavg", {"L": 0.0})
    s = make_strategy("qfedavg", {})
    assert s.needs_each_update and not s.robust
    with pytest.raises(StrategyConfigError, match="secure aggregation"):
        check_secagg_compatible(s)
    with pytest.raises(StrategyConfigError, match="own loss"):
        build_strategy(spec(strategy="qfedavg", privacy=PrivacyOptions(secagg=True)))
    with pytest.raises(StrategyConfigError, match="own loss"):
        build_strategy(spec(strategy="qfedavg", hierarchical=True))
    with pytest.raises(StrategyConfigError, match="mean-based"):
        build_strategy(spec(strategy="qfedavg", privacy=PrivacyOptions(dp_clip=1.0,
                                                                         dp_noise=1.0)))
    with pytest.raises(StrategyError, match="loss"):
        ClientUpdate("a", np.zeros(1, F32), 1, "1.0")


def test_qfedavg_session_gets_every_participants_base_loss() -> None:
    """In a real session (in-memory harness, real training) the base losses the update
    headers carry reach q-FedAvg: every update is accepted with its loss, none rejected."""
    sim = Sim(5)
    sid = sim.start(spec(strategy="qfedavg", strategy_params={"q": 1.0, "L": 1 / 0.05}, rounds=4))
    st = run(sim, sid)
    assert st["state"] == "completed" and st["rounds_done"] == 4, st["reason"]
    for h in st["history"]:
        assert sorted(h["accepted"]) == sorted(h["participants"]) and h["rejected"] == {}
    assert st["history"][-1]["loss"] < st["history"][0]["loss"]


def test_qfedavg_with_clipping_keeps_the_losses() -> None:
    # clipped to norm 0.2: [0.2, 0] and [0, -0.2]; L = 10, q = 1: Dw_a = [-2, 0], D_a = [-4, 0],
    # h_a = 4 + 10 * 2 = 24; Dw_b = [0, 2], D_b = [0, 1], h_b = 4 + 10 * 0.5 = 9; sum h = 33
    ups = [upd("a", [1.0, 0.0], loss=2.0), upd("b", [0.0, -2.0], loss=0.5)]
    res = make_strategy("qfedavg", {"q": 1.0, "L": 10.0, "clip_norm": 0.2}).aggregate(
        np.ones(2, F32), ups)
    assert res.rejected == {}
    np.testing.assert_allclose(res.params, [1.0 + 4 / 33, 1.0 - 1 / 33], rtol=1e-6)


def test_fl_start_s_semantics_travel_as_an_index_every_decoder_takes() -> None:
    """fl.start takes "semantics": "flower"; the announcement's decoder takes numbers only (a
    string was refused as malformed, and older nodes charge whoever relays such a message), so
    the choice travels as its index and every node builds the same strategy from it."""
    sparams = wire_params("fedadam", {"semantics": "flower", "eta": 0.1})
    assert sparams == {"semantics": 1, "eta": 0.1}
    s = spec(strategy="fedadam", strategy_params=sparams)
    got = SessionSpec.decode(Fields(unpack(pack(s.to_wire())), "fl.SessionSpec"))
    assert build_strategy(got).semantics == "flower" and build_strategy(got).eta == 0.1  # type: ignore[attr-defined]
    assert wire_params("fedadam", {"eta": 0.1}) == {"eta": 0.1}
    with pytest.raises(StrategyConfigError, match="'semantics' must be one of paper, flower, got 'flwr'"):
        wire_params("fedadam", {"semantics": "flwr"})
