"""Adaptive server optimisers: FedAdam, FedYogi, FedAdagrad (Reddi et al., ICLR 2021,
"Adaptive Federated Optimization", Algorithm 2), in two semantics.

Per round, with Delta the sample-weighted mean client delta and x the global model:

    m <- beta1 * m + (1 - beta1) * Delta
    v <- v + Delta^2                                          (Adagrad)
    v <- beta2 * v + (1 - beta2) * Delta^2                    (Adam)
    v <- v - (1 - beta2) * Delta^2 * sign(v - Delta^2)        (Yogi)
    x <- x + eta_t * m / (sqrt(v) + tau)

| semantics          | m0 | v0    | eta_t                                                   |
|--------------------|----|-------|---------------------------------------------------------|
| "paper" (default)  | 0  | tau^2 | eta (no bias correction), as in Reddi et al.            |
| "flower"           | 0  | 0     | Adam, Yogi: eta * sqrt(1 - beta2^t) / (1 - beta1^t),    |
|                    |    |       | t = server_round + 1; Adagrad: eta                      |

"flower" reproduces Flower 1.x's `flwr/server/strategy/fedadam.py`, `fedyogi.py` and
`fedadagrad.py` as we read them: `aggregate_fit` takes FedAvg's sample-weighted mean, sets
delta_t = mean - current weights, starts m_t and v_t at `np.zeros_like`, updates them with the
formulas above and, for FedAdam and FedYogi, steps with
`eta_norm = eta * sqrt(1 - beta_2 ** (server_round + 1.0)) / (1 - beta_1 ** (server_round + 1.0))`
(Kingma & Ba's alpha_t, but with t = server_round + 1 where Flower's first round is
server_round = 1, so the first step already uses t = 2). Flower's FedAdagrad has no bias
correction and fixes beta_1 = 0 (m_t = delta_t); with semantics "flower", fedadagrad therefore
requires beta1 = 0. Flower counts server rounds; fognode counts completed server updates (the
state key "t"), which is the same number as long as no round fails. Flower's defaults differ
from ours (e.g. tau = 1e-9 in FedAdam): pass eta, beta1, beta2 and tau explicitly to match a
Flower run.

The state (m, v and, for "flower", the update count t) lives in the strategy instance across
rounds; `state_arrays`/`load_state_arrays` move it to another aggregator as float32. Arithmetic
is float64. Adagrad's v only grows and can pass float32's largest value with huge deltas (it
used to become inf, and sqrt(inf) froze the model); v is therefore capped at float32's maximum
(3.4e38) after each update: from there on the step is eta * m / 1.8e19, larger than exact
Adagrad's (whose v is larger still) but finite, and the model keeps moving. (Adam's and Yogi's
v stay below max(v0, Delta^2) and never reach the cap.) A new model that
overflows float32 raises StrategyError.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Mapping

import numpy as np

from fognode.protocols.fl.strategies.base import (
    PARAM_DTYPE, StrategyConfigError, StrategyError, check_semantics)
from fognode.protocols.fl.strategies.fedavg import FedAvg
from fognode.protocols.fl.strategies.screening import checked_params

V_MAX = float(np.finfo(PARAM_DTYPE).max)


def first_moment(m: np.ndarray, delta: np.ndarray, beta1: float) -> np.ndarray:
    return beta1 * m + (1.0 - beta1) * delta


def adagrad_second_moment(v: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    return v + delta * delta


def adam_second_moment(v: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    return beta2 * v + (1.0 - beta2) * (delta * delta)


def yogi_second_moment(v: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    d2 = delta * delta
    return v - (1.0 - beta2) * d2 * np.sign(v - d2)


def flower_eta(eta: float, beta1: float, beta2: float, server_round: int) -> float:
    """Flower's bias-corrected step size: eta * sqrt(1 - beta2^t) / (1 - beta1^t), t =
    server_round + 1 (Flower's first round is server_round = 1)."""
    t = server_round + 1.0
    return eta * float(np.sqrt(1.0 - beta2 ** t)) / (1.0 - beta1 ** t)


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
    semantics: str = "paper"
    m: np.ndarray | None = field(default=None, init=False, repr=False)
    v: np.ndarray | None = field(default=None, init=False, repr=False)
    t: int = field(default=0, init=False, repr=False)   # server updates done ("flower")

    robust = False
    plain_step = False
    bias_corrected: ClassVar[bool] = True       # with semantics "flower"
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
        check_semantics(self.name, self.semantics)

    def server_update(self, global_params: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        d = mean_delta.astype(np.float64)
        flower = self.semantics == "flower"
        if self.m is None or self.v is None:
            m = np.zeros_like(d)
            v = np.zeros_like(d) if flower else np.full_like(d, self.tau * self.tau)
        else:
            if self.m.shape != d.shape:
                raise StrategyError(f"{self.name}: model size changed from {self.m.shape[0]} to "
                                    f"{d.shape[0]} parameters within one session")
            m = self.m.astype(np.float64)
            v = self.v.astype(np.float64)
        m = first_moment(m, d, self.beta1)
        v = np.minimum(type(self).second_moment(v, d, self.beta2), V_MAX)
        eta = self.eta
        if flower and self.bias_corrected:
            eta = flower_eta(self.eta, self.beta1, self.beta2, self.t + 1)
        new = checked_params(server_step(global_params.astype(np.float64), m, v, eta, self.tau),
                             self.name)
        self.m = m.astype(PARAM_DTYPE)
        self.v = v.astype(PARAM_DTYPE)
        self.t += 1
        return new

    def state_arrays(self) -> dict[str, np.ndarray]:
        if self.m is None or self.v is None:
            return {}
        out = {"m": self.m.copy(), "v": self.v.copy()}
        if self.semantics == "flower":
            out["t"] = np.array([self.t], dtype=np.float32)
        return out

    def load_state_arrays(self, state: Mapping[str, np.ndarray]) -> None:
        if not state:
            self.m = self.v = None
            self.t = 0
            return
        want = {"m", "v", "t"} if self.semantics == "flower" else {"m", "v"}
        if set(state) != want:
            raise StrategyError(f"{self.name}: state must have arrays {sorted(want)} (semantics "
                                f"{self.semantics!r}), got {sorted(state)}")
        m, v = np.asarray(state["m"]), np.asarray(state["v"])
        if m.ndim != 1 or m.shape != v.shape:
            raise StrategyError(f"{self.name}: state arrays must be 1-D and of equal shape")
        if not (np.all(np.isfinite(m)) and np.all(np.isfinite(v)) and np.all(v >= 0)):
            raise StrategyError(f"{self.name}: state arrays must be finite with v >= 0")
        if "t" in state:
            t = np.asarray(state["t"]).ravel()
            if t.shape != (1,) or not np.isfinite(t[0]) or t[0] < 1 or t[0] != int(t[0]):
                raise StrategyError(f"{self.name}: state 't' must be one integer >= 1")
            self.t = int(t[0])
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
    bias_corrected = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.semantics == "flower" and self.beta1 != 0.0:
            raise StrategyConfigError(
                f"fedadagrad: semantics 'flower' needs beta1 = 0 (Flower's FedAdagrad fixes "
                f"beta_1 = 0, so m_t = delta_t), got beta1 = {self.beta1}")
