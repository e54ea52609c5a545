"""Per-update L2 norm clipping, as an option wrapping any strategy ("clip_norm").

Each delta longer than `clip_norm` is scaled down to that length before the wrapped strategy
sees it (Sun et al. 2019, "Can you really backdoor federated learning?"); clipping bounds the
influence of one update and is what central DP's sensitivity rests on. A clipped update still
counts as accepted: clipping is not a rejection.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from fognode.protocols.fl.strategies.base import (
    PARAM_DTYPE, AggregateResult, ClientUpdate, Strategy, StrategyConfigError)
from fognode.protocols.fl.strategies.screening import check_global, delta_problem


def clip_factor(sq_norm: float, clip_norm: float) -> float:
    """min(1, clip_norm / ||x||) from the squared norm (1 for a zero vector)."""
    norm = float(np.sqrt(sq_norm))
    return 1.0 if norm <= clip_norm else clip_norm / norm


def clip_to_norm(delta: np.ndarray, clip_norm: float) -> np.ndarray:
    """`delta` scaled to L2 norm at most `clip_norm` (the same array if already inside)."""
    d = np.asarray(delta)
    sq = float(np.dot(d.astype(np.float64, copy=False), d))
    c = clip_factor(sq, clip_norm)
    if c >= 1.0:
        return d
    return (d * c).astype(d.dtype if np.issubdtype(d.dtype, np.floating) else PARAM_DTYPE)


class Clipped(Strategy):
    """`inner` applied to the updates after clipping each to L2 norm `clip_norm`."""

    def __init__(self, inner: Strategy, clip_norm: float) -> None:
        if not (np.isfinite(clip_norm) and clip_norm > 0):
            raise StrategyConfigError(f"clip_norm must be a finite number > 0, got {clip_norm}")
        self.inner = inner
        self.clip_norm = float(clip_norm)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def robust(self) -> bool:
        return self.inner.robust

    @property
    def needs_each_update(self) -> bool:
        return self.inner.needs_each_update

    @property
    def proximal_mu(self) -> float:
        return self.inner.proximal_mu

    def clip_updates(self, global_params: np.ndarray, updates: Sequence[ClientUpdate]) -> list[ClientUpdate]:
        """The updates with every well-formed delta clipped (malformed ones passed through for
        the inner strategy to reject with its reason)."""
        size = global_params.shape[0]
        out = []
        for u in updates:
            if delta_problem(u.delta, size) is not None:
                out.append(u)
                continue
            d = u.delta.astype(PARAM_DTYPE, copy=False)
            with np.errstate(over="ignore", invalid="ignore"):
                sq = float(np.dot(d, d))
            if not np.isfinite(sq):
                out.append(u)
                continue
            c = clip_factor(sq, self.clip_norm)
            out.append(u if c >= 1.0 else ClientUpdate(u.peer, d * PARAM_DTYPE(c), u.num_samples,
                                                               u.loss))
        return out

    def aggregate(self, global_params: np.ndarray, updates: Sequence[ClientUpdate]) -> AggregateResult:
        g = check_global(global_params)
        return self.inner.aggregate(g, self.clip_updates(g, updates))

    def client_contribution(self, delta: np.ndarray, num_samples: int) -> tuple[np.ndarray, float]:
        return self.inner.client_contribution(clip_to_norm(delta, self.clip_norm), num_samples)

    def aggregate_sum(self, global_params: np.ndarray, delta_sum: np.ndarray, total_weight: float,
                      peers: Sequence[str], *,
                      num_samples: Mapping[str, int] | None = None) -> AggregateResult:
        return self.inner.aggregate_sum(global_params, delta_sum, total_weight, peers,
                                        num_samples=num_samples)

    def state_arrays(self) -> dict[str, np.ndarray]:
        return self.inner.state_arrays()

    def load_state_arrays(self, state: Mapping[str, np.ndarray]) -> None:
        self.inner.load_state_arrays(state)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "clip_norm": self.clip_norm}
