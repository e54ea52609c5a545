"""Domain events of the harvest role (published on the node's event bus).

`HarvestSessionStarted` and `HarvestContribution` are the seed's two events: a harvest session
began, and one ended with what it used and earned. `HarvestStateChanged` says the policy
suspended or resumed work (and why); `HarvestCredited`, that a receipt signed by the receiver
of this device's work was credited to it.
"""
from __future__ import annotations

from dataclasses import dataclass

from fognode.node.events import Event


@dataclass(frozen=True)
class HarvestSessionStarted(Event):
    session_id: str          # hex
    work: str                # the session's kind: "fl", "market", "manual"
    ref: str                 # what it works for (FL session id, job id, operator's note)


@dataclass(frozen=True)
class HarvestContribution(Event):
    session_id: str
    work: str
    ref: str
    state: str               # "completed" | "abandoned"
    reason: str              # why abandoned ("" when completed)
    cpu_seconds: float
    wall_seconds: float
    memory_mb_hours: float
    fuel: int
    validated: int           # results the receivers accepted (signed receipts)
    rejected: int
    tokens: int              # micro-units those receipts entitle this device to


@dataclass(frozen=True)
class HarvestStateChanged(Event):
    state: str               # "running" | "suspended"
    reasons: tuple[str, ...]  # why suspended (empty when running)


@dataclass(frozen=True)
class HarvestCredited(Event):
    receipt: str             # its kind: "fl_round" | "market_job"
    receipt_id: str          # hex
    issuer: str              # peer id of the receiver of the work, who signed
    ref: str
    outcome: str             # "validated" | "rejected"
    tokens: int
