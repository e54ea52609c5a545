"""FedAvgM: FedAvg with server momentum (Hsu, Qi, Brown 2019, "Measuring the Effects of
Non-Identical Data Distribution for Federated Visual Classification").

Per round, with Delta the sample-weighted mean client delta (local - global) and x the model:

    u <- momentum * u + Delta          (u starts at 0, so the first round's u is Delta)
    x <- x + eta * u

Hsu et al. write it with the pseudo-gradient -Delta: v <- beta v + Delta_w, w <- w - v (server
learning rate 1; `eta` scales the step as a server learning rate does). Flower 1.x's FedAvgM
(`flwr/server/strategy/fedavgm.py`) computes the same thing, PyTorch-SGD style: pseudo_gradient =
initial - fedavg, momentum_vector = pseudo_gradient in round 1 and
server_momentum * momentum_vector + pseudo_gradient after, weights = initial -
server_learning_rate * momentum_vector. So there is one semantics: `eta` is Flower's
server_learning_rate, `momentum` its server_momentum (Flower's defaults are 1.0 and 0.0; ours
are 1.0 and 0.9, Hsu et al.'s usual beta).

Mean-based: runs on secure-aggregated and regional sums and under central DP (only the server
update differs from FedAvg). The momentum buffer u is the strategy's state ("u", carried to the
next aggregator as float32); arithmetic in float64. |u| <= max |Delta| / (1 - momentum) stays
far inside float32's range for any screened update.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from fognode.protocols.fl.strategies.base import PARAM_DTYPE, StrategyConfigError, StrategyError
from fognode.protocols.fl.strategies.fedavg import FedAvg
from fognode.protocols.fl.strategies.screening import checked_params


def momentum_buffer(u: np.ndarray | None, delta: np.ndarray, momentum: float) -> np.ndarray:
    """momentum * u + delta (u = None: the first round, u = 0), in float64."""
    d = delta.astype(np.float64)
    return d if u is None else momentum * u.astype(np.float64) + d


def momentum_step(x: np.ndarray, u: np.ndarray, eta: float) -> np.ndarray:
    """x + eta * u, in float64."""
    return x.astype(np.float64) + eta * u


@dataclass(eq=False)
class FedAvgM(FedAvg):
    """FedAvg's mean delta through server momentum (see module docstring)."""

    eta: float = 1.0         # server learning rate (Flower: server_learning_rate)
    momentum: float = 0.9    # server momentum, in [0, 1) (Flower: server_momentum)
    u: np.ndarray | None = field(default=None, init=False, repr=False)

    name = "fedavgm"
    robust = False
    plain_step = False

    def __post_init__(self) -> None:
        if not (np.isfinite(self.eta) and self.eta > 0):
            raise StrategyConfigError(f"fedavgm: parameter 'eta' (server learning rate) must be a "
                                      f"finite number > 0, got {self.eta}")
        if not 0.0 <= self.momentum < 1.0:
            raise StrategyConfigError(f"fedavgm: parameter 'momentum' must be in [0, 1), got "
                                      f"{self.momentum}")

    def server_update(self, global_params: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        if self.u is not None and self.u.shape != mean_delta.shape:
            raise StrategyError(f"fedavgm: model size changed from {self.u.shape[0]} to "
                                f"{mean_delta.shape[0]} parameters within one session")
        u = momentum_buffer(self.u, mean_delta, self.momentum)
        new = checked_params(momentum_step(global_params, u, self.eta), self.name)
        self.u = u.astype(PARAM_DTYPE)
        return new

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {} if self.u is None else {"u": self.u.copy()}

    def load_state_arrays(self, state: Mapping[str, np.ndarray]) -> None:
        if not state:
            self.u = None
            return
        if set(state) != {"u"}:
            raise StrategyError(f"fedavgm: state must have the array 'u', got {sorted(state)}")
        u = np.asarray(state["u"])
        if u.ndim != 1 or not np.all(np.isfinite(u)):
            raise StrategyError("fedavgm: state 'u' must be a finite 1-D array")
        self.u = u.astype(PARAM_DTYPE)
