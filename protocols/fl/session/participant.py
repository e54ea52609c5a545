"""A participant's part of an FL round: `ParticipantSide`, a collaborator of `session.core.FlCore`
(sans-IO, time is an argument).

Once a plan names this node a participant (the core sets up `Session.participant`), it waits
for the round's base model, asks for local training (`Train`), turns the trained model into an
update (the delta from the base; a diverged, non-finite delta is dropped), and sends it to the
aggregator of its current slot (`SendUpdate`; to itself in memory when it is that aggregator).
A send that fails, or a slot that ends without a round result, moves the update to the next
aggregator in the order; an aggregator that has not seen the plan yet ("unknown round") is
asked again after a short wait instead (rounds.py `ParticipantRound`). In a `secagg` session the update is
never sent: its weighted contribution goes into a SecAgg run instead (secagg/session.py).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from fognode.node.wire import digest
from fognode.protocols.fl.actions import Action, SendUpdate, Train
from fognode.protocols.fl.messages import UpdateHeader
from fognode.protocols.fl.secagg.core import with_weight
from fognode.protocols.fl.secagg.session import SecAggRounds
from fognode.protocols.fl.session.hier import Hierarchy
from fognode.protocols.fl.session.rounds import (
    NOT_YET, SLOT_SETTLED, ParticipantRound, ParticipantState, TrainOutcome, UpdateMeta)
from fognode.protocols.fl.session.state import Session
from fognode.protocols.fl.strategies.base import StrategyError
from fognode.protocols.fl.strategies.registry import build_strategy
from fognode.protocols.fl.tasks import TrainConfig
from fognode.protocols.fl.transfer.tensors import encode_tensor

# An update this node sends to itself (it aggregates that slot): (refusal or None, actions).
LocalDelivery = Callable[[str, UpdateHeader, np.ndarray, float], tuple[str | None, list[Action]]]


class ParticipantSide:
    """The core's participant collaborator: handed the node's sessions (the core's own map),
    its secure-aggregation and hierarchical collaborators, and the aggregator side's
    `receive_update` for updates this node aggregates itself."""

    def __init__(self, *, me: str, sessions: dict[bytes, Session], secagg: SecAggRounds,
                 hierarchy: Hierarchy, deliver_locally: LocalDelivery) -> None:
        self.me = me
        self.sessions = sessions
        self.secagg = secagg
        self.hierarchy = hierarchy
        self._deliver_locally = deliver_locally

    def maybe_train(self, s: Session, now: float) -> list[Action]:
        """[Train] once the round's base model is here (else nothing yet)."""
        pr = s.participant
        if pr is None or pr.state != ParticipantState.FETCHING or s.prepared is None:
            return []
        base = s.models.get(pr.plan.base_model_hash)
        if base is None:
            return []
        pr.state = ParticipantState.TRAINING
        mu = build_strategy(s.spec).proximal_mu
        cfg = TrainConfig(epochs=s.spec.local_epochs, lr=s.spec.lr, batch_size=s.spec.batch_size, mu=mu)
        seed = int.from_bytes(digest(pr.plan.seed + self.me.encode())[:8], "big") >> 1
        return [Train(s.sid, pr.plan.round, pr.plan.try_no, base.params, cfg, seed)]

    def trained(self, sid: bytes, round_no: int, try_no: int, outcome: TrainOutcome,
                now: float) -> list[Action]:
        """Local training of (round, try) finished; send the update."""
        s = self.sessions.get(sid)
        pr = s.participant if s is not None else None
        if s is None or pr is None or (pr.plan.round, pr.plan.try_no) != (round_no, try_no) \
                or pr.state != ParticipantState.TRAINING:
            return []
        base = s.models.get(pr.plan.base_model_hash)
        if base is None:
            return []
        delta = (outcome.result.params.astype(np.float32) - base.params).astype(np.float32)
        if not np.isfinite(delta).all():
            pr.state = ParticipantState.DONE   # diverged locally: nothing worth sending
            return []
        pr.delta = delta
        pr.meta = UpdateMeta(outcome.result.num_samples, outcome.base_loss, outcome.base_accuracy,
                             outcome.result.loss)
        if s.spec.privacy.secagg:
            try:
                vec, weight = build_strategy(s.spec).client_contribution(delta, pr.meta.num_samples)
            except StrategyError:
                pr.state = ParticipantState.DONE
                return []
            pr.contribution = with_weight(vec, weight)
        pr.state = ParticipantState.SENDING
        return self.secagg.route(self.send(s, pr, pr.slot_at(now), now), now)

    def send(self, s: Session, pr: ParticipantRound, slot: int, now: float) -> list[Action]:
        """Send the update (or join the SecAgg run) of `slot`'s aggregator."""
        assert pr.delta is not None and pr.meta is not None
        if pr.contribution is not None:
            return self.secagg.join(s, pr, slot, now)
        pr.sending_to(slot)
        to = pr.order[slot]
        m = pr.meta
        act = SendUpdate(s.sid, pr.plan.round, pr.plan.try_no, slot, to, m.num_samples,
                         m.base_loss, m.base_accuracy, m.train_loss, pr.delta)
        if to != self.me:
            pr.in_flight = True
            return [act]
        # this node is the aggregator of that slot: hand the update over in memory
        header = act.header(encode_tensor(pr.delta, chunk_size=1 << 20)[0])
        reason, out = self._deliver_locally(self.me, header, pr.delta.copy(), now)
        return out + self._sent(s, pr, slot, reason is None or reason in SLOT_SETTLED, now)

    def _sent(self, s: Session, pr: ParticipantRound, slot: int, ok: bool, now: float,
              not_yet: bool = False) -> list[Action]:
        """The send to `slot` went through or failed (`not_yet`: refused by an aggregator
        lacking the plan): on to the next aggregator at once, or a retry later
        (ParticipantRound.outcome)."""
        nxt = pr.outcome(slot, ok, now, not_yet=not_yet)
        if nxt is None or pr.state != ParticipantState.SENDING:
            return []
        return self.send(s, pr, nxt, now)

    def update_delivered(self, sid: bytes, round_no: int, try_no: int, fallback: int, ok: bool,
                         reason: str, now: float, *, forward: bool = False) -> list[Action]:
        """Outcome of a SendUpdate (`forward`: one carrying a regional update, i.e. with
        members). On failure the next aggregator in the order is tried (rounds.py)."""
        s = self.sessions.get(sid)
        pr = s.participant if s is not None else None
        if s is not None:
            s.mark(now, round_no, try_no, "delivered" if ok else "not_delivered")
        if forward:
            return self.hierarchy.delivered(s, round_no, try_no, fallback, ok, reason, now) \
                if s is not None else []
        if s is None or pr is None or (pr.plan.round, pr.plan.try_no) != (round_no, try_no) \
                or pr.state != ParticipantState.SENDING or fallback != pr.sent_slot:
            return []
        return self._sent(s, pr, fallback, ok or reason in SLOT_SETTLED, now, not ok and reason == NOT_YET)

    def tick(self, s: Session, now: float) -> list[Action]:
        """A send whose slot ended without a round result moves on to the next aggregator."""
        pr = s.participant
        if pr is None or pr.state != ParticipantState.SENDING:
            return []
        if pr.contribution is not None:   # secure aggregation: a fresh run per slot
            if not pr.in_flight and now >= pr.slot_end(pr.sent_slot) \
                    and pr.sent_slot + 1 < len(pr.order):
                return self.send(s, pr, pr.sent_slot + 1, now)
        elif (slot := pr.next_send(now)) is not None:
            return self.send(s, pr, slot, now)
        return []
