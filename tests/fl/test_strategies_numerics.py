"""Strategy numerics: Krum/Multi-Krum/Bulyan picks against exact distances with large
outliers, and the silent float failures (FedAvg's sample-count overflow, FedAdagrad's second
moment, overflowing results) that now give a sound result or a clear error."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fognode.protocols.fl.strategies.base import ClientUpdate, StrategyError
from fognode.protocols.fl.strategies.bulyan import bulyan_select
from fognode.protocols.fl.strategies.fedavg import sample_weights
from fognode.protocols.fl.strategies.krum import krum_select, pairwise_sq_distances
from fognode.protocols.fl.strategies.registry import make_strategy

F32 = np.float32


def exact_sq_distances(rows: list[np.ndarray]) -> np.ndarray:
    """||x_i - x_j||^2 computed naively in float64, pair by pair (the reference)."""
    x = [r.astype(np.float64) for r in rows]
    n = len(x)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            diff = x[i] - x[j]
            out[i, j] = float(np.dot(diff, diff))
    return out


def outlier_round(seed: int, n_honest: int, f: int, scale: float, d: int = 1000,
                  ) -> list[ClientUpdate]:
    """n_honest updates scattered around a common centre, then f outliers `scale` times
    larger, in a seeded random order."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal(d)
    rows = [(centre + 0.1 * rng.standard_normal(d)).astype(F32) for _ in range(n_honest)]
    rows += [(scale * rng.standard_normal(d)).astype(F32) for _ in range(f)]
    order = rng.permutation(len(rows))
    return [ClientUpdate(f"p{k}", rows[i], 10 + k) for k, i in enumerate(order)]


@pytest.mark.parametrize("scale", [100.0, 1000.0])
def test_krum_and_multikrum_pick_as_exact_distances_do(scale: float) -> None:
    f, g = 2, np.zeros(1000, F32)
    for seed in range(200):
        ups = outlier_round(seed, 9, f, scale)
        exact = exact_sq_distances([u.delta for u in ups])
        got = pairwise_sq_distances([u.delta for u in ups])
        honest = exact < 1e4                  # outlier pairs are ~scale^2 * d away
        np.testing.assert_allclose(got[honest], exact[honest], rtol=1e-9)
        want_krum = ups[int(krum_select(exact, f, 1)[0])].peer
        assert make_strategy("krum", {"f": f}).aggregate(g, ups).accepted == (want_krum,), seed
        want_multi = {ups[int(i)].peer for i in krum_select(exact, f, 5)}
        res = make_strategy("multikrum", {"f": f, "m": 5}).aggregate(g, ups)
        assert set(res.accepted) == want_multi, seed


@pytest.mark.parametrize("scale", [100.0, 1000.0])
def test_bulyan_selects_as_exact_distances_do(scale: float) -> None:
    f, g = 2, np.zeros(1000, F32)
    for seed in range(100):
        ups = outlier_round(1000 + seed, 9, f, scale)
        want = {ups[int(i)].peer for i in bulyan_select(exact_sq_distances([u.delta for u in ups]), f)}
        assert set(make_strategy("bulyan", {"f": f}).aggregate(g, ups).accepted) == want, seed


# --- silent numeric failures (issue 11, item 9) ---------------------------------------------

def test_fedavg_with_sample_counts_whose_total_overflows_a_float() -> None:
    # 10**308 + 3 * 10**308 overflows float64: every weight used to be n_i / inf = 0 and the
    # old model came back unchanged, without an error
    g = np.array([1.0, 1.0], F32)
    ups = [ClientUpdate("a", np.array([4.0, 0.0], F32), 10**308),
           ClientUpdate("b", np.array([0.0, 8.0], F32), 3 * 10**308)]
    res = make_strategy("fedavg", {}).aggregate(g, ups)
    np.testing.assert_allclose(res.params, [1.0 + 0.25 * 4, 1.0 + 0.75 * 8])
    assert res.weights == {"a": 0.25, "b": 0.75}
    np.testing.assert_array_equal(sample_weights([2**1023] * 4), [0.25] * 4)
    np.testing.assert_array_equal(sample_weights([1e308, 1e308]), [0.5, 0.5])
    with pytest.raises(StrategyError, match="positive"):
        sample_weights([3, 0])


def test_fedadagrad_second_moment_saturates_instead_of_freezing_the_model() -> None:
    # v = tau^2 + sum of delta^2 passes float32's maximum (3.4e38) in round 2; it used to be
    # stored as inf, and eta * m / sqrt(inf) = 0 froze the model from round 3 on
    eta, b1, tau = 0.01, 0.9, 1e-3
    d = 1.5e19                                   # d^2 = 2.25e38, a screened-valid update
    s = make_strategy("fedadagrad", {"eta": eta, "beta1": b1, "tau": tau})
    x = np.zeros(1, F32)
    m, moves = 0.0, []
    for rnd in range(4):
        new = s.aggregate(x, [ClientUpdate("a", np.array([d], F32), 1)]).params
        m = b1 * m + (1 - b1) * d
        v = min(tau * tau + (rnd + 1) * d * d, 3.4028234663852886e38)   # saturated from round 2
        assert new[0] == pytest.approx(x[0] + eta * m / (math.sqrt(v) + tau), rel=1e-6)
        moves.append(float(new[0] - x[0]))
        x = new
        state = s.state_arrays()
        assert np.all(np.isfinite(state["v"]))
        fresh = make_strategy("fedadagrad", {"eta": eta, "beta1": b1, "tau": tau})
        fresh.load_state_arrays(state)          # the next aggregator can take the state over
    assert all(step > 0 for step in moves)


def test_results_that_overflow_float32_raise_a_clear_error() -> None:
    g = np.array([1e19], F32)                   # ||g||^2 = 1e38: a valid model
    ups = [ClientUpdate(f"p{i}", np.array([1.5e19], F32), 1) for i in range(3)]
    for name in ("fedavg", "median", "trimmed_mean", "fedavgm", "multikrum"):
        with pytest.raises(StrategyError, match="overflows float32"):
            make_strategy(name, {"f": 0} if name == "multikrum" else {}).aggregate(g, ups)


def test_fedavg_rejects_an_update_whose_norm_would_make_the_model_unusable() -> None:
    g = np.zeros(1000, F32)
    ups = [ClientUpdate("huge", np.full(1000, 1e19, F32), 1),       # ||x||^2 = 1e41
           ClientUpdate("ok", np.full(1000, 0.5, F32), 1),
           ClientUpdate("nan", np.full(1000, np.nan, F32), 1)]
    res = make_strategy("fedavg", {}).aggregate(g, ups)
    assert res.accepted == ("ok",) and set(res.rejected) == {"huge", "nan"}
    assert "norm overflows" in res.rejected["huge"]
    np.testing.assert_array_equal(res.params, np.full(1000, 0.5, F32))


def test_weighted_sum_propagates_nan_and_inf() -> None:
    from fognode.protocols.fl.strategies.fedavg import finite_weighted_sum, weighted_sum
    xs = [np.ones(5000, F32), np.ones(5000, F32)]
    assert finite_weighted_sum(xs, [0.5, 0.5]) is not None
    for bad in (np.nan, np.inf, -np.inf):
        ys = [xs[0], xs[1].copy()]
        ys[1][4321] = bad
        assert finite_weighted_sum(ys, [0.5, 0.5]) is None
        assert not np.isfinite(weighted_sum(ys, [0.5, 0.5])[4321])
