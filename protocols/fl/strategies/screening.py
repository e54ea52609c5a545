"""Checks every strategy runs before touching the numbers.

`check_global` validates the current global parameters (this node's own state: a bad one is a
StrategyError). `screen` sorts the round's updates into usable ones and rejected ones with a
reason (wrong shape, not floating point, NaN/Inf or a norm that overflows, duplicate peer),
and computes each usable update's squared L2 norm on the way (one dot product per update,
reused by clipping and DP); `screen(..., values=False)` checks only the form (shape, dtype,
duplicates) for rules that detect bad values on their own result (FedAvg's one pass).
`checked_params` is the last step of every rule: the new model must be finite float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fognode.protocols.fl.strategies.base import (
    PARAM_DTYPE, ClientUpdate, NotEnoughUpdates, StrategyError)


@dataclass(frozen=True)
class Screened:
    """The usable updates of a round (input order kept) and the rejected ones."""

    updates: tuple[ClientUpdate, ...]
    deltas: tuple[np.ndarray, ...]        # float32, 1-D, same length as the global params
    sq_norms: np.ndarray                  # float64, squared L2 norm of each usable delta
                                          # (NaN when screened with values=False)
    rejected: dict[str, str]

    @property
    def n(self) -> int:
        return len(self.updates)

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(u.peer for u in self.updates)

    def num_samples(self) -> list[int]:
        """The sample counts as Python ints (exact, however large)."""
        return [int(u.num_samples) for u in self.updates]

    def stack(self) -> np.ndarray:
        """A fresh (n, d) float32 copy of the usable deltas (robust rules need the matrix)."""
        return np.stack(self.deltas)


def check_global(global_params: np.ndarray, *, values: bool = True) -> np.ndarray:
    """Return the global params as a 1-D float32 array (no copy if already); StrategyError if
    they are not a finite 1-D floating array whose squared norm fits float32. With
    `values=False` only the form is checked (for a rule whose result shows bad values)."""
    if not isinstance(global_params, np.ndarray) or global_params.ndim != 1:
        raise StrategyError("global params must be a flat (1-D) numpy array")
    if not np.issubdtype(global_params.dtype, np.floating):
        raise StrategyError(f"global params must be floating point, got {global_params.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        g = global_params.astype(PARAM_DTYPE, copy=False)
        sq = np.dot(g, g) if values else 0.0
    if not np.isfinite(sq):
        raise StrategyError("global params contain NaN/Inf or overflow")
    return g


def delta_problem(delta: np.ndarray, size: int) -> str | None:
    """Why `delta` cannot be aggregated against a model of `size` params, or None if it can."""
    if delta.ndim != 1 or delta.shape[0] != size:
        return f"wrong shape {tuple(delta.shape)}, expected ({size},)"
    if not np.issubdtype(delta.dtype, np.floating):
        return f"dtype {delta.dtype} is not floating point"
    return None


def screen(global_params: np.ndarray, updates: Sequence[ClientUpdate], *,
           values: bool = True) -> Screened:
    """Split `updates` into usable and rejected ones (see module docstring); with
    `values=False` the values are not read (no NaN/Inf or norm check, norms left NaN)."""
    size = global_params.shape[0]
    kept: list[ClientUpdate] = []
    deltas: list[np.ndarray] = []
    norms: list[float] = []
    rejected: dict[str, str] = {}
    seen: set[str] = set()
    for u in updates:
        if u.peer in seen:
            rejected.setdefault(u.peer, "duplicate update from the same peer in one round")
            continue
        seen.add(u.peer)
        why = delta_problem(u.delta, size)
        if why is not None:
            rejected[u.peer] = why
            continue
        d = u.delta.astype(PARAM_DTYPE, copy=False)
        with np.errstate(over="ignore", invalid="ignore"):
            sq = float(np.dot(d, d)) if values else float("nan")
        if values and not np.isfinite(sq):
            rejected[u.peer] = "update has NaN/Inf values or its norm overflows"
            continue
        kept.append(u)
        deltas.append(d)
        norms.append(sq)
    # A peer rejected as a duplicate must not also appear as accepted.
    if any(p in rejected for p in (u.peer for u in kept)):
        keep_idx = [i for i, u in enumerate(kept) if u.peer not in rejected]
        kept = [kept[i] for i in keep_idx]
        deltas = [deltas[i] for i in keep_idx]
        norms = [norms[i] for i in keep_idx]
    return Screened(tuple(kept), tuple(deltas), np.array(norms, dtype=np.float64), rejected)


def require(screened: Screened, minimum: int, rule: str) -> None:
    """Raise NotEnoughUpdates unless at least `minimum` usable updates are there."""
    if screened.n < minimum:
        extra = f" ({len(screened.rejected)} rejected: {screened.rejected})" if screened.rejected else ""
        raise NotEnoughUpdates(
            f"{rule} needs at least {minimum} usable updates, got {screened.n}{extra}")


def checked_params(new: np.ndarray, rule: str) -> np.ndarray:
    """`new` as float32; StrategyError naming `rule` if it fails `check_global`'s test (NaN/Inf
    or a squared norm overflowing float32): every update was finite, so the rule's arithmetic
    overflowed float32 and the model could not be the next round's."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = new.astype(PARAM_DTYPE, copy=False)
        sq = np.dot(out, out)
    if not np.isfinite(sq):
        raise StrategyError(f"{rule}: the new model overflows float32 (NaN/Inf, or a squared "
                            f"norm past float32's maximum, which the next round would refuse) "
                            f"although every accepted update was finite; the updates or the "
                            f"model are too large")
    return out


def add_checked(global_params: np.ndarray, agg: np.ndarray, rule: str) -> np.ndarray:
    """global + agg as float32 through `checked_params` (an overflowing sum gives no numpy
    warning but a StrategyError naming `rule`)."""
    with np.errstate(over="ignore", invalid="ignore"):
        new = global_params + agg
    return checked_params(new, rule)
