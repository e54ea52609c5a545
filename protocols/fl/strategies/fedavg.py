"""FedAvg (McMahan et al. 2017): the sample-weighted mean of the client deltas.

`weighted_sum` accumulates w_i * delta_i into one float32 buffer (no (n, d) stack), which is
faster than `np.mean(np.stack(...), axis=0)`; `FedAvg` is also the base of every mean-based
strategy: subclasses change only `server_update` (how the mean delta moves the model) or the
local objective (`proximal_mu`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from fognode.protocols.fl.strategies.base import (
    PARAM_DTYPE, AggregateResult, ClientUpdate, Strategy, StrategyError)
from fognode.protocols.fl.strategies.screening import check_global, require, screen


def sample_weights(num_samples: Sequence[float] | np.ndarray) -> np.ndarray:
    """n_i / sum(n) as float64; raises StrategyError on an empty or non-positive input."""
    n = np.asarray(num_samples, dtype=np.float64)
    if n.size == 0 or np.any(n <= 0):
        raise StrategyError("sample counts must be a non-empty list of positive numbers")
    return n / n.sum()


CHUNK = 1 << 16     # 64 Ki float32: the output and temporary chunks stay in the L2 cache


def weighted_sum(deltas: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """sum_i weights[i] * deltas[i] as a new float32 vector.

    Works chunk by chunk over the coordinates so the accumulator and the temporary stay in
    cache: each delta is read from memory once and the result written once, with no (n, d)
    stack. Loops run over the n updates and d / CHUNK chunks, never over coordinates."""
    if len(deltas) == 0:
        raise StrategyError("weighted_sum of no vectors")
    w = np.asarray(weights, dtype=np.float64).astype(PARAM_DTYPE)
    size = deltas[0].shape[0]
    out = np.empty(size, dtype=PARAM_DTYPE)
    tmp = np.empty(min(CHUNK, size), dtype=PARAM_DTYPE)
    for start in range(0, size, CHUNK):
        stop = min(start + CHUNK, size)
        acc = out[start:stop]
        t = tmp[:stop - start]
        np.multiply(deltas[0][start:stop], w[0], out=acc, dtype=PARAM_DTYPE)
        for d, wi in zip(deltas[1:], w[1:]):
            np.multiply(d[start:stop], wi, out=t, dtype=PARAM_DTYPE)
            acc += t
    return out


def fedavg(deltas: Sequence[np.ndarray], num_samples: Sequence[int]) -> np.ndarray:
    """The sample-weighted mean delta."""
    return weighted_sum(deltas, sample_weights(num_samples))


@dataclass(eq=False)
class FedAvg(Strategy):
    """Sample-weighted mean of the deltas, added to the global model (server lr 1)."""

    name = "fedavg"
    robust = False

    def server_update(self, global_params: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        """Apply the round's mean delta to the model; FedOpt subclasses override this."""
        return (global_params + mean_delta).astype(PARAM_DTYPE, copy=False)

    def aggregate(self, global_params: np.ndarray, updates: Sequence[ClientUpdate]) -> AggregateResult:
        g = check_global(global_params)
        s = screen(g, updates)
        require(s, 1, self.name)
        w = sample_weights(s.num_samples())
        new = self.server_update(g, weighted_sum(s.deltas, w))
        return AggregateResult(new, s.peers, s.rejected,
                               {p: float(wi) for p, wi in zip(s.peers, w)})

    def client_contribution(self, delta: np.ndarray, num_samples: int) -> tuple[np.ndarray, float]:
        """(num_samples * delta, num_samples): the secure sum then divides by the total."""
        if num_samples <= 0:
            raise StrategyError("num_samples must be positive")
        return np.multiply(delta, np.float64(num_samples)), float(num_samples)

    def aggregate_sum(self, global_params: np.ndarray, delta_sum: np.ndarray, total_weight: float,
                      peers: Sequence[str], *,
                      num_samples: Mapping[str, int] | None = None) -> AggregateResult:
        g = check_global(global_params)
        if not isinstance(delta_sum, np.ndarray) or delta_sum.shape != g.shape:
            raise StrategyError(f"secure sum has shape {getattr(delta_sum, 'shape', None)}, "
                                f"expected {g.shape}")
        if not peers:
            raise StrategyError("secure sum over no peers")
        if not (np.isfinite(total_weight) and total_weight > 0):
            raise StrategyError(f"secure sum total weight must be positive, got {total_weight}")
        mean = (np.asarray(delta_sum, dtype=np.float64) / float(total_weight)).astype(PARAM_DTYPE)
        if not np.isfinite(np.dot(mean, mean)):
            raise StrategyError("secure sum has NaN/Inf values")
        new = self.server_update(g, mean)
        return AggregateResult(new, tuple(peers), {}, reward_weights(peers, num_samples))


def reward_weights(peers: Sequence[str], num_samples: Mapping[str, int] | None) -> dict[str, float]:
    """Weights for a secure-aggregated round: by announced sample counts, else equal."""
    if num_samples is not None and all(num_samples.get(p, 0) > 0 for p in peers):
        w = sample_weights([num_samples[p] for p in peers])
        return {p: float(wi) for p, wi in zip(peers, w)}
    return {p: 1.0 / len(peers) for p in peers}
