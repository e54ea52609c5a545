"""Strategy numerics: Krum/Multi-Krum/Bulyan picks against exact distances with large
outliers, and the silent float failures (FedAvg's sample-count overflow, FedAdagrad's second
moment, overflowing results) that now give a sound result or a clear error."""
from __future__ import annotations

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
