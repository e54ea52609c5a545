"""Aggregation strategies against hand-computed values and invariants."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fognode.protocols.fl.strategies.base import (
    ClientUpdate, NotEnoughUpdates, StrategyConfigError, StrategyError, check_secagg_compatible)
from fognode.protocols.fl.strategies.registry import make_strategy
from fognode.protocols.fl.strategies.bulyan import bulyan_select, closest_to_median_mean
from fognode.protocols.fl.strategies.clipping import clip_to_norm
from fognode.protocols.fl.strategies.fedavg import fedavg, weighted_sum
from fognode.protocols.fl.strategies.fedprox import proximal_grad, proximal_term
from fognode.protocols.fl.strategies.krum import krum_scores, krum_select, pairwise_sq_distances
from fognode.protocols.fl.strategies.trimmed_mean import trimmed_mean

F32 = np.float32


def upd(peer: str, values: list[float] | np.ndarray, n: int = 1) -> ClientUpdate:
    return ClientUpdate(peer, np.asarray(values, dtype=F32), n)


def honest_and_outliers(n_honest: int, f: int, d: int = 50, seed: int = 1,
                        ) -> tuple[list[ClientUpdate], np.ndarray]:
    rng = np.random.default_rng(seed)
    center = rng.standard_normal(d).astype(F32)
    ups = [upd(f"h{i}", center + 0.01 * rng.standard_normal(d), 10) for i in range(n_honest)]
    ups += [upd(f"bad{i}", 1000.0 * rng.standard_normal(d), 10_000) for i in range(f)]
    return ups, center


# --- FedAvg / FedProx -------------------------------------------------------------------------

def test_fedavg_of_identical_updates_is_that_update() -> None:
    g = np.array([1.0, -2.0, 3.0], F32)
    d = [0.5, 0.25, -1.0]
    res = make_strategy("fedavg", {}).aggregate(g, [upd(p, d, n) for p, n in (("a", 1), ("b", 7), ("c", 3))])
    np.testing.assert_allclose(res.params, g + np.array(d, F32), rtol=1e-6)
    assert res.params.dtype == np.float32
    assert res.accepted == ("a", "b", "c") and res.rejected == {}


def test_fedavg_weights_by_samples() -> None:
    g = np.zeros(2, F32)
    res = make_strategy("fedavg", {}).aggregate(g, [upd("a", [1, 1], 1), upd("b", [3, -1], 3)])
    np.testing.assert_allclose(res.params, [2.5, -0.5])      # (1*1 + 3*3)/4, (1 - 3)/4
    assert res.weights == {"a": 0.25, "b": 0.75}
    assert math.isclose(sum(res.weights.values()), 1.0)


def test_weighted_sum_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(1000).astype(F32) for _ in range(7)]
    w = rng.random(7)
    np.testing.assert_allclose(weighted_sum(xs, w), np.tensordot(w, np.stack(xs), 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fedavg(xs, [1] * 7), np.mean(np.stack(xs), axis=0), rtol=1e-5, atol=1e-6)


def test_malformed_updates_are_rejected_with_reasons_never_aggregated() -> None:
    g = np.zeros(3, F32)
    ups = [
        upd("good", [1, 2, 3]),
        upd("short", [1, 2]),
        ClientUpdate("ints", np.array([1, 2, 3], dtype=np.int64), 1),
        upd("nan", [1, np.nan, 3]),
        upd("inf", [np.inf, 0, 0]),
        ClientUpdate("matrix", np.ones((3, 1), F32), 1),
    ]
    res = make_strategy("fedavg", {}).aggregate(g, ups)
    np.testing.assert_allclose(res.params, [1, 2, 3])
    assert res.accepted == ("good",)
    assert set(res.rejected) == {"short", "ints", "nan", "inf", "matrix"}
    assert "shape" in res.rejected["short"] and "floating" in res.rejected["ints"]
    assert "NaN" in res.rejected["nan"]
    with pytest.raises(NotEnoughUpdates, match="at least 1"):
        make_strategy("fedavg", {}).aggregate(g, ups[1:])


def test_duplicate_peer_is_rejected() -> None:
    res = make_strategy("fedavg", {}).aggregate(
        np.zeros(1, F32), [upd("a", [1]), upd("b", [5]), upd("a", [100])])
    assert res.accepted == ("b",) and "duplicate" in res.rejected["a"]


def test_client_update_validates() -> None:
    with pytest.raises(StrategyError, match="num_samples"):
        upd("a", [1.0], 0)
    with pytest.raises(StrategyError, match="numpy"):
        ClientUpdate("a", [1.0], 1)


def test_fedprox_term_and_mu() -> None:
    s = make_strategy("fedprox", {"mu": 0.5})
    assert s.proximal_mu == 0.5 and make_strategy("fedavg", {}).proximal_mu == 0.0
    w, wg = np.array([1.0, 2.0], F32), np.array([0.0, 4.0], F32)
    assert proximal_term(w, wg, 0.5) == pytest.approx(0.25 * (1 + 4))
    np.testing.assert_allclose(proximal_grad(w, wg, 0.5), [0.5, -1.0])
    res = s.aggregate(np.zeros(1, F32), [upd("a", [2.0], 1), upd("b", [4.0], 1)])
    np.testing.assert_allclose(res.params, [3.0])


# --- FedOpt ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_fedopt_one_step_by_hand(name: str) -> None:
    eta, b1, b2, tau = 0.01, 0.9, 0.99, 1e-3
    x0, delta = [1.0, 2.0], [0.1, -0.2]
    s = make_strategy(name, {"eta": eta, "beta1": b1, "beta2": b2, "tau": tau})
    res = s.aggregate(np.array(x0, F32), [upd("a", delta, 5)])
    expected = []
    for x, d in zip(x0, delta):
        m = (1 - b1) * d                         # m_{-1} = 0
        v0 = tau ** 2                            # v_{-1} = tau^2 (Reddi et al., Algorithm 2)
        if name == "fedadam":
            v = b2 * v0 + (1 - b2) * d * d
        elif name == "fedyogi":
            v = v0 - (1 - b2) * d * d * math.copysign(1.0, v0 - d * d)
        else:
            v = v0 + d * d
        expected.append(x + eta * m / (math.sqrt(v) + tau))
    np.testing.assert_allclose(res.params, expected, rtol=1e-6)
    # hand figure for Adam's first coordinate: m = 0.01, v = 0.99e-6 + 1e-4
    if name == "fedadam":
        assert res.params[0] == pytest.approx(1.0 + 0.01 * 0.01 / (math.sqrt(1.0099e-4) + 1e-3), rel=1e-6)


def test_fedopt_state_persists_and_moves_between_aggregators() -> None:
    g = np.array([0.0, 0.0], F32)
    a = make_strategy("fedadam", {})
    p1 = a.aggregate(g, [upd("x", [0.1, 0.1])]).params
    state = a.state_arrays()
    assert set(state) == {"m", "v"}
    np.testing.assert_allclose(state["m"], [0.01, 0.01], rtol=1e-6)
    b = make_strategy("fedadam", {})
    b.load_state_arrays(state)
    p2a = a.aggregate(p1, [upd("x", [0.1, 0.1])]).params
    p2b = b.aggregate(p1, [upd("x", [0.1, 0.1])]).params
    np.testing.assert_array_equal(p2a, p2b)
    np.testing.assert_allclose(a.state_arrays()["m"], [0.019, 0.019], rtol=1e-5)   # 0.9*0.01 + 0.01
    with pytest.raises(StrategyError, match="size changed"):
        a.aggregate(np.zeros(3, F32), [upd("x", [0.1, 0.1, 0.1])])
    with pytest.raises(StrategyError, match="no server state"):
        make_strategy("fedavg", {}).load_state_arrays(state)


# --- robust rules --------------------------------------------------------------------------

def test_median_ignores_planted_outliers() -> None:
    ups, center = honest_and_outliers(5, 2)
    res = make_strategy("median", {}).aggregate(np.zeros(50, F32), ups)
    assert np.max(np.abs(res.params - center)) < 0.05
    avg = make_strategy("fedavg", {}).aggregate(np.zeros(50, F32), ups)
    assert np.max(np.abs(avg.params - center)) > 10       # why robust rules exist
    assert res.weights == {u.peer: 1 / 7 for u in ups}


def test_median_by_hand() -> None:
    res = make_strategy("median", {}).aggregate(
        np.array([10.0, 0.0], F32), [upd("a", [1, 5]), upd("b", [2, -1]), upd("c", [100, 0]), upd("d", [3, 1])])
    np.testing.assert_allclose(res.params, [12.5, 0.5])


def test_trimmed_mean_by_hand() -> None:
    stack = np.array([[1, 10], [2, 20], [3, -30], [4, 40], [100, 50]], F32)
    np.testing.assert_allclose(trimmed_mean(stack.copy(), 1), [3.0, 70 / 3])
    np.testing.assert_allclose(trimmed_mean(stack.copy(), 0), stack.mean(axis=0))
    s = make_strategy("trimmed_mean", {"beta": 0.2})          # k = floor(0.2 * 5) = 1
    res = s.aggregate(np.zeros(2, F32), [upd(str(i), r) for i, r in enumerate(stack)])
    np.testing.assert_allclose(res.params, [3.0, 70 / 3], rtol=1e-6)
    ups, center = honest_and_outliers(8, 2)
    res = make_strategy("trimmed_mean", {"beta": 0.2}).aggregate(np.zeros(50, F32), ups)
    assert np.max(np.abs(res.params - center)) < 0.05


def test_pairwise_distances_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((6, 200)) + 50).astype(F32)     # large common offset: cancellation-prone
    dist = pairwise_sq_distances(x.copy())
    brute = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(dist, brute, rtol=1e-4, atol=1e-3)


def test_krum_scores_by_hand() -> None:
    # points on a line: 0, 1, 2, 10; f = 0 -> n - f - 2 = 2 nearest
    x = np.array([[0.0], [1.0], [2.0], [10.0]], F32)
    dist = pairwise_sq_distances(x.copy())
    np.testing.assert_allclose(krum_scores(dist, 0), [1 + 4, 1 + 1, 1 + 4, 64 + 81], atol=1e-4)
    assert list(krum_select(dist, 0, 2)) == [1, 0]


def test_krum_and_multikrum_ignore_planted_outliers() -> None:
    ups, center = honest_and_outliers(7, 2)
    res = make_strategy("krum", {"f": 2}).aggregate(np.zeros(50, F32), ups)
    assert len(res.accepted) == 1 and res.accepted[0].startswith("h")
    assert res.rejected["bad0"] == "krum: not selected"
    assert np.max(np.abs(res.params - center)) < 0.05
    assert res.weights == {res.accepted[0]: 1.0}
    mk = make_strategy("multikrum", {"f": 2}).aggregate(np.zeros(50, F32), ups)
    assert mk.accepted == tuple(f"h{i}" for i in range(7))
    assert set(mk.rejected) == {"bad0", "bad1"}
    honest_mean = np.mean(np.stack([u.delta for u in ups[:7]]), axis=0)
    np.testing.assert_allclose(mk.params, honest_mean, rtol=1e-5, atol=1e-6)
    with pytest.raises(NotEnoughUpdates, match=r"2f \+ 3"):
        make_strategy("krum", {"f": 2}).aggregate(np.zeros(50, F32), ups[:6])


def test_closest_to_median_mean_by_hand() -> None:
    cols = np.array([[0, 0, 1], [1, 5, 2], [2, 6, 3], [3, 7, 4], [10, 8, 50]], F32)
    # col0: median 2 -> {1,2,3}; col1: median 6 -> {5,6,7}; col2: median 3 -> {2,3,4}
    np.testing.assert_allclose(closest_to_median_mean(cols.copy(), 3), [2, 6, 3])
    even = np.array([[1], [2], [3], [40]], F32)               # median 2.5 -> {2, 3}
    np.testing.assert_allclose(closest_to_median_mean(even.copy(), 2), [2.5])
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 300)).astype(F32)
    med = np.median(x, axis=0)
    order = np.argsort(np.abs(x - med), axis=0, kind="stable")[:5]
    brute = np.take_along_axis(x, order, axis=0).mean(axis=0)
    np.testing.assert_allclose(closest_to_median_mean(x.copy(), 5), brute, rtol=1e-5, atol=1e-6)


def test_bulyan_guard_and_outliers() -> None:
    ups, center = honest_and_outliers(5, 2)                   # n = 7 < 4*2 + 3
    with pytest.raises(NotEnoughUpdates, match=r"4f \+ 3"):
        make_strategy("bulyan", {"f": 2}).aggregate(np.zeros(50, F32), ups)
    with pytest.raises(NotEnoughUpdates, match=r"4f \+ 3"):
        bulyan_select(np.zeros((6, 6)), 1)
    ups, center = honest_and_outliers(9, 2)                   # n = 11 = 4*2 + 3
    res = make_strategy("bulyan", {"f": 2}).aggregate(np.zeros(50, F32), ups)
    assert len(res.accepted) == 11 - 4 and all(p.startswith("h") for p in res.accepted)
    assert res.rejected["bad1"] == "bulyan: not selected"
    assert np.max(np.abs(res.params - center)) < 0.05


# --- clipping, construction, secure-aggregation compatibility ------------------------------------

def test_clip_to_norm() -> None:
    np.testing.assert_allclose(clip_to_norm(np.array([3, 4], F32), 1.0), [0.6, 0.8], rtol=1e-6)
    small = np.array([0.3, 0.4], F32)
    assert clip_to_norm(small, 1.0) is small


def test_clipped_strategy_scales_but_does_not_reject() -> None:
    s = make_strategy("fedavg", {"clip_norm": 1.0})
    res = s.aggregate(np.zeros(2, F32), [upd("a", [3, 4]), upd("b", [0.3, 0.4])])
    np.testing.assert_allclose(res.params, [(0.6 + 0.3) / 2, (0.8 + 0.4) / 2], rtol=1e-6)
    assert res.accepted == ("a", "b") and res.rejected == {}
    assert s.describe() == {"name": "fedavg", "clip_norm": 1.0}
    robust = make_strategy("median", {"clip_norm": 2.0})
    assert robust.robust and robust.name == "median"


def test_make_strategy_errors_list_valid_choices() -> None:
    with pytest.raises(StrategyConfigError, match="valid strategies: bulyan, fedadagrad"):
        make_strategy("fedsgd", {})
    with pytest.raises(StrategyConfigError, match="valid parameters: clip_norm, f"):
        make_strategy("krum", {"g": 1})
    with pytest.raises(StrategyConfigError, match="must be int"):
        make_strategy("krum", {"f": 1.5})
    with pytest.raises(StrategyConfigError, match="must be int"):
        make_strategy("krum", {"f": True})
    with pytest.raises(StrategyConfigError, match="beta"):
        make_strategy("trimmed_mean", {"beta": 0.5})
    with pytest.raises(StrategyConfigError, match="clip_norm"):
        make_strategy("fedavg", {"clip_norm": -1})
    with pytest.raises(StrategyConfigError, match="beta1"):
        make_strategy("fedyogi", {"beta1": 1.0})
    assert make_strategy("fedadam", {"eta": 1}).describe()["eta"] == 1.0


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad"])
def test_aggregate_sum_matches_aggregate(name: str) -> None:
    rng = np.random.default_rng(2)
    g = rng.standard_normal(20).astype(F32)
    ups = [upd(f"p{i}", rng.standard_normal(20), int(rng.integers(1, 50))) for i in range(5)]
    direct = make_strategy(name, {"clip_norm": 3.0}).aggregate(g, ups)
    s = make_strategy(name, {"clip_norm": 3.0})
    check_secagg_compatible(s)
    contribs = [s.client_contribution(u.delta, u.num_samples) for u in ups]
    vec_sum = np.sum([c[0] for c in contribs], axis=0)
    total = sum(c[1] for c in contribs)
    summed = s.aggregate_sum(g, vec_sum, total, [u.peer for u in ups],
                             num_samples={u.peer: u.num_samples for u in ups})
    np.testing.assert_allclose(summed.params, direct.params, rtol=1e-5, atol=1e-6)
    assert summed.weights == pytest.approx(direct.weights)


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum", "multikrum", "bulyan"])
def test_robust_strategies_refuse_secure_aggregation(name: str) -> None:
    s = make_strategy(name, {})
    assert s.robust
    with pytest.raises(StrategyConfigError, match="secure aggregation"):
        check_secagg_compatible(s)
    with pytest.raises(StrategyError, match="individual updates"):
        s.aggregate_sum(np.zeros(2, F32), np.zeros(2), 1.0, ["a"])
    with pytest.raises(StrategyError, match="secure aggregation"):
        s.client_contribution(np.zeros(2, F32), 1)


ALL = ["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "median", "trimmed_mean", "krum",
       "multikrum", "bulyan"]


@pytest.mark.parametrize("name", ALL)
def test_result_invariants_for_every_strategy(name: str) -> None:
    ups, _ = honest_and_outliers(9, 2)
    ups.append(upd("broken", [np.nan] * 50))
    res = make_strategy(name, {"f": 2} if "krum" in name or name == "bulyan" else {}).aggregate(
        np.zeros(50, F32), ups)
    assert res.params.dtype == np.float32 and res.params.shape == (50,)
    assert np.all(np.isfinite(res.params))
    assert set(res.accepted).isdisjoint(res.rejected)
    assert set(res.accepted) | set(res.rejected) == {u.peer for u in ups}
    assert set(res.weights) == set(res.accepted)
    assert sum(res.weights.values()) == pytest.approx(1.0)
    assert "NaN" in res.rejected["broken"]


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "median", "trimmed_mean", "krum", "multikrum", "bulyan"])
def test_identical_updates_give_that_update_for_every_rule(name: str) -> None:
    g = np.linspace(-1, 1, 30).astype(F32)
    d = np.random.default_rng(9).standard_normal(30).astype(F32)
    ups = [ClientUpdate(f"p{i}", d.copy(), i + 1) for i in range(7)]
    res = make_strategy(name, {}).aggregate(g, ups)
    np.testing.assert_allclose(res.params, g + d, rtol=1e-6, atol=1e-6)
