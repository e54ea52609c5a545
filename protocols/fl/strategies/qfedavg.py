"""q-FedAvg (Li, Sanjabi, Beirami, Smith, ICLR 2020, "Fair Resource Allocation in Federated
Learning", Algorithm 2): the q-FFL objective sum_k F_k^(q+1) / (q + 1), which gives more weight
to the participants the current model serves worst.

With the base model w, participant k's local model w_k (our delta_k = w_k - w) and its loss
F_k = F_k(w) of the base model on its training data, Algorithm 2 computes

    Dw_k = L (w - w_k) = -L delta_k
    D_k  = F_k^q Dw_k
    h_k  = q F_k^(q-1) ||Dw_k||^2 + L F_k^q
    w'   = w - sum_k D_k / sum_k h_k

L is the Lipschitz constant of the local gradients, which the paper sets to 1 / (the clients'
learning rate): pass L = 1 / the session's lr. q = 0 is an unweighted mean of the deltas
(FedAvg without sample weights); larger q is fairer. Sample counts are not used (the paper
samples participants with probability p_k instead).

Where the losses come from: every update header carries `base_loss`, the base model's loss on
the participant's training data measured before training (`prepared.train_round`), which is
exactly F_k(w); the session puts it in `ClientUpdate.loss`. An update without a usable loss
(None, NaN/Inf, negative: -1 on the wire means "not measured") is rejected with that reason,
never given a made-up one; so is a zero loss when 0 < q < 1 (F_k^(q-1) is infinite at 0).

Numerics: the step is invariant to scaling every F_k^q by one factor, so the weights are
a_k = (F_k / max F)^q (computed as exp(q (ln F_k - ln max F))): F_k^q itself may overflow
float64 (F = 1e10, q = 40). In those terms w' = w + L sum_k a_k delta_k / sum_k s_k with
s_k = q L^2 ||delta_k||^2 a_k / F_k + L a_k.

q-FedAvg needs each update's own loss, so it cannot run on secure-aggregated or regional sums
(`needs_each_update`). Flower's QFedAvg differs: as we read `flwr/server/strategy/qfedavg.py`,
it uses one loss for every client, the server-side evaluation of the base model (+ 1e-10),
which needs a central test set that fognode does not have, so no "flower" semantics here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fognode.protocols.fl.strategies.base import (
    AggregateResult, ClientUpdate, Strategy, StrategyConfigError, StrategyError)
from fognode.protocols.fl.strategies.fedavg import weighted_sum
from fognode.protocols.fl.strategies.screening import check_global, checked_params, require, screen


def loss_problem(loss: float | None, q: float) -> str | None:
    """Why an update with base loss `loss` cannot enter a q-FedAvg step, or None."""
    if loss is None or not math.isfinite(loss) or loss < 0:
        return (f"q-fedavg needs the participant's loss of the base model, got {loss!r} "
                f"(-1: not measured)")
    if loss == 0 and 0 < q < 1:
        return f"q-fedavg with 0 < q < 1 (q = {q}) needs a positive base loss, got 0"
    return None


def qffl_coefficients(losses: Sequence[float], sq_norms: Sequence[float], q: float, L: float,
                      ) -> np.ndarray:
    """c_k with w' = w + sum_k c_k delta_k: c_k = L a_k / sum_j s_j (module docstring).
    Raises StrategyError when every loss is 0 with q > 0 (the step is 0 / 0)."""
    f = np.asarray(losses, dtype=np.float64)
    sq = np.asarray(sq_norms, dtype=np.float64)
    if q == 0:
        a = np.ones_like(f)
        s = np.full_like(f, L)          # q F^(q-1) ||Dw||^2 vanishes with q = 0
    else:
        pos = f > 0
        if not pos.any():
            raise StrategyError("q-fedavg: every base loss is 0, the q-FFL step is 0 / 0")
        log_max = math.log(float(f[pos].max()))
        a = np.zeros_like(f)
        a[pos] = np.exp(q * (np.log(f[pos]) - log_max))
        s = np.zeros_like(f)
        s[pos] = q * L * L * sq[pos] * a[pos] / f[pos] + L * a[pos]
        if q == 1:                       # F = 0, q = 1: h = L^2 ||delta||^2, scaled by 1/max F
            s[~pos] = L * L * sq[~pos] * math.exp(-log_max)
    total = float(s.sum())
    if not (math.isfinite(total) and total > 0):
        raise StrategyError(f"q-fedavg: the step's denominator is {total}")
    return L * a / total


@dataclass(eq=False)
class QFedAvg(Strategy):
    """global + the q-FedAvg step (q >= 0, Lipschitz constant L > 0); needs each update's loss."""

    q: float = 1.0
    L: float = 10.0
    name = "qfedavg"
    robust = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.q) and self.q >= 0):
            raise StrategyConfigError(f"qfedavg: parameter 'q' must be a finite number >= 0, "
                                      f"got {self.q}")
        if not (math.isfinite(self.L) and self.L > 0):
            raise StrategyConfigError(f"qfedavg: parameter 'L' (Lipschitz constant, 1 / the "
                                      f"clients' learning rate) must be a finite number > 0, "
                                      f"got {self.L}")

    @property
    def needs_each_update(self) -> bool:
        return True

    def aggregate(self, global_params: np.ndarray, updates: Sequence[ClientUpdate]) -> AggregateResult:
        g = check_global(global_params)
        s = screen(g, updates)
        rejected = dict(s.rejected)
        keep = []
        for i, u in enumerate(s.updates):
            why = loss_problem(u.loss, self.q)
            if why is None:
                keep.append(i)
            else:
                rejected[u.peer] = why
        if len(keep) < s.n:
            s = type(s)(tuple(s.updates[i] for i in keep), tuple(s.deltas[i] for i in keep),
                        s.sq_norms[keep], rejected)
        require(s, 1, self.name)
        losses = [float(u.loss) for u in s.updates if u.loss is not None]
        c = qffl_coefficients(losses, s.sq_norms, self.q, self.L)
        new = checked_params(weighted_sum(s.deltas, c, base=g), self.name)
        share = c / c.sum() if c.sum() > 0 else np.full(s.n, 1.0 / s.n)
        return AggregateResult(new, s.peers, s.rejected,
                               {p: float(w) for p, w in zip(s.peers, share)})
