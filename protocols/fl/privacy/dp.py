"""Central differential privacy for federated rounds, with an RDP accountant.

Mechanism (DP-FedAvg, McMahan et al., ICLR 2018, with the noise on the sum):

1. every client delta is clipped to L2 norm `clip_norm` = C (by the aggregator when it sees the
   updates; by the clients themselves under secure aggregation, which the aggregator cannot
   check — see `DPStrategy.client_contribution`);
2. the clipped deltas are summed with weight 1 each (sample counts are ignored: weighting would
   raise one client's sensitivity above C);
3. Gaussian noise N(0, (z * C)^2) is added to each coordinate of the SUM, z being
   `noise_multiplier`; the sum is then divided by the number n of contributors, so the noise on
   the average has standard deviation z * C / n. n is public in fognode (round receipts list
   the accepted peers), so the division is post-processing;
4. the noisy mean delta goes through the wrapped strategy's server update (FedAvg, FedProx or a
   FedOpt optimiser: post-processing again).

One client's whole update is the protected unit (user-level DP, add/remove-one adjacency).

Accounting: each round is one run of the sampled Gaussian mechanism with noise multiplier z and
sampling rate q (the probability that a given client takes part in a round; q = 1 when the
participants are not a uniformly random, secret subsample of the population, which is the
conservative default). Its Rényi DP at integer order alpha is

    RDP(alpha) = log A_alpha / (alpha - 1),
    A_alpha = sum_{i=0..alpha} C(alpha, i) q^i (1-q)^(alpha-i) exp((i^2 - i) / (2 z^2))

(Mironov, Talwar, Zhang 2019, the integer-order formula also used by TF-Privacy and Opacus),
which for q = 1 is exactly alpha / (2 z^2) (Mironov 2017). RDP adds up over rounds, and the
(epsilon, delta) conversion is the tight one of Balle et al. 2020 / Canonne, Kamath, Steinke
2020 as in TF-Privacy's dp_accounting:

    epsilon = min over alpha of  RDP(alpha) + log(1 - 1/alpha) - log(delta * alpha) / (alpha - 1)
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from fognode.protocols.fl.strategies.base import (
    PARAM_DTYPE, AggregateResult, ClientUpdate, Strategy, StrategyConfigError, StrategyError)
from fognode.protocols.fl.strategies.clipping import clip_factor, clip_to_norm
from fognode.protocols.fl.strategies.fedavg import FedAvg, reward_weights, weighted_sum
from fognode.protocols.fl.strategies.screening import check_global, require, screen

DEFAULT_ORDERS: tuple[int, ...] = tuple(range(2, 65)) + (80, 96, 128, 192, 256, 384, 512)


# --- RDP accounting ------------------------------------------------------------------------

def _log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) without overflow."""
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    hi, lo = (a, b) if a > b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


def _log_binom(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def rdp_sampled_gaussian(q: float, noise_multiplier: float, order: int) -> float:
    """RDP at integer `order` >= 2 of one sampled Gaussian mechanism (see module docstring)."""
    if not isinstance(order, (int, np.integer)) or order < 2:
        raise StrategyConfigError(f"RDP orders must be integers >= 2, got {order!r}")
    if not 0.0 <= q <= 1.0:
        raise StrategyConfigError(f"sampling rate must be in [0, 1], got {q}")
    if noise_multiplier < 0:
        raise StrategyConfigError(f"noise multiplier must be >= 0, got {noise_multiplier}")
    if q == 0.0:
        return 0.0
    if noise_multiplier == 0.0:
        return math.inf
    if q == 1.0:
        return order / (2.0 * noise_multiplier ** 2)
    log_q, log_1q = math.log(q), math.log1p(-q)
    two_var = 2.0 * noise_multiplier ** 2
    log_a = -math.inf
    for i in range(int(order) + 1):
        term = _log_binom(int(order), i) + i * log_q + (order - i) * log_1q + (i * i - i) / two_var
        log_a = _log_add(log_a, term)
    return log_a / (order - 1)


def compute_rdp(q: float, noise_multiplier: float, steps: int,
                orders: Sequence[int] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP of `steps` rounds of the sampled Gaussian mechanism, at each order."""
    if steps < 0:
        raise StrategyConfigError(f"steps must be >= 0, got {steps}")
    return np.array([steps * rdp_sampled_gaussian(q, noise_multiplier, a) for a in orders],
                    dtype=np.float64)


def rdp_to_epsilon(orders: Sequence[int], rdp: Sequence[float] | np.ndarray,
                   delta: float) -> tuple[float, int]:
    """The smallest epsilon over the orders for this `delta`, and the order achieving it."""
    if not 0.0 < delta < 1.0:
        raise StrategyConfigError(f"delta must be in (0, 1), got {delta}")
    best, best_order = math.inf, int(orders[0])
    for a, r in zip(orders, rdp):
        if r < 0:
            raise StrategyError(f"negative RDP {r} at order {a}")
        if math.isinf(r):
            continue
        if delta ** 2 + math.expm1(-r) > 0:      # tiny divergence: (0, delta)-DP already
            eps = 0.0
        else:
            eps = r + math.log1p(-1.0 / a) - math.log(delta * a) / (a - 1)
        eps = max(eps, 0.0)
        if eps < best:
            best, best_order = eps, int(a)
    return best, best_order


class RdpAccountant:
    """Running RDP total of a session: `compose(z, q, steps)` per round, `epsilon(delta)`."""

    def __init__(self, orders: Sequence[int] = DEFAULT_ORDERS) -> None:
        self.orders = tuple(int(a) for a in orders)
        if not self.orders or min(self.orders) < 2:
            raise StrategyConfigError("RDP orders must be integers >= 2")
        self.rdp = np.zeros(len(self.orders), dtype=np.float64)
        self.steps = 0

    def compose(self, noise_multiplier: float, sampling_rate: float, steps: int = 1) -> None:
        """Add `steps` rounds of the sampled Gaussian mechanism."""
        self.rdp = self.rdp + compute_rdp(sampling_rate, noise_multiplier, steps, self.orders)
        self.steps += steps

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far for `delta` (0 before the first round)."""
        if self.steps == 0:
            return 0.0
        return rdp_to_epsilon(self.orders, self.rdp, delta)[0]


def epsilon_after(rounds: int, noise_multiplier: float, sampling_rate: float, delta: float,
                  orders: Sequence[int] = DEFAULT_ORDERS) -> float:
    """Epsilon after `rounds` identical DP rounds (what `fl.status` reports per session)."""
    if rounds == 0:
        return 0.0
    return rdp_to_epsilon(orders, compute_rdp(sampling_rate, noise_multiplier, rounds, orders),
                          delta)[0]


def noise_for_epsilon(target_epsilon: float, rounds: int, sampling_rate: float, delta: float,
                      orders: Sequence[int] = DEFAULT_ORDERS) -> float:
    """The smallest noise multiplier (to 0.1 %) whose spend after `rounds` rounds is at most
    `target_epsilon` at `delta` (bisection; epsilon falls as the noise grows).
    StrategyConfigError if no multiplier up to 1000 is enough."""
    if not (target_epsilon > 0 and rounds >= 1):
        raise StrategyConfigError("target epsilon must be > 0 and rounds >= 1")

    def eps(z: float) -> float:
        return epsilon_after(rounds, z, sampling_rate, delta, orders)

    lo, hi = 1e-3, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1000:
            raise StrategyConfigError(f"no noise multiplier up to 1000 reaches epsilon "
                                      f"{target_epsilon} in {rounds} rounds")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


# --- the mechanism -----------------------------------------------------------------------

def gaussian_noise(size: int, std: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """`size` draws of N(0, std^2) as float64, from a generator freshly seeded from the OS
    entropy pool unless one is given (tests pass a seeded one)."""
    gen = rng if rng is not None else np.random.default_rng(int.from_bytes(os.urandom(32), "little"))
    return gen.normal(0.0, std, size)


@dataclass(frozen=True)
class DPConfig:
    """Central DP parameters of a session."""

    clip_norm: float                 # C: L2 bound of one client's delta
    noise_multiplier: float          # z: noise std on the sum is z * C
    target_delta: float = 1e-5       # delta the session's epsilon is reported for
    sampling_rate: float = 1.0       # q: chance a client is in a round (1 = no amplification)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise StrategyConfigError(f"dp: clip_norm must be > 0, got {self.clip_norm}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise StrategyConfigError(f"dp: noise_multiplier must be > 0, got {self.noise_multiplier}")
        if not 0.0 < self.target_delta < 1.0:
            raise StrategyConfigError(f"dp: target_delta must be in (0, 1), got {self.target_delta}")
        if not 0.0 < self.sampling_rate <= 1.0:
            raise StrategyConfigError(f"dp: sampling_rate must be in (0, 1], got {self.sampling_rate}")


class DPStrategy(Strategy):
    """Wraps a mean-based strategy (FedAvg, FedProx, FedAdam/Yogi/Adagrad) with central DP.

    Every aggregation composes one round into `accountant`; `epsilon()` is the session's spend
    at `config.target_delta`. Raises StrategyConfigError for a robust inner strategy (the
    Gaussian mechanism's sensitivity argument needs a sum of clipped updates).
    """

    robust = False

    def __init__(self, inner: Strategy, config: DPConfig,
                 rng: np.random.Generator | None = None) -> None:
        if not isinstance(inner, FedAvg):
            raise StrategyConfigError(
                f"central DP needs a mean-based strategy (fedavg, fedprox, fedadam, fedyogi, "
                f"fedadagrad) without its own clip_norm, got {inner.name!r}")
        self.inner = inner
        self.config = config
        self.rng = rng
        self.accountant = RdpAccountant()

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def proximal_mu(self) -> float:
        return self.inner.proximal_mu

    def epsilon(self) -> float:
        return self.accountant.epsilon(self.config.target_delta)

    def _noisy_mean(self, clipped_sum: np.ndarray, n: int) -> np.ndarray:
        c = self.config
        noisy = clipped_sum.astype(np.float64) + gaussian_noise(
            clipped_sum.shape[0], c.noise_multiplier * c.clip_norm, self.rng)
        self.accountant.compose(c.noise_multiplier, c.sampling_rate)
        return (noisy / n).astype(PARAM_DTYPE)

    def aggregate(self, global_params: np.ndarray, updates: Sequence[ClientUpdate]) -> AggregateResult:
        g = check_global(global_params)
        s = screen(g, updates)
        require(s, 1, f"{self.name} with DP")
        factors = [clip_factor(sq, self.config.clip_norm) for sq in s.sq_norms]
        clipped_sum = weighted_sum(s.deltas, factors)
        new = self.inner.server_update(g, self._noisy_mean(clipped_sum, s.n))
        return AggregateResult(new, s.peers, s.rejected, {p: 1.0 / s.n for p in s.peers})

    def client_contribution(self, delta: np.ndarray, num_samples: int) -> tuple[np.ndarray, float]:
        """(delta clipped to C, 1): under secure aggregation the clients clip (the aggregator
        cannot see the updates to do it) and every contributor counts once."""
        return np.asarray(clip_to_norm(delta, self.config.clip_norm), dtype=np.float64), 1.0

    def aggregate_sum(self, global_params: np.ndarray, delta_sum: np.ndarray, total_weight: float,
                      peers: Sequence[str], *,
                      num_samples: Mapping[str, int] | None = None) -> AggregateResult:
        g = check_global(global_params)
        n = len(peers)
        if n == 0:
            raise StrategyError("secure sum over no peers")
        if not isinstance(delta_sum, np.ndarray) or delta_sum.shape != g.shape:
            raise StrategyError(f"secure sum has shape {getattr(delta_sum, 'shape', None)}, "
                                f"expected {g.shape}")
        if abs(total_weight - n) > 1e-3:
            raise StrategyError(f"DP secure sum weight {total_weight} is not the contributor "
                                f"count {n}: clients did not use DPStrategy.client_contribution")
        bound = n * self.config.clip_norm * (1 + 1e-3) + 1e-6
        if float(np.linalg.norm(delta_sum)) > bound:
            raise StrategyError(f"DP secure sum norm exceeds n * clip_norm = {bound:.6g}: some "
                                f"client did not clip")
        new = self.inner.server_update(g, self._noisy_mean(delta_sum, n))
        return AggregateResult(new, tuple(peers), {}, reward_weights(peers, num_samples))

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = dict(self.inner.state_arrays())
        out["dp_rdp"] = self.accountant.rdp.copy()
        out["dp_steps"] = np.array([self.accountant.steps], dtype=np.int64)
        return out

    def load_state_arrays(self, state: Mapping[str, np.ndarray]) -> None:
        inner = {k: v for k, v in state.items() if not k.startswith("dp_")}
        self.inner.load_state_arrays(inner)
        if "dp_rdp" in state:
            rdp = np.asarray(state["dp_rdp"], dtype=np.float64)
            if rdp.shape != self.accountant.rdp.shape or np.any(rdp < 0):
                raise StrategyError("dp state does not match this accountant's orders")
            self.accountant.rdp = rdp.copy()
            self.accountant.steps = int(np.asarray(state.get("dp_steps", [0]))[0])

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {**self.inner.describe(), "dp_clip_norm": c.clip_norm,
                "dp_noise_multiplier": c.noise_multiplier, "dp_target_delta": c.target_delta,
                "dp_sampling_rate": c.sampling_rate}
