"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017).

With n updates of which at most f are Byzantine, each update's score is the sum of squared
distances to its n - f - 2 nearest other updates; Krum picks the update with the lowest score,
Multi-Krum averages the m lowest-scoring ones. Needs n >= 2f + 3.

All pairwise squared distances come from one Gram matrix per round (`pairwise_sq_distances`:
one (n, d) x (d, n) matmul, O(n^2 d)); Bulyan reuses the same matrix for its iterated Krum.
Rows are centred first (distances do not change) so the float32 Gram does not lose the small
distances between similar updates to cancellation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fognode.protocols.fl.strategies.base import (
    PARAM_DTYPE, AggregateResult, ClientUpdate, Strategy, StrategyConfigError, StrategyError)
from fognode.protocols.fl.strategies.fedavg import weighted_sum
from fognode.protocols.fl.strategies.screening import Screened, check_global, require, screen


def pairwise_sq_distances(stack: np.ndarray) -> np.ndarray:
    """(n, n) float64 matrix of ||x_i - x_j||^2 for the rows of `stack` (centred in place)."""
    stack -= stack.mean(axis=0)
    gram = (stack @ stack.T).astype(np.float64)
    sq = np.diag(gram)
    dist = sq[:, None] + sq[None, :] - 2.0 * gram
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return dist


def krum_scores(dist: np.ndarray, f: int, subset: np.ndarray | None = None) -> np.ndarray:
    """Krum score of each member of `subset` (default: all rows) within that subset: the sum of
    its max(1, |subset| - f - 2) smallest squared distances to the other members."""
    idx = np.arange(dist.shape[0]) if subset is None else np.asarray(subset)
    sub = dist[np.ix_(idx, idx)]
    k = max(1, len(idx) - f - 2)
    if len(idx) < 2:
        return np.zeros(len(idx))
    others = np.sort(sub, axis=1)[:, 1:]   # drop the zero self-distance
    return others[:, :k].sum(axis=1)


def krum_select(dist: np.ndarray, f: int, m: int = 1) -> np.ndarray:
    """Indices of the m updates with the lowest Krum scores (ties: lower index first)."""
    n = dist.shape[0]
    if n < 2 * f + 3:
        raise StrategyError(f"krum needs n >= 2f + 3 updates: n = {n}, f = {f}")
    if not 1 <= m <= n:
        raise StrategyError(f"multikrum: m must be in 1..{n}, got {m}")
    scores = krum_scores(dist, f)
    return np.argsort(scores, kind="stable")[:m]


def _select_and_average(strategy: Strategy, g: np.ndarray, s: Screened, f: int, m: int,
                        ) -> AggregateResult:
    dist = pairwise_sq_distances(s.stack())
    chosen = krum_select(dist, f, m)
    mean = weighted_sum([s.deltas[int(i)] for i in chosen], np.full(len(chosen), 1.0 / len(chosen)))
    new = (g + mean).astype(PARAM_DTYPE, copy=False)
    chosen_set = {int(i) for i in chosen}
    accepted = tuple(s.peers[i] for i in range(s.n) if i in chosen_set)
    rejected = dict(s.rejected)
    for i in range(s.n):
        if i not in chosen_set:
            rejected[s.peers[i]] = f"{strategy.name}: not selected"
    return AggregateResult(new, accepted, rejected, {p: 1.0 / len(accepted) for p in accepted})


@dataclass(eq=False)
class Krum(Strategy):
    """global + the single delta with the lowest Krum score; tolerates f Byzantine updates."""

    f: int = 1
    name = "krum"
    robust = True

    def __post_init__(self) -> None:
        if self.f < 0:
            raise StrategyConfigError(f"{self.name}: f must be >= 0, got {self.f}")

    def aggregate(self, global_params: np.ndarray, updates: Sequence[ClientUpdate]) -> AggregateResult:
        g = check_global(global_params)
        s = screen(g, updates)
        require(s, 2 * self.f + 3, f"{self.name} with f = {self.f} (n >= 2f + 3)")
        return _select_and_average(self, g, s, self.f, 1)


@dataclass(eq=False)
class MultiKrum(Strategy):
    """global + the mean of the m lowest-scoring deltas (m = 0 means n - f)."""

    f: int = 1
    m: int = 0
    name = "multikrum"
    robust = True

    def __post_init__(self) -> None:
        if self.f < 0:
            raise StrategyConfigError(f"{self.name}: f must be >= 0, got {self.f}")
        if self.m < 0:
            raise StrategyConfigError(f"{self.name}: m must be >= 0 (0: n - f), got {self.m}")

    def aggregate(self, global_params: np.ndarray, updates: Sequence[ClientUpdate]) -> AggregateResult:
        g = check_global(global_params)
        s = screen(g, updates)
        require(s, 2 * self.f + 3, f"{self.name} with f = {self.f} (n >= 2f + 3)")
        m = self.m or s.n - self.f
        if m > s.n:
            raise StrategyError(f"{self.name}: m = {m} is more than the {s.n} usable updates")
        return _select_and_average(self, g, s, self.f, m)
