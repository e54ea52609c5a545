"""EigenTrust global trust (Kamvar, Schlosser, Garcia-Molina, WWW 2003), on sparse numpy arrays.

Given local trust s_ij (satisfied minus unsatisfied transactions of i with j):
  c_ij = max(s_ij, 0) / sum_j max(s_ij, 0)       (a row with no positive entry trusts p)
  t(k+1) = (1 - a) C^T t(k) + a p                (p uniform over the pre-trusted peers)
iterated from t(0) = p until ||t(k+1) - t(k)||_1 < eps. t sums to 1; `n * t_i` is 1 for an
average peer. Pre-trusted peers (from genesis) anchor the iteration: a colluding group that
only trusts itself gets trust only through the edges honest peers give it.

Entries (rows[k], cols[k]) must be unique pairs (ObservationBook sums them). The mat-vec is `np.bincount(cols, weights=c * t[rows])`: O(nnz) per iteration, no scipy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class TrustResult:
    peers: tuple[str, ...]
    trust: np.ndarray          # sums to 1 over `peers`
    iterations: int
    residual: float

    def as_dict(self) -> dict[str, float]:
        return {p: float(t) for p, t in zip(self.peers, self.trust)}


def pretrust_vector(n: int, pretrusted: Iterable[int]) -> np.ndarray:
    """p: uniform over the pre-trusted indices, or over everyone when there are none."""
    idx = np.unique(np.fromiter(pretrusted, dtype=np.int64))
    p = np.zeros(n, dtype=np.float64)
    if idx.size:
        p[idx] = 1.0 / idx.size
    elif n:
        p[:] = 1.0 / n
    return p


def normalise(n: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row-normalised positive local trust: (rows, cols, c, dangling mask of rows trusting no one)."""
    keep = (vals > 0) & (rows != cols)
    r, c, v = rows[keep], cols[keep], vals[keep].astype(np.float64)
    row_sum = np.bincount(r, weights=v, minlength=n).astype(np.float64, copy=False)
    dangling = row_sum <= 0
    return r, c, v / row_sum[r], dangling


def global_trust_indexed(n: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                         pretrusted: Iterable[int], *, alpha: float = 0.15, eps: float = 1e-9,
                         max_iter: int = 200) -> tuple[np.ndarray, int, float]:
    """EigenTrust on peers 0..n-1; returns (t, iterations, final L1 residual)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"EigenTrust damping a must be in [0, 1], got {alpha}")
    if n == 0:
        return np.zeros(0), 0, 0.0
    p = pretrust_vector(n, pretrusted)
    r, c, w, dangling = normalise(n, rows, cols, vals)
    t = p.copy()
    residual = float("inf")
    it = 0
    for it in range(1, max_iter + 1):
        y = np.bincount(c, weights=w * t[r], minlength=n).astype(np.float64, copy=False)
        y += t[dangling].sum() * p
        t_next = (1.0 - alpha) * y + alpha * p
        t_next /= t_next.sum()
        residual = float(np.abs(t_next - t).sum())
        t = t_next
        if residual < eps:
            break
    return t, it, residual


def global_trust(peers: Sequence[str], rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                 pretrusted: Iterable[str], *, alpha: float = 0.15, eps: float = 1e-9,
                 max_iter: int = 200) -> TrustResult:
    """EigenTrust over named peers; pre-trusted peers not in `peers` are added (they anchor t)."""
    names = list(peers)
    index = {p: i for i, p in enumerate(names)}
    pre_idx = []
    for p in pretrusted:
        if p not in index:
            index[p] = len(names)
            names.append(p)
        pre_idx.append(index[p])
    t, it, res = global_trust_indexed(len(names), rows, cols, vals, pre_idx, alpha=alpha,
                                      eps=eps, max_iter=max_iter)
    return TrustResult(tuple(names), t, it, res)
