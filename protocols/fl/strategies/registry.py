"""Name -> strategy class, with parameter validation for `base.make_strategy`.

A strategy's parameters are the init fields of its dataclass (types int, float or bool);
"clip_norm" is accepted for every strategy and wraps it in `clipping.Clipped`. Unknown names,
unknown parameters and wrongly typed values raise StrategyConfigError listing what is valid.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from fognode.protocols.fl.strategies.base import Strategy, StrategyConfigError
from fognode.protocols.fl.strategies.bulyan import Bulyan
from fognode.protocols.fl.strategies.clipping import Clipped
from fognode.protocols.fl.strategies.fedavg import FedAvg
from fognode.protocols.fl.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from fognode.protocols.fl.strategies.fedprox import FedProx
from fognode.protocols.fl.strategies.krum import Krum, MultiKrum
from fognode.protocols.fl.strategies.median import Median
from fognode.protocols.fl.strategies.trimmed_mean import TrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad, Median,
                              TrimmedMean, Krum, MultiKrum, Bulyan)
}
COMMON_PARAMS = {"clip_norm": float}


def param_types(cls: type[Strategy]) -> dict[str, type]:
    """The settable parameters of a strategy class and their types."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if f.init}


def _coerce(strategy: str, key: str, want: type, value: Any) -> Any:
    if want is bool:
        if isinstance(value, bool):
            return value
    elif want is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif want is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise StrategyConfigError(f"{strategy}: parameter {key!r} must be finite")
            return float(value)
    raise StrategyConfigError(f"{strategy}: parameter {key!r} must be {want.__name__}, "
                              f"got {type(value).__name__} {value!r}")


def build(name: str, params: dict[str, Any]) -> Strategy:
    """Instantiate strategy `name` with `params` (see module docstring)."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise StrategyConfigError(f"unknown strategy {name!r}; valid strategies: "
                                  f"{', '.join(sorted(STRATEGIES))}")
    types = param_types(cls)
    allowed = {**types, **COMMON_PARAMS}
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise StrategyConfigError(f"{name}: unknown parameter(s) {unknown}; valid parameters: "
                                  f"{', '.join(sorted(allowed)) or 'none'}")
    kwargs = {k: _coerce(name, k, types[k], v) for k, v in params.items() if k in types}
    strategy: Strategy = cls(**kwargs)
    if "clip_norm" in params:
        strategy = Clipped(strategy, _coerce(name, "clip_norm", float, params["clip_norm"]))
    return strategy
