"""Coordinate-wise trimmed mean (Yin et al., ICML 2018).

For each coordinate, drop the k largest and k smallest values, with k = floor(beta * n), and
average the remaining n - 2k. Tolerates up to k arbitrary updates per coordinate. Equal weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fognode.protocols.fl.strategies.base import (
    AggregateResult, ClientUpdate, Strategy, StrategyConfigError, StrategyError)
from fognode.protocols.fl.strategies.fedavg import weighted_sum
from fognode.protocols.fl.strategies.screening import add_checked, check_global, require, screen


def trim_count(n: int, beta: float) -> int:
    """k = floor(beta * n), the number of values dropped at each end."""
    return int(np.floor(beta * n + 1e-12))


def trimmed_mean(stack: np.ndarray, k: int) -> np.ndarray:
    """Mean over axis 0 of an (n, d) array after dropping the k smallest and k largest values
    of each column. Sorts `stack` in place along axis 0 (faster than a two-sided
    `np.partition` along that axis for the small n of a round; no extra copy)."""
    n = stack.shape[0]
    if k < 0 or n - 2 * k < 1:
        raise StrategyError(f"cannot trim {k} from each end of {n} values")
    if k > 0:
        stack.sort(axis=0)                         # rows k..n-k-1 now hold the middle values
    middle = list(stack[k:n - k])
    return weighted_sum(middle, np.full(len(middle), 1.0 / len(middle)))


@dataclass(eq=False)
class TrimmedMean(Strategy):
    """global + the coordinate-wise beta-trimmed mean of the deltas (0 <= beta < 0.5)."""

    beta: float = 0.1
    name = "trimmed_mean"
    robust = True

    def __post_init__(self) -> None:
        if not (0.0 <= self.beta < 0.5):
            raise StrategyConfigError(f"trimmed_mean: beta must be in [0, 0.5), got {self.beta}")

    def aggregate(self, global_params: np.ndarray, updates: Sequence[ClientUpdate]) -> AggregateResult:
        g = check_global(global_params)
        s = screen(g, updates)
        require(s, 1, self.name)
        k = trim_count(s.n, self.beta)
        new = add_checked(g, trimmed_mean(s.stack(), k), self.name)
        return AggregateResult(new, s.peers, s.rejected,
                               {p: 1.0 / s.n for p in s.peers})
