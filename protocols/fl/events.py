"""Domain events of the fl role (published on the node's event bus)."""
from __future__ import annotations

from dataclasses import dataclass

from fognode.node.events import Event


@dataclass(frozen=True)
class TrainingRoundStarted(Event):
    session_id: str          # hex
    round: int
    try_no: int
    participants: tuple[str, ...]
    aggregator: str          # the elected aggregator (fallbacks follow in election order)
    role: str                # this node's part: "coordinator", "participant", "coordinator+participant"


@dataclass(frozen=True)
class TrainingRoundCompleted(Event):
    session_id: str
    round: int
    aggregator: str
    accepted: tuple[str, ...]
    dropped: tuple[str, ...]
    rejected: tuple[str, ...]
    loss: float
    accuracy: float
    model_hash: str          # hex


@dataclass(frozen=True)
class TrainingSessionEnded(Event):
    session_id: str
    state: str               # completed, failed, stopped
    rounds_done: int
    model_hash: str
    reason: str
