"""What `fl.start` checks before a session is announced (issue 15 item 13).

`preflight(spec, strategy, eligible)` returns the refusals (the session would run but could not
do what was asked: no privacy, or no round could ever aggregate) and the warnings (the session
may wait for devices that are not there yet). Pure: the role hands it the number of devices
that are eligible under the session's criteria now (this node included when it trains).
"""
from __future__ import annotations

from dataclasses import dataclass

from fognode.protocols.fl.messages import SessionSpec
from fognode.protocols.fl.strategies.base import Strategy, param_text


@dataclass(frozen=True)
class Preflight:
    refusals: tuple[str, ...]
    warnings: tuple[str, ...]


def preflight(spec: SessionSpec, strategy: Strategy, eligible: int) -> Preflight:
    """The refusals and warnings for starting `spec` with `strategy` (already built from it)
    when `eligible` devices are eligible under its selection criteria now."""
    refusals: list[str] = []
    warnings: list[str] = []
    p = spec.privacy
    if p.dp_noise > 0 and p.dp_clip <= 0:
        refusals.append(f"--dp-noise {p.dp_noise:g} without --dp-clip: noise without clipping gives no "
                        f"privacy guarantee (the sensitivity is unbounded); set --dp-clip too")
    need = strategy.min_updates
    if spec.min_participants < need:
        refusals.append(f"strategy {spec.strategy} with {_params(spec)} needs at least {need} usable updates "
                        f"per round, but --min-participants is {spec.min_participants}: rounds with fewer "
                        f"would fail; raise --min-participants to {need} (and --participants to at least that)")
    # (participants >= min_participants is the spec's own rule: checked by its decoder)
    if spec.participants > eligible:
        warnings.append(f"--participants {spec.participants} is more than the {eligible} eligible "
                        f"device(s) this node knows now: rounds run with fewer")
    if spec.min_participants > eligible:
        warnings.append(f"--min-participants {spec.min_participants} is more than the {eligible} eligible "
                        f"device(s) this node knows now: the session waits for more to opt in "
                        f"(it fails if too few have come --deadline times (1 + --max-retries) after --optin-seconds)")
    return Preflight(tuple(refusals), tuple(warnings))


def _params(spec: SessionSpec) -> str:
    if not spec.strategy_params:
        return "its default parameters"
    return ", ".join(param_text(k, v) for k, v in sorted(spec.strategy_params.items()))
