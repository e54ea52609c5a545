"""Name -> strategy class, and the two ways to build a strategy: `make_strategy(name, params)`
(name and parameters, from an RPC call or a session announcement) and `build_strategy(spec)`
(a session's whole aggregation: the strategy, checked against the session's hierarchical and
secure-aggregation options, wrapped in central DP when asked).

A strategy's parameters are the init fields of its dataclass (types int, float, bool or str);
"clip_norm" is accepted for every strategy and wraps it in `clipping.Clipped`. Unknown names,
unknown parameters and wrongly typed values raise StrategyConfigError listing what is valid.
A parameter that names a choice (`base.CHOICE_PARAMS`: "semantics") is taken by name or, as a
session announcement carries it, by its index; `wire_params` gives the announcement's form.
This module imports every strategy module; none of them imports it back.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Mapping

from fognode.protocols.fl.messages import SessionSpec
from fognode.protocols.fl.privacy.dp import DPConfig, DPStrategy
from fognode.protocols.fl.strategies.base import (
    CHOICE_PARAMS, Strategy, StrategyConfigError, check_secagg_compatible, choice_name)
from fognode.protocols.fl.strategies.bulyan import Bulyan
from fognode.protocols.fl.strategies.clipping import Clipped
from fognode.protocols.fl.strategies.fedavg import FedAvg
from fognode.protocols.fl.strategies.fedavgm import FedAvgM
from fognode.protocols.fl.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from fognode.protocols.fl.strategies.fedprox import FedProx
from fognode.protocols.fl.strategies.krum import Krum, MultiKrum
from fognode.protocols.fl.strategies.median import Median
from fognode.protocols.fl.strategies.qfedavg import QFedAvg
from fognode.protocols.fl.strategies.trimmed_mean import TrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad, QFedAvg,
                              Median, TrimmedMean, Krum, MultiKrum, Bulyan)
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
    elif want is str:
        if isinstance(value, str) and len(value) <= 32:
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
    params = {k: _choice_name(name, k, v) if k in CHOICE_PARAMS and k in types else v
              for k, v in params.items()}
    kwargs = {k: _coerce(name, k, types[k], v) for k, v in params.items() if k in types}
    strategy: Strategy = cls(**kwargs)
    if "clip_norm" in params:
        strategy = Clipped(strategy, _coerce(name, "clip_norm", float, params["clip_norm"]))
    return strategy


def _choice_name(strategy: str, key: str, value: Any) -> Any:
    """A choice parameter's index (as announcements carry it) -> its name; a name is kept
    (the strategy checks it)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return value
    name = choice_name(key, value)
    if name is None:
        raise StrategyConfigError(f"{strategy}: parameter {key!r} must be one of "
                                  f"{', '.join(f'{c} ({i})' for i, c in enumerate(CHOICE_PARAMS[key]))}, got {value!r}")
    return name


def wire_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` as a session announcement carries them: a choice given by name (from fl.start:
    "semantics": "flower") becomes its index. Raises StrategyConfigError for a name that is not
    one of the choices; other values are left to the announcement's decoder and `build`."""
    out = dict(params)
    for key, choices in CHOICE_PARAMS.items():
        value = out.get(key)
        if isinstance(value, str):
            if value not in choices:
                raise StrategyConfigError(f"{name}: parameter {key!r} must be one of "
                                          f"{', '.join(choices)}, got {value!r}")
            out[key] = choices.index(value)
    return out


def make_strategy(name: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """Build a strategy by name from its parameters (session announcement or RPC).

    Names: the keys of STRATEGIES. The parameter "clip_norm" (> 0) wraps any of them in
    per-update L2 norm clipping. Raises StrategyConfigError naming the valid names or
    parameters.
    """
    return build(name, dict(params or {}))


def build_strategy(spec: SessionSpec) -> Strategy:
    """The session's aggregation strategy (with central DP when asked). Raises
    StrategyConfigError for invalid names/parameters or robust + secure aggregation (robust
    rules need the individual updates that secure aggregation hides), and for hierarchical
    sessions with secure aggregation or a robust strategy (session_hier.py says why)."""
    strategy = make_strategy(spec.strategy, spec.strategy_params)
    if spec.hierarchical and spec.privacy.secagg:
        raise StrategyConfigError("hierarchical aggregation cannot be combined with secure "
                                  "aggregation: regional aggregators combine plain updates")
    if spec.hierarchical and strategy.needs_each_update:
        why = ("is robust and cannot run hierarchically: regional means would hide outliers "
               "from it" if strategy.robust else "weighs each update by its own loss and cannot "
               "run hierarchically on regional means")
        raise StrategyConfigError(
            f"strategy {spec.strategy!r} {why}; use fedavg, fedprox, fedavgm, fedadam, fedyogi "
            f"or fedadagrad with hierarchical=true")
    if spec.privacy.secagg:
        check_secagg_compatible(strategy)
    if spec.privacy.dp:
        strategy = DPStrategy(strategy, DPConfig(spec.privacy.dp_clip, spec.privacy.dp_noise,
                                                 spec.privacy.dp_delta))
    return strategy
