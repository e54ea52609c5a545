"""Adaptive server optimisers: FedAdam, FedYogi, FedAdagrad (Reddi et al., ICLR 2021,
"Adaptive Federated Optimization", Algorithm 2).

Per round, with Delta the sample-weighted mean client delta:

    m <- beta1 * m + (1 - beta1) * Delta
    v <- v + Delta^2                                          (Adagrad)
    v <- beta2 * v + (1 - beta2) * Delta^2                    (Adam)
    v <- v - (1 - beta2) * Delta^2 * sign(v - Delta^2)        (Yogi)
    x <- x + eta * m / (sqrt(v) + tau)

As in the paper: m starts at 0, v starts at tau^2, and there is no bias correction. The state
(m, v) lives in the strategy instance across rounds; `state_arrays`/`load_state_arrays` move it
to another aggregator. Arithmetic in float64, stored as float32.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Mapping

import numpy as np

from fognode.protocols.fl.strategies.base import PARAM_DTYPE, StrategyConfigError, StrategyError
from fognode.protocols.fl.strategies.fedavg import FedAvg


def first_moment(m: np.ndarray, delta: np.ndarray, beta1: float) -> np.ndarray:
    return beta1 * m + (1.0 - beta1) * delta


def adagrad_second_moment(v: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    return v + delta * delta


def adam_second_moment(v: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    return beta2 * v + (1.0 - beta2) * (delta * delta)


def yogi_second_moment(v: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    d2 = delta * delta
    return v - (1.0 - beta2) * d2 * np.sign(v - d2)


def server_step(x: np.ndarray, m: np.ndarray, v: np.ndarray, eta: float, tau: float) -> np.ndarray:
    """x + eta * m / (sqrt(v) + tau)."""
    return x + eta * m / (np.sqrt(v) + tau)


@dataclass(eq=False)
class FedOpt(FedAvg):
    """Common part of FedAdam/FedYogi/FedAdagrad; subclasses pick the second-moment rule."""

    eta: float = 0.01       # server learning rate
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3       # adaptivity: larger tau, closer to server SGD with momentum
    m: np.ndarray | None = field(default=None, init=False, repr=False)
    v: np.ndarray | None = field(default=None, init=False, repr=False)

    robust = False
    second_moment: ClassVar = staticmethod(adam_second_moment)

    def __post_init__(self) -> None:
        for key in ("eta", "beta1", "beta2", "tau"):
            val = getattr(self, key)
            if not np.isfinite(val):
                raise StrategyConfigError(f"{self.name}: {key} must be finite, got {val}")
        if self.eta <= 0:
            raise StrategyConfigError(f"{self.name}: eta must be > 0, got {self.eta}")
        if self.tau <= 0:
            raise StrategyConfigError(f"{self.name}: tau must be > 0, got {self.tau}")
        if not 0.0 <= self.beta1 < 1.0 or not 0.0 <= self.beta2 < 1.0:
            raise StrategyConfigError(f"{self.name}: beta1 and beta2 must be in [0, 1), got "
                                      f"{self.beta1}, {self.beta2}")

    def server_update(self, global_params: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        d = mean_delta.astype(np.float64)
        if self.m is None or self.v is None:
            m = np.zeros_like(d)
            v = np.full_like(d, self.tau * self.tau)
        else:
            if self.m.shape != d.shape:
                raise StrategyError(f"{self.name}: model size changed from {self.m.shape[0]} to "
                                    f"{d.shape[0]} parameters within one session")
            m = self.m.astype(np.float64)
            v = self.v.astype(np.float64)
        m = first_moment(m, d, self.beta1)
        v = type(self).second_moment(v, d, self.beta2)
        new = server_step(global_params.astype(np.float64), m, v, self.eta, self.tau)
        self.m = m.astype(PARAM_DTYPE)
        self.v = v.astype(PARAM_DTYPE)
        return new.astype(PARAM_DTYPE)

    def state_arrays(self) -> dict[str, np.ndarray]:
        if self.m is None or self.v is None:
            return {}
        return {"m": self.m.copy(), "v": self.v.copy()}

    def load_state_arrays(self, state: Mapping[str, np.ndarray]) -> None:
        if not state:
            self.m = self.v = None
            return
        if set(state) != {"m", "v"}:
            raise StrategyError(f"{self.name}: state must have arrays 'm' and 'v', got {sorted(state)}")
        m, v = np.asarray(state["m"]), np.asarray(state["v"])
        if m.ndim != 1 or m.shape != v.shape:
            raise StrategyError(f"{self.name}: state arrays must be 1-D and of equal shape")
        if not (np.all(np.isfinite(m)) and np.all(np.isfinite(v)) and np.all(v >= 0)):
            raise StrategyError(f"{self.name}: state arrays must be finite with v >= 0")
        self.m = m.astype(PARAM_DTYPE)
        self.v = v.astype(PARAM_DTYPE)


@dataclass(eq=False)
class FedAdam(FedOpt):
    name = "fedadam"
    second_moment = staticmethod(adam_second_moment)


@dataclass(eq=False)
class FedYogi(FedOpt):
    name = "fedyogi"
    second_moment = staticmethod(yogi_second_moment)


@dataclass(eq=False)
class FedAdagrad(FedOpt):
    name = "fedadagrad"
    second_moment = staticmethod(adagrad_second_moment)
