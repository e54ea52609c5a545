"""Coordinate-wise median (Yin et al., ICML 2018).

Each coordinate of the aggregate is the median of that coordinate over the updates, so up to
just under half of the updates can be arbitrary without moving it outside the range of the
honest values. Sample counts are ignored on purpose (a Byzantine peer could claim any count);
every update gets an equal reward weight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fognode.protocols.fl.strategies.base import (
    PARAM_DTYPE, AggregateResult, ClientUpdate, Strategy)
from fognode.protocols.fl.strategies.screening import add_checked, check_global, require, screen


def coordinate_median(stack: np.ndarray) -> np.ndarray:
    """Median over axis 0 of an (n, d) array. Sorts `stack` in place along axis 0, which for
    the small n of a round is several times faster than `np.median` (no extra copy)."""
    n = stack.shape[0]
    stack.sort(axis=0)
    if n % 2:
        return stack[n // 2].astype(PARAM_DTYPE)
    mid = (stack[n // 2 - 1].astype(np.float64) + stack[n // 2]) / 2.0
    return mid.astype(PARAM_DTYPE)


@dataclass(eq=False)
class Median(Strategy):
    """The new model is global + the coordinate-wise median of the deltas."""

    name = "median"
    robust = True

    def aggregate(self, global_params: np.ndarray, updates: Sequence[ClientUpdate]) -> AggregateResult:
        g = check_global(global_params)
        s = screen(g, updates)
        require(s, 1, self.name)
        new = add_checked(g, coordinate_median(s.stack()), self.name)
        return AggregateResult(new, s.peers, s.rejected,
                               {p: 1.0 / s.n for p in s.peers})
