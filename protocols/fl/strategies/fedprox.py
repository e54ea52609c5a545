"""FedProx (Li et al., MLSys 2020).

The server side is FedAvg; the difference is the clients' local objective, which adds the
proximal term mu/2 * ||w - w_global||^2. `proximal_term` and `proximal_grad` are that term and
its gradient for flat vectors (the training task adds the term to its torch loss; these are the
reference maths, used in tests and by numpy-only tasks).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fognode.protocols.fl.strategies.base import StrategyConfigError
from fognode.protocols.fl.strategies.fedavg import FedAvg


def proximal_term(local: np.ndarray, global_params: np.ndarray, mu: float) -> float:
    """mu/2 * ||local - global||^2."""
    diff = np.asarray(local, dtype=np.float64) - np.asarray(global_params, dtype=np.float64)
    return 0.5 * mu * float(np.dot(diff, diff))


def proximal_grad(local: np.ndarray, global_params: np.ndarray, mu: float) -> np.ndarray:
    """Gradient of the proximal term with respect to `local`: mu * (local - global)."""
    return (mu * (np.asarray(local, dtype=np.float64) - global_params)).astype(local.dtype)


@dataclass(eq=False)
class FedProx(FedAvg):
    """FedAvg aggregation; clients train with the proximal term of weight `mu` (>= 0)."""

    mu: float = 0.01
    name = "fedprox"
    robust = False

    def __post_init__(self) -> None:
        if not (self.mu >= 0 and np.isfinite(self.mu)):
            raise StrategyConfigError(f"fedprox: mu must be a finite number >= 0, got {self.mu}")

    @property
    def proximal_mu(self) -> float:
        return float(self.mu)
