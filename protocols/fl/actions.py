"""What the sans-IO FL core asks its adapter to do (frozen action dataclasses).

The adapter (executor.py, or the in-memory harness in tests) carries each out and feeds the
outcome back through the core's methods named in each docstring.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

from fognode.node.events import Event
from fognode.protocols.fl.messages import (
    GossipMessage, MemberMeta, RoundPlan, RoundResult, SessionAnnouncement, UpdateHeader)
from fognode.protocols.fl.rewards.receipts import RoundReceipt
from fognode.protocols.fl.secagg.messages import Message as SecAggMessage
from fognode.protocols.fl.session.rounds import UpdateMeta
from fognode.protocols.fl.strategies.base import ClientUpdate, Strategy
from fognode.protocols.fl.tasks.base import TrainConfig
from fognode.protocols.fl.transfer.tensors import TensorHeader


@dataclass(frozen=True)
class Publish:
    """Gossip `msg` on the sessions topic."""

    msg: GossipMessage


@dataclass(frozen=True)
class PrepareTask:
    """Load the task, its layout, initial params and this node's data (worker thread), then
    call `core.task_ready(session_id, prepared, now)` or `core.task_failed(session_id, reason, now)`."""

    session_id: bytes
    task: str
    task_params: dict[str, float] = field(hash=False)
    init_seed: int


@dataclass(frozen=True)
class FetchModel:
    """Fetch model `model_hash` from the first of `sources` that serves it (model stream);
    then `core.model_fetched(...)` or `core.model_fetch_failed(...)`."""

    session_id: bytes
    model_hash: bytes
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Train:
    """Evaluate `base` on the local data, train from it (worker thread), then call
    `core.trained(session_id, round, try_no, outcome, now)`."""

    session_id: bytes
    round: int
    try_no: int
    base: np.ndarray = field(repr=False, compare=False)
    config: TrainConfig
    seed: int


@dataclass(frozen=True)
class SendUpdate:
    """Open the update stream to `to`, send `header(tensor_header)` then the chunks of
    `delta`; then `core.update_delivered(...)`."""

    session_id: bytes
    round: int
    try_no: int
    fallback: int
    to: str
    num_samples: int
    base_loss: float
    base_accuracy: float
    train_loss: float
    delta: np.ndarray = field(repr=False, compare=False)
    # a regional aggregator forwarding its region's combined update (hierarchical sessions)
    members: tuple[MemberMeta, ...] = ()
    weight: float = 0.0

    def header(self, tensor: TensorHeader) -> UpdateHeader:
        return UpdateHeader(self.session_id, self.round, self.try_no, self.fallback,
                            self.num_samples, self.base_loss, self.base_accuracy,
                            self.train_loss, tensor, self.members, float(self.weight))


@dataclass(frozen=True)
class Aggregate:
    """Run `strategy.aggregate(base, updates)` (worker thread); then `core.aggregated(...)`."""

    session_id: bytes
    round: int
    try_no: int
    fallback: int
    strategy: Strategy = field(compare=False)
    base: np.ndarray = field(repr=False, compare=False)
    updates: tuple[ClientUpdate, ...] = field(repr=False, compare=False)


@dataclass(frozen=True)
class SendSecAgg:
    """Send one secure-aggregation message of (round, try_no, fallback slot) to `to` on the
    secagg stream (secagg_round.encode). `meta` rides along with AdvertiseKeys. When
    `participant` is true (this node sends as a participant) report the outcome with
    `core.secagg_delivered(...)`; an aggregator's undelivered message is that peer's dropout."""

    session_id: bytes
    round: int
    try_no: int
    fallback: int
    to: str
    message: SecAggMessage = field(repr=False, compare=False)
    meta: UpdateMeta | None = None
    participant: bool = True


@dataclass(frozen=True)
class AggregateSum:
    """Run `strategy.aggregate_sum(base, delta_sum, total_weight, peers, num_samples=...)` on
    a secure-aggregated sum (worker thread); then `core.aggregated(...)`."""

    session_id: bytes
    round: int
    try_no: int
    fallback: int
    strategy: Strategy = field(compare=False)
    base: np.ndarray = field(repr=False, compare=False)
    delta_sum: np.ndarray = field(repr=False, compare=False)
    total_weight: float
    peers: tuple[str, ...]
    num_samples: dict[str, int] = field(hash=False)


@dataclass(frozen=True)
class Emit:
    event: Event


@dataclass(frozen=True)
class ReportOutcome:
    """Tell the reputation service (if any) how `subject` did: accepted update or not.
    `evidence` (32 bytes) identifies what proves it (a receipt id, or the refused update's
    round and reason), so the same evidence counts once; `detail` is for logs."""

    subject: str
    ok: bool
    weight: float
    evidence: bytes
    detail: str


@dataclass(frozen=True)
class UpdateRefused:
    """An update was rejected (count it in metrics by reason)."""

    session_id: bytes
    peer: str
    reason: str


@dataclass(frozen=True)
class MessageRefused:
    """A control message (`kind`: "plan" or "ended") was refused: `reason` says why (sent by
    a peer that is no coordinator of the session, or by a coordinator that was superseded).
    Log it and count it by kind."""

    session_id: bytes
    peer: str
    kind: str
    reason: str


@dataclass(frozen=True)
class SaveModel:
    """Write the session's model to the data dir (final=True at the session's end)."""

    session_id: bytes
    model_hash: bytes
    params: np.ndarray = field(repr=False, compare=False)
    final: bool


@dataclass(frozen=True)
class PayRewards:
    """This node aggregated a round with a reward and the coordinator adopted its model (the
    next plan builds on it, or the session ended with it): issue one "fl_update" ledger receipt
    per accepted participant (not itself), with the session's announcement and the plan's
    signed header as evidence (receipts.issue_ledger_receipts), and have the ledger mint their
    shares."""

    receipt: RoundReceipt
    announcement: SessionAnnouncement = field(compare=False)
    plan: RoundPlan = field(compare=False)


@dataclass(frozen=True)
class RoundJudged:
    """This node trained for a round and its aggregator published the round's signed receipt
    (listing this node as accepted, or not): hand it to the harvest role's contribution
    ledger, which credits the work as validated or rejected (protocols/harvest/receipts.py)."""

    receipt: RoundReceipt


@dataclass(frozen=True)
class PushResult:
    """This node aggregated the round and published `result`: also push it, with its new
    model (held in the session's models), to the acting coordinator `coordinator` on the
    transfer session (a "result" request, transfer/push.py). Sent only to a coordinator
    advertising the RESULT_PUSH capability; nothing is fed back (the gossiped result and the
    coordinator's fetch cover a push that fails)."""

    session_id: bytes
    coordinator: str
    result: RoundResult = field(compare=False)


Action = Union[MessageRefused, PayRewards, Publish, PrepareTask, FetchModel, Train, SendUpdate, Aggregate, Emit,
               ReportOutcome, UpdateRefused, SaveModel, SendSecAgg, AggregateSum, RoundJudged, PushResult]
