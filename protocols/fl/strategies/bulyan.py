"""Bulyan (El Mhamdi, Guerraoui, Rouault, ICML 2018).

With n updates of which at most f are Byzantine (n >= 4f + 3):
1. select theta = n - 2f updates by iterated Krum: Krum over the remaining set, move the winner
   to the selection, repeat (distances from the one float64 Gram matrix of
   `krum.screen_with_distances`);
2. per coordinate, average the beta = theta - 2f selected values closest to their median.

The closest-to-median set of each column is a contiguous window of the sorted column, so step 2
sorts the selection once along axis 0 and slides a window of length beta over the 2f + 1
possible starts (loops over those starts, vectorised over the d coordinates).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fognode.protocols.fl.strategies.base import (
    PARAM_DTYPE, AggregateResult, ClientUpdate, NotEnoughUpdates, Strategy, StrategyConfigError)
from fognode.protocols.fl.strategies.krum import krum_scores, screen_with_distances
from fognode.protocols.fl.strategies.screening import add_checked, check_global


def bulyan_select(dist: np.ndarray, f: int) -> np.ndarray:
    """Indices of the theta = n - 2f updates chosen by iterated Krum, in selection order."""
    n = dist.shape[0]
    if n < 4 * f + 3:
        raise NotEnoughUpdates(f"bulyan needs n >= 4f + 3 updates: n = {n}, f = {f} "
                               f"(needs at least {4 * f + 3})")
    remaining = list(range(n))
    chosen: list[int] = []
    for _ in range(n - 2 * f):
        scores = krum_scores(dist, f, np.array(remaining))
        best = remaining[int(np.argmin(scores))]
        chosen.append(best)
        remaining.remove(best)
    return np.array(chosen)


def closest_to_median_mean(selected: np.ndarray, beta: int) -> np.ndarray:
    """Per column of the (theta, d) array, the mean of the beta values closest to the column's
    median. Sorts `selected` in place."""
    theta = selected.shape[0]
    if not 1 <= beta <= theta:
        raise NotEnoughUpdates(f"bulyan: beta = {beta} must be in 1..{theta}")
    selected.sort(axis=0)
    s = selected
    if theta % 2:
        med = s[theta // 2].copy()
    else:
        med = ((s[theta // 2 - 1].astype(np.float64) + s[theta // 2]) / 2.0).astype(s.dtype)
    window = s[:beta].sum(axis=0, dtype=np.float64)
    best_sum = window.copy()
    best_cost = np.maximum(med - s[0], s[beta - 1] - med)
    cost, other = np.empty_like(best_cost), np.empty_like(best_cost)
    better = np.empty(best_cost.shape, dtype=bool)
    for j in range(1, theta - beta + 1):       # 2f more window starts; in-place, no temporaries
        window += s[j + beta - 1]
        window -= s[j - 1]
        np.subtract(med, s[j], out=cost)
        np.subtract(s[j + beta - 1], med, out=other)
        np.maximum(cost, other, out=cost)
        np.less(cost, best_cost, out=better)
        np.copyto(best_cost, cost, where=better)
        np.copyto(best_sum, window, where=better)
    return (best_sum / beta).astype(PARAM_DTYPE)


@dataclass(eq=False)
class Bulyan(Strategy):
    """global + Bulyan aggregate of the deltas; tolerates f Byzantine updates, n >= 4f + 3."""

    f: int = 1
    name = "bulyan"
    robust = True

    @property
    def min_updates(self) -> int:
        return 4 * self.f + 3

    def __post_init__(self) -> None:
        if self.f < 0:
            raise StrategyConfigError(f"bulyan: f must be >= 0, got {self.f}")

    def aggregate(self, global_params: np.ndarray, updates: Sequence[ClientUpdate]) -> AggregateResult:
        g = check_global(global_params)
        s, dist = screen_with_distances(g, updates)
        if s.n < 4 * self.f + 3:
            raise NotEnoughUpdates(
                f"bulyan with f = {self.f} needs n >= 4f + 3 = {4 * self.f + 3} usable updates, "
                f"got {s.n}" + (f" ({len(s.rejected)} rejected)" if s.rejected else ""))
        chosen = bulyan_select(dist, self.f)
        selected = np.stack([s.deltas[i] for i in chosen])
        agg = closest_to_median_mean(selected, len(chosen) - 2 * self.f)
        chosen_set = {int(i) for i in chosen}
        accepted = tuple(s.peers[i] for i in range(s.n) if i in chosen_set)
        rejected = dict(s.rejected)
        for i in range(s.n):
            if i not in chosen_set:
                rejected[s.peers[i]] = "bulyan: not selected"
        return AggregateResult(add_checked(g, agg, self.name), accepted, rejected,
                               {p: 1.0 / len(accepted) for p in accepted})
