"""What one node keeps per FL session (`Session`), handed to the core and to its collaborators
(failover, hierarchical and secure-aggregation rounds): the models it holds (`ModelBundle`), its
hierarchical round state (`HierRound`) and an update's admission decision (`Admission`).
Plain data: no behaviour beyond derived fields, which models a session keeps (`keep_model`) and
its round timeline (`mark`: the last MARKS_KEPT steps of its rounds at this node, wall-clock,
shown by `fl.status` as "marks", so a round's critical path can be read from the nodes' own
timestamps)."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fognode.protocols.fl.actions import PayRewards
from fognode.protocols.fl.messages import MemberMeta, RoundPlan, SessionAnnouncement, SessionEnded, SessionSpec
from fognode.protocols.fl.session.coordinator import Coordinator, SessionState
from fognode.protocols.fl.session.rounds import AggregatorRound, ParticipantRound
from fognode.protocols.fl.session.standby import Standby
from fognode.protocols.fl.strategies.matrix import RowLease
from fognode.protocols.fl.training.prepared import PreparedTask

MODELS_KEPT = 3
MARKS_KEPT = 256     # timeline steps kept per session: about 15 rounds of one node's steps


@dataclass
class HierRound:
    """This node's hierarchical state for one try of a round."""

    region: str
    region_order: tuple[str, ...]
    regional: AggregatorRound | None = None        # this node aggregates its region
    forward: ParticipantRound | None = None        # its regional update, on its way up
    members: tuple[MemberMeta, ...] = ()
    weight: float = 0.0
    # at the global aggregator: per forwarding peer, (mean vector, weight)
    sums: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)


@dataclass
class ModelBundle:
    params: np.ndarray
    state: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Admission:
    """Whether an update is taken (`refusal` None) and the shape its tensor must have (None
    while the session's task is not loaded here: such an update is then refused as "shape");
    `row`: where its tensor streams to, a row of the round's update matrix (None: a new array,
    e.g. in a hierarchical session). The transfer releases the row unless the update is
    received."""

    refusal: str | None
    expected_shape: tuple[int, ...] | None = None
    row: RowLease | None = None


@dataclass
class Session:
    ann: SessionAnnouncement
    state: SessionState
    prepared: PreparedTask | None = None
    coordinator: Coordinator | None = None
    plan: RoundPlan | None = None
    order: tuple[str, ...] = ()
    participant: ParticipantRound | None = None
    aggregator: AggregatorRound | None = None
    hier: HierRound | None = None
    models: dict[bytes, ModelBundle] = field(default_factory=dict)
    model_order: list[bytes] = field(default_factory=list)
    fetching: set[bytes] = field(default_factory=set)
    rounds_done: int = 0
    latest_model: bytes = b""
    participation: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    # rounds this node aggregated, paid once the coordinator adopts their model (ending.adopted_rewards)
    rewards_due: list[PayRewards] = field(default_factory=list)
    acting: int = 0                         # rank of the coordinator this node follows
    standby: Standby | None = None          # this node is a fallback coordinator, waiting
    # the coordinator's SessionEnded, republished END_REPUBLISH times (the last round is paid
    # when it arrives: one lost message must not cost the round's rewards)
    end: SessionEnded | None = None
    end_republish: tuple[int, float] = (0, 0.0)   # (republishes left, when the next is due)
    end_answered: float = float("-inf")     # when this node last answered a question with `end`
    # silence and takeover votes (session/quorum.py): when this node last heard the acting
    # coordinator make progress, until when its open round may run, this node's next vote and
    # the gap before it, and the votes it heard: peer -> (rank voted silent, when heard)
    heard_at: float = 0.0
    open_until: float = 0.0
    next_vote: float = 0.0
    vote_gap: float = 0.0
    votes: dict[str, tuple[int, float]] = field(default_factory=dict)
    # the round timeline: (wall-clock time, round, try, step, peer or "")
    marks: deque[tuple[float, int, int, str, str]] = field(
        default_factory=lambda: deque(maxlen=MARKS_KEPT))

    def mark(self, now: float, round_no: int, try_no: int, step: str, peer: str = "") -> None:
        """Note one step of a round at this node (the timeline `fl.status` shows)."""
        self.marks.append((round(now, 4), round_no, try_no, step, peer))

    @property
    def sid(self) -> bytes:
        return self.ann.session_id

    @property
    def spec(self) -> SessionSpec:
        return self.ann.spec

    def keep_model(self, h: bytes, bundle: ModelBundle) -> None:
        """Hold model `h`, forgetting the oldest beyond MODELS_KEPT (never the latest model,
        the current plan's base or `h`). `h` must be the params' hash (`params_hash`), computed
        or checked by the caller: the model is served under it without hashing its params
        again (transfer/encoded.py)."""
        if h not in self.models:
            self.model_order.append(h)
        self.models[h] = bundle
        keep = {self.latest_model, self.plan.base_model_hash if self.plan else b"", h}
        while len(self.model_order) > MODELS_KEPT:
            victim = next((x for x in self.model_order if x not in keep), None)
            if victim is None:
                break
            self.model_order.remove(victim)
            del self.models[victim]
