"""FedAvg (McMahan et al. 2017): the sample-weighted mean of the client deltas.

`weighted_sum` computes base + sum_i w_i * delta_i. When the deltas are consecutive rows of
one float32 matrix (the updates of a round as the aggregator holds them: strategies/matrix.py)
it is ONE BLAS call, `np.dot(w, rows)` (sgemv reads every delta once, on every core), then the
base added in place. Otherwise (deltas in separate arrays) it runs in one pass over the
deltas, chunk by chunk: the accumulator chunk and one scratch chunk (CHUNK values each) stay
in cache, and each delta's chunk is read from memory once (multiplied into the scratch, added
to the accumulator), without building an (n, d) stack. Plain ufuncs there, not BLAS: copying
each chunk into an (n, chunk) buffer for one gemv was no faster, and OpenBLAS hands each of
those hundreds of mid-sized gemv calls to its threads, so that on a busy machine one call took
from 15 us to 25 ms (n = 1: 1.1 s for one aggregation). Both sum in float32 (each product
rounded once, the sum of n terms accumulated in float32, in another order: results agree to
float32 rounding, a few ulp of the largest term).
`FedAvg` is also the base of every mean-based strategy: subclasses change only `server_update`
(how the mean delta moves the model) or the local objective (`proximal_mu`).

Numerics. The weights n_i / sum(n) are computed from the exact integer total (Python ints), so
no sample count is too large (a float sum of huge counts used to overflow to inf and make every
weight 0: the old model came back unchanged). FedAvg reads each delta and the model once: it
checks only the form of the model and the updates first (shape, dtype, duplicates) and finds
NaN/Inf values from the result, which is non-finite whenever an input is (and from the result's
norm: a model whose squared norm overflows float32 would be refused by the next round); then it
checks the model and screens the values of every update (NaN/Inf, or a squared norm that
overflows float32), rejects the bad ones with their reason and averages the rest. A result that
is still unusable raises StrategyError; nothing is silent. (An update with a huge norm whose
weighted share keeps the model usable is averaged in: FedAvg bounds no update's influence; use
clip_norm or a robust rule against hostile updates.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping, Sequence

import numpy as np

from fognode.protocols.fl.strategies.base import (
    PARAM_DTYPE, AggregateResult, ClientUpdate, Strategy, StrategyError)
from fognode.protocols.fl.strategies.matrix import stacked_rows
from fognode.protocols.fl.strategies.screening import (
    Screened, check_global, checked_params, require, screen)


def sample_weights(num_samples: Sequence[int | float] | np.ndarray) -> np.ndarray:
    """n_i / sum(n) as float64; raises StrategyError on an empty, non-finite or non-positive
    input. Integer counts are normalised with Python ints (exact, no overflow); float counts
    are scaled by their maximum before the sum."""
    vals = list(num_samples)
    if not vals:
        raise StrategyError("sample counts must be a non-empty list of positive numbers")
    if all(isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) for x in vals):
        ints = [int(x) for x in vals]
        if min(ints) <= 0:
            raise StrategyError(f"sample counts must be positive, got {min(ints)}")
        total = sum(ints)
        return np.array([x / total for x in ints], dtype=np.float64)   # int / int: exact rounding
    n = np.asarray(vals, dtype=np.float64)
    if not np.all(np.isfinite(n)) or np.any(n <= 0):
        raise StrategyError("sample counts must be finite positive numbers")
    n = n / n.max()
    return n / n.sum()


CHUNK = 1 << 18         # values per chunk: accumulator + scratch = 2 MiB, in cache (L2 + L3)
F32_MAX = float(np.finfo(PARAM_DTYPE).max)


def weighted_sum(deltas: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray,
                 base: np.ndarray | None = None) -> np.ndarray:
    """base + sum_i weights[i] * deltas[i] as a new float32 vector (base: zeros if None).

    One pass over the deltas (see module docstring); loops run over the n updates and the
    d / chunk chunks, never over coordinates. NaN/Inf in any input gives NaN/Inf in the
    result (0 * Inf is NaN too)."""
    return _weighted_sum(deltas, weights, base, check=False)[0]


def finite_weighted_sum(deltas: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray,
                        base: np.ndarray | None = None) -> np.ndarray | None:
    """`weighted_sum`, or None as soon as the result is NaN/Inf or its squared L2 norm
    passes float32's maximum (some input has NaN/Inf values or a huge norm, or the sum
    overflows): a result `check_global` would refuse as the next round's model. The norm is
    summed chunk by chunk while each chunk is in cache: no extra pass over memory."""
    out, finite = _weighted_sum(deltas, weights, base, check=True)
    return out if finite else None


def _weighted_sum(deltas: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray,
                  base: np.ndarray | None, check: bool) -> tuple[np.ndarray, bool]:
    n = len(deltas)
    if n == 0:
        raise StrategyError("weighted_sum of no vectors")
    w = np.asarray(weights, dtype=np.float64).astype(PARAM_DTYPE)
    if w.shape != (n,):
        raise StrategyError(f"weighted_sum: {n} vectors but {w.size} weights")
    size = deltas[0].shape[0]
    rows = stacked_rows(deltas)
    if rows is not None:
        return _rows_weighted_sum(rows, w, base, check)
    out = np.empty(size, dtype=PARAM_DTYPE)
    tmp = np.empty(min(CHUNK, size), dtype=PARAM_DTYPE)
    sq = 0.0
    with np.errstate(over="ignore", invalid="ignore"):     # overflow shows in the result
        for start in range(0, size, CHUNK):
            stop = min(start + CHUNK, size)
            acc, t = out[start:stop], tmp[:stop - start]
            np.multiply(deltas[0][start:stop], w[0], out=acc)
            for d, wi in zip(deltas[1:], w[1:]):
                np.multiply(d[start:stop], wi, out=t)
                np.add(acc, t, out=acc)
            if base is not None:
                np.add(acc, base[start:stop], out=acc)
            if check:
                sq += float(np.einsum("j,j->", acc, acc))   # NaN/Inf in acc make sq NaN/Inf
                if not sq <= F32_MAX:
                    return out, False
    return out, True


def _rows_weighted_sum(rows: np.ndarray, w: np.ndarray, base: np.ndarray | None,
                       check: bool) -> tuple[np.ndarray, bool]:
    """`_weighted_sum` over an (n, d) float32 matrix: one sgemv, then the base added and (check)
    the squared norm summed chunk by chunk, each chunk's norm while it is in cache."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.dot(w, rows)
        if base is None and not check:
            return out, True
        sq = 0.0
        for start in range(0, out.shape[0], CHUNK):
            acc = out[start:start + CHUNK]
            if base is not None:
                np.add(acc, base[start:start + CHUNK], out=acc)
            if check:
                sq += float(np.dot(acc, acc))    # NaN/Inf in acc make sq NaN/Inf
    return out, not check or sq <= F32_MAX


def fedavg(deltas: Sequence[np.ndarray], num_samples: Sequence[int]) -> np.ndarray:
    """The sample-weighted mean delta."""
    return weighted_sum(deltas, sample_weights(num_samples))


@dataclass(eq=False)
class FedAvg(Strategy):
    """Sample-weighted mean of the deltas, added to the global model (server lr 1)."""

    name = "fedavg"
    robust = False
    # True when server_update is global + mean: the addition is then fused into the mean's pass
    plain_step: ClassVar[bool] = True

    def server_update(self, global_params: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        """Apply the round's mean delta to the model; FedOpt subclasses override this (and set
        `plain_step = False`)."""
        return checked_params(global_params + mean_delta, self.name)

    def _mean_step(self, g: np.ndarray, s: Screened) -> tuple[np.ndarray | None, np.ndarray]:
        """(new params, weights); the params are None when the weighted mean is not finite
        (some update has NaN/Inf values, or the sum overflows). The server update (and the
        optimiser state it changes) runs only on a finite mean."""
        w = sample_weights(s.num_samples())
        if self.plain_step:
            return finite_weighted_sum(s.deltas, w, base=g), w
        mean = finite_weighted_sum(s.deltas, w)
        return (None if mean is None else self.server_update(g, mean)), w

    def aggregate(self, global_params: np.ndarray, updates: Sequence[ClientUpdate]) -> AggregateResult:
        # plain FedAvg reads the model once, in the mean's pass: a bad model shows in the result
        g = check_global(global_params, values=not self.plain_step)
        s = screen(g, updates, values=False)
        require(s, 1, self.name)
        new, w = self._mean_step(g, s)
        if new is None:
            # the model, or some update, has NaN/Inf values or overflows: check the model,
            # screen the updates' values, average the good ones
            check_global(global_params)
            s = screen(g, updates)
            require(s, 1, self.name)
            new, w = self._mean_step(g, s)
            if new is None:
                raise StrategyError(f"{self.name}: the weighted mean of {s.n} finite updates "
                                    f"overflows float32 (or the model plus the mean does)")
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
        if not np.isfinite(mean).all():
            raise StrategyError("secure sum has NaN/Inf values")
        new = self.server_update(g, mean)
        return AggregateResult(new, tuple(peers), {}, reward_weights(peers, num_samples))


def reward_weights(peers: Sequence[str], num_samples: Mapping[str, int] | None) -> dict[str, float]:
    """Weights for a secure-aggregated round: by announced sample counts, else equal."""
    if num_samples is not None and all(num_samples.get(p, 0) > 0 for p in peers):
        w = sample_weights([num_samples[p] for p in peers])
        return {p: float(wi) for p, wi in zip(peers, w)}
    return {p: 1.0 / len(peers) for p in peers}
