"""One round at one node: the participant's part and the aggregator's part (sans-IO state).

Timing, per round plan received at local time t0, with D the session's round deadline and the
aggregator order o_0, o_1, ... (election.py): slot k is [t0 + k*D, t0 + (k+1)*D). A participant
sends its update to o_k for the slot it is in when training ends, and again to o_(k+1) when
slot k ends without a round result. An aggregator that refuses the update as "unknown round"
is alive and reachable and has not seen the plan yet (plans travel slowly in a network split:
14-20 s late were seen; on a busy machine a plan's gossip fan-out lets a participant that
needs no model fetch, such as the previous round's aggregator, train and send 50-150 ms before
the aggregator has the plan): it is asked again after a short wait (0.1, 0.2, 0.4, 0.8, 1.6, 2,
2 ... s) while its slot lasts, since the next aggregator of the order is often cut off, and a send to a peer
that cannot be reached takes a whole stream timeout to fail. Any other failed send (o_k
unreachable, or refusing) goes at once to the next aggregator of the order, which collects
from the start of the round; and while the current slot's aggregator lacks the update, it is
tried again after a backoff (1, 2, 4, 8 s), for as long as the slots last: a participant never
gives up on a round that can still complete (an overloaded network fails stream opens for
seconds at a time). Aggregator o_k
collects updates addressed to it and aggregates as soon as every participant has answered
(an update, or a rejection), or at the end of its slot with at least `min_participants`
usable updates; participants that sent nothing are dropped (stragglers). The last aggregator
whose slot ends short of the minimum reports the round failed; the coordinator retries it.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fognode.protocols.fl.messages import RoundPlan
from fognode.protocols.fl.strategies.base import ClientUpdate
from fognode.protocols.fl.strategies.matrix import UpdateMatrix
from fognode.protocols.fl.tasks import TrainResult

if TYPE_CHECKING:
    from fognode.protocols.fl.secagg.core import SecAggAggregator, SecAggParticipant


@dataclass(frozen=True)
class TrainOutcome:
    """What local training produced (also the base model's quality on the local data)."""

    result: TrainResult
    base_loss: float
    base_accuracy: float


@dataclass(frozen=True)
class UpdateMeta:
    num_samples: int
    base_loss: float
    base_accuracy: float
    train_loss: float


# Refusals after which sending the same update to the same aggregator again is pointless: it
# has it ("duplicate update"), or it has closed the round or the session. The participant does
# not retry that slot; when the slot ends without a result, the next aggregator gets it.
SLOT_SETTLED = frozenset({"duplicate update", "round closed", "session ended"})
# The refusal of an aggregator that has not seen the plan yet: the same aggregator is asked
# again after NOT_YET_DELAY, doubling up to NOT_YET_DELAY_MAX, while its slot lasts.
NOT_YET = "unknown round"
NOT_YET_DELAY = 0.1      # (0.5 until session 30: then each refusal cost a 0.3 s bench round 0.4 s)
NOT_YET_DELAY_MAX = 2.0
RETRY_BACKOFF = 1.0       # seconds before the sends start over after every aggregator failed,
RETRY_BACKOFF_MAX = 8.0   # doubling each time up to this


class ParticipantState(enum.Enum):
    FETCHING = "fetching"       # waiting for the base model
    TRAINING = "training"
    SENDING = "sending"         # update ready, delivering it to the current aggregator
    DONE = "done"               # the round has a result (or a newer plan replaced it)


class ParticipantRound:
    def __init__(self, plan: RoundPlan, order: tuple[str, ...], t0: float, deadline: float) -> None:
        self.plan = plan
        self.order = order
        self.t0 = t0
        self.deadline = deadline
        self.state = ParticipantState.FETCHING
        self.delta: np.ndarray | None = None
        self.meta: UpdateMeta | None = None
        self.sent_slot = -1          # slot of the aggregator the update was last addressed to
        self.in_flight = False
        self.delivered: set[int] = set()       # slots whose aggregator has the update
        self.retry_at: float | None = None     # when to try the current slot's aggregator again
        self.cycles = 0                         # retries scheduled so far (the backoff doubles)
        self.waiting: int | None = None         # a slot whose aggregator lacks the plan yet
        self.not_yet = 0                        # its refusals so far (the wait doubles)
        # secure aggregation: the contribution (vector with its weight appended) and the
        # protocol run with the aggregator of `sent_slot`
        self.contribution: np.ndarray | None = None
        self.secagg: SecAggParticipant | None = None

    def slot_at(self, now: float) -> int:
        k = int((now - self.t0) // self.deadline) if now > self.t0 else 0
        return min(k, len(self.order) - 1)

    def slot_end(self, k: int) -> float:
        return self.t0 + (k + 1) * self.deadline

    def outcome(self, slot: int, ok: bool, now: float, *, not_yet: bool = False) -> int | None:
        """Record how the send to `slot` went. Returns the slot to send to at once, if any:
        after a failure, the next aggregator of the order (fallbacks collect from the start
        of the round) unless a later one has the update already. `not_yet`: the aggregator
        refused as NOT_YET (it lacks the plan): the same one again after a short wait, while
        its slot lasts. Whenever the current slot's aggregator still lacks the update after
        that, a retry is due after a backoff (`next_send`)."""
        self.in_flight = False
        self.waiting = None
        if ok:
            self.delivered.add(slot)
        elif not_yet and slot >= self.slot_at(now) and now < self.slot_end(len(self.order) - 1):
            self.waiting = slot
            self.not_yet += 1
            self.retry_at = now + min(NOT_YET_DELAY_MAX, NOT_YET_DELAY * 2 ** (self.not_yet - 1))
            return None
        elif slot + 1 < len(self.order) and not any(d > slot for d in self.delivered):
            return slot + 1
        if self.slot_at(now) not in self.delivered:
            self.cycles += 1
            self.retry_at = now + min(RETRY_BACKOFF_MAX, RETRY_BACKOFF * 2 ** (self.cycles - 1))
        return None

    def next_send(self, now: float) -> int | None:
        """The slot to send the update to now, if any: the current slot's aggregator when it
        lacks the update (a new slot began without a round result, or a retry is due)."""
        if self.in_flight or now >= self.slot_end(len(self.order) - 1):
            return None
        cur = self.slot_at(now)
        if self.waiting is not None and self.waiting >= cur:
            cur = self.waiting          # its aggregator lacked the plan: ask it again
        if cur in self.delivered or (self.retry_at is not None and now < self.retry_at):
            return None
        return cur

    def sending_to(self, slot: int) -> None:
        self.sent_slot = slot
        self.retry_at = None


class AggregatorState(enum.Enum):
    COLLECTING = "collecting"
    AGGREGATING = "aggregating"
    DONE = "done"               # result published, failure reported, or superseded


class AggregatorRound:
    """One aggregator slot of a round. In a flat (not hierarchical, not secure) round the
    updates are rows of `matrix` (strategies/matrix.py), one row per participant at most; the
    matrix and the updates are dropped when the round is DONE (a DONE round holds no update
    data, whichever code path ended it)."""

    def __init__(self, plan: RoundPlan, order: tuple[str, ...], slot: int, t0: float,
                 deadline: float, min_participants: int) -> None:
        self.plan = plan
        self.order = order
        self.slot = slot
        self.t0 = t0
        self.closes = t0 + (slot + 1) * deadline
        self.min_participants = min_participants
        self._state = AggregatorState.COLLECTING
        self.matrix: UpdateMatrix | None = None
        self.updates: dict[str, ClientUpdate] = {}
        self.meta: dict[str, UpdateMeta] = {}
        self.rejected: dict[str, str] = {}
        # secure aggregation: the protocol run of this slot and whose inputs are in its sum
        self.secagg: SecAggAggregator | None = None
        self.contributors: tuple[str, ...] | None = None

    @property
    def state(self) -> AggregatorState:
        return self._state

    @state.setter
    def state(self, value: AggregatorState) -> None:
        self._state = value
        if value == AggregatorState.DONE and self.matrix is not None:
            self.matrix.close()         # an Aggregate action in flight keeps its rows alive
            self.matrix = None
            self.updates = {}

    def update_matrix(self, size: int) -> UpdateMatrix:
        """The round's update matrix (made on the first update: one row per participant of
        `size` values)."""
        if self.matrix is None:
            self.matrix = UpdateMatrix(len(self.plan.peers), size)
        return self.matrix

    @property
    def answered(self) -> set[str]:
        if self.contributors is not None:
            return set(self.contributors) | set(self.rejected)
        return set(self.meta) | set(self.rejected)

    def everyone_answered(self) -> bool:
        return self.answered >= set(self.plan.peers)

    def dropped(self) -> tuple[str, ...]:
        return tuple(p for p in self.plan.peers if p not in self.answered)
