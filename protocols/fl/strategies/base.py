"""The aggregation-strategy interface every FL round codes against.

A round's aggregator holds one `Strategy` instance for the whole session (server-optimiser
state such as FedAdam's moments lives in it across rounds) and calls, per round, either

- `aggregate(global_params, updates)` with the individual `ClientUpdate`s, or
- `aggregate_sum(global_params, delta_sum, total_weight, peers)` with the sum produced by
  secure aggregation, where each client submitted `client_contribution(delta, num_samples)`.

Strategies come in two kinds (`needs_each_update`):

- mean-based (FedAvg, FedProx, FedAvgM, FedAdam/Yogi/Adagrad, and anything wrapped by norm
  clipping or central DP): the new model depends on the updates only through a weighted sum,
  so they run on individual updates and on secure-aggregated sums alike;
- the others must look at each update: the robust rules (`robust`: coordinate median, trimmed
  mean, Krum, Multi-Krum, Bulyan) to find outliers, and q-FedAvg, whose weights depend on each
  participant's loss. They cannot run on a secure-aggregated sum; `aggregate_sum` raises
  `StrategyError` and the session must refuse them with secure aggregation up front
  (`check_secagg_compatible`) and with hierarchical aggregation (`registry.build_strategy`).

Updates that are malformed (wrong shape, not floating point, NaN/Inf or an overflowing norm)
are never aggregated: they come back in `AggregateResult.rejected` with the reason, and the
round goes on with the others. Too few usable updates for the rule raises `NotEnoughUpdates`.

All maths is numpy, vectorised over the parameter dimension; the new global parameters are
float32.
"""
from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from fognode.node.errors import LocalProtocolError

PARAM_DTYPE = np.float32


class StrategyError(LocalProtocolError):
    """A strategy was used in a way it does not support (this node's misuse, e.g. a robust
    rule asked to aggregate a secure-aggregated sum)."""


class StrategyConfigError(StrategyError):
    """A strategy name or parameter is invalid; the message lists what is valid. Whoever
    supplied the session parameters (an RPC caller or a session announcement) is at fault."""


class NotEnoughUpdates(StrategyError):
    """Fewer usable updates than the rule needs (e.g. Krum with n < 2f + 3, Bulyan with
    n < 4f + 3). The round should be retried or fail; nothing was aggregated."""


@dataclass(frozen=True)
class ClientUpdate:
    """One participant's update for a round.

    `delta` is the flat vector local_params - global_params (1-D, float32 normally; any
    floating dtype is accepted and converted). `num_samples` is the local sample count (> 0).
    Shape and finiteness against the global model are checked by the strategy, which rejects
    bad updates with a reason rather than raising.
    """

    peer: str
    delta: np.ndarray
    num_samples: int
    # the participant's loss of the round's base model on its training data (UpdateHeader's
    # base_loss), None when not known; only q-FedAvg uses it (-1 on the wire: not measured)
    loss: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.peer, str) or not self.peer:
            raise StrategyError("ClientUpdate.peer must be a non-empty peer id string")
        if not isinstance(self.delta, np.ndarray):
            raise StrategyError(f"ClientUpdate.delta from {self.peer} must be a numpy array, "
                                f"got {type(self.delta).__name__}")
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, (int, np.integer)) \
                or self.num_samples <= 0:
            raise StrategyError(f"ClientUpdate.num_samples from {self.peer} must be a positive "
                                f"integer, got {self.num_samples!r}")
        if self.loss is not None and (isinstance(self.loss, bool)
                                      or not isinstance(self.loss, (int, float, np.floating))):
            raise StrategyError(f"ClientUpdate.loss from {self.peer} must be a number or None, "
                                f"got {type(self.loss).__name__}")


@dataclass(frozen=True)
class AggregateResult:
    """The outcome of one aggregation.

    `params`: the new global flat float32 parameters.
    `accepted`: peers whose updates contributed, in input order.
    `rejected`: peer -> reason for every update that did not contribute (malformed, or left
    out by a robust rule such as "krum: not selected"). Norm clipping is not a rejection.
    `weights`: peer -> contribution weight used (sums to 1 over `accepted`); the evidence for
    rewards.
    """

    params: np.ndarray
    accepted: tuple[str, ...]
    rejected: dict[str, str]
    weights: dict[str, float]


class Strategy(abc.ABC):
    """One aggregation rule with its parameters and (for server optimisers) its state."""

    name: ClassVar[str]
    robust: ClassVar[bool]
    proximal_mu: float = 0.0     # FedProx: clients add mu/2 ||w - w_global||^2 to the local loss

    @property
    def needs_each_update(self) -> bool:
        """True when the rule must see each update in the clear and so cannot run on a
        secure-aggregated or regional sum: the robust rules (to find outliers) and q-FedAvg
        (each update's weight depends on that participant's own loss)."""
        return self.robust

    @property
    def min_updates(self) -> int:
        """The fewest usable updates a round needs (NotEnoughUpdates below it)."""
        return 1

    @abc.abstractmethod
    def aggregate(self, global_params: np.ndarray, updates: Sequence[ClientUpdate]) -> AggregateResult:
        """Aggregate individual updates into the new global parameters.

        Raises NotEnoughUpdates when fewer usable updates than the rule needs arrived, and
        StrategyError when `global_params` is not a 1-D floating array.
        """

    def aggregate_sum(self, global_params: np.ndarray, delta_sum: np.ndarray, total_weight: float,
                      peers: Sequence[str], *,
                      num_samples: Mapping[str, int] | None = None) -> AggregateResult:
        """Aggregate from a secure-aggregated sum of `client_contribution` vectors.

        `delta_sum` is the sum over `peers` of the contribution vectors, `total_weight` the sum
        of their contribution weights (for FedAvg: the total sample count). `num_samples`
        (optional, as announced by the peers) only shapes the reward weights; without it every
        peer gets an equal weight. Robust strategies raise StrategyError.
        """
        raise StrategyError(
            f"strategy {self.name!r} is robust: it must see individual updates and cannot "
            f"aggregate a secure-aggregated sum; use fedavg, fedprox, fedadam, fedyogi or "
            f"fedadagrad with secure aggregation")

    def client_contribution(self, delta: np.ndarray, num_samples: int) -> tuple[np.ndarray, float]:
        """What a client feeds into a secure sum for this strategy: (vector, weight).

        The aggregator later calls `aggregate_sum` with the sums of both. Robust strategies
        raise StrategyError.
        """
        raise StrategyError(f"strategy {self.name!r} is robust and cannot be used with "
                            f"secure aggregation")

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Server-side state to carry to the next round's aggregator (empty if stateless)."""
        return {}

    def load_state_arrays(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore state produced by `state_arrays` (e.g. on a fallback aggregator).

        Raises StrategyError when the state does not belong to this strategy.
        """
        if state:
            raise StrategyError(f"strategy {self.name!r} keeps no server state, got "
                                f"{sorted(state)}")

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for status output and session announcements."""
        out: dict[str, Any] = {"name": self.name}
        if dataclasses.is_dataclass(self):
            for f in dataclasses.fields(self):
                if f.init:
                    out[f.name] = getattr(self, f.name)
        return out


SEMANTICS = ("paper", "flower")
# A strategy parameter that names one of a few choices. A session announcement carries numbers
# only (its decoder, on every node since the first, refuses anything else and charges the
# relayer), so such a parameter travels as the index of its choice (semantics: 0 paper,
# 1 flower); `registry.wire_params` and `registry.build` translate. A node whose strategy has no
# such parameter cannot build the strategy and does not join the session.
CHOICE_PARAMS: dict[str, tuple[str, ...]] = {"semantics": SEMANTICS}


def choice_name(key: str, value: object) -> str | None:
    """The choice a choice parameter's index stands for; None when `value` is not one of its
    indices (or `key` names no choice)."""
    choices = CHOICE_PARAMS.get(key)
    if (choices is None or not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or not float(value).is_integer() or not 0 <= int(value) < len(choices)):
        return None
    return choices[int(value)]


def param_text(key: str, value: object) -> str:
    """`key = value` for messages, a choice's index shown by its name."""
    name = choice_name(key, value)
    if name is not None:
        return f"{key} = {name}"
    return f"{key} = {value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else f"{key} = {value}"


def check_semantics(strategy: str, semantics: str) -> None:
    """StrategyConfigError naming the parameter unless `semantics` is "paper" (the rule as
    published, the default) or "flower" (as Flower 1.x computes it, where the two differ)."""
    if semantics not in SEMANTICS:
        raise StrategyConfigError(f"{strategy}: parameter 'semantics' must be one of "
                                  f"{', '.join(SEMANTICS)}, got {semantics!r}")


def check_secagg_compatible(strategy: Strategy) -> None:
    """Raise StrategyConfigError if `strategy` cannot run on secure-aggregated sums.

    Robust rules (median, trimmed mean, Krum, Multi-Krum, Bulyan) need each update in the
    clear to find outliers, and q-FedAvg each update's own loss; secure aggregation hides
    exactly that. fognode implements no sound combination of the two, so a session asking for
    both is refused.
    """
    if strategy.needs_each_update:
        kind = ("is a robust rule and" if strategy.robust
                else "weighs each update by its own loss and")
        raise StrategyConfigError(
            f"strategy {strategy.name!r} {kind} needs individual updates, which secure "
            f"aggregation hides; choose a mean-based strategy (fedavg, fedprox, fedavgm, "
            f"fedadam, fedyogi, fedadagrad) for secure aggregation, or turn secure aggregation "
            f"off")
