"""The acting coordinator's steps in the FL core: `CoordinatorSide`, a collaborator of
`session.core.FlCore` (sans-IO, time is an argument) around the `Coordinator` state machine
(coordinator.py).

It takes an accepted round result (the new model is fetched when it is not here yet), closes a
round once its model is here (`TrainingRoundCompleted`, `SaveModel`, then the next plan or the
session's end), retries a round whose aggregators failed it or whose new model could not be
fetched (a new try, or the session fails after `max_retries`), and drives the coordinator's
clock: opt-in deadlines, round deadlines and plan republishing. Too few candidates for the
coordinator's whole wait (coordinator.candidate_wait) ends the session without using a try.
"""
from __future__ import annotations

from typing import Callable

from fognode.protocols.fl.actions import Action, Emit, Publish, SaveModel
from fognode.protocols.fl.events import TrainingRoundCompleted
from fognode.protocols.fl.messages import RoundFailed, RoundPlan, RoundResult
from fognode.protocols.fl.session.coordinator import Coordinator, Phase, SessionState
from fognode.protocols.fl.session.state import Session

# The core's steps this side hands on to: a plan this node made (as if received from itself),
# the end of a session, and fetching a model from its holders.
OnPlan = Callable[[Session, str, RoundPlan, float], list[Action]]
End = Callable[[Session, SessionState, str, float], list[Action]]
NeedModel = Callable[[Session, bytes, tuple[str, ...]], list[Action]]


class CoordinatorSide:
    """The core's coordinator collaborator: handed each `Session` this node coordinates
    (`s.coordinator` set) and the core's plan, end and model-fetch steps."""

    def __init__(self, *, me: str, on_plan: OnPlan, end: End, need_model: NeedModel) -> None:
        self.me = me
        self._on_plan = on_plan
        self._end = end
        self._need_model = need_model

    def result(self, s: Session, peer: str, res: RoundResult, now: float) -> list[Action]:
        """A round result of the current plan from its aggregator `peer`."""
        c = s.coordinator
        assert c is not None
        if not c.accepts_result(peer, res):
            return []
        c.on_result(res)
        r = res.receipt
        if r.model_hash in s.models:
            return self.round_done(s, now)
        return self._need_model(s, r.model_hash, (r.aggregator,))

    def failed(self, s: Session, peer: str, msg: RoundFailed, now: float | None) -> list[Action]:
        """A RoundFailed from `peer` (now None: this node's own failure, at the plan's time)."""
        c = s.coordinator
        if c is None or not c.accepts_failure(peer, msg):
            return []
        return self.retry(s, f"aggregator {peer}: {msg.reason}", now if now is not None else c.plan_at)

    def retry(self, s: Session, reason: str, now: float) -> list[Action]:
        """Plan the round again (a new try), or fail the session when out of retries."""
        c = s.coordinator
        assert c is not None
        got = c.retry(reason, now)
        if isinstance(got, str):
            return self._end(s, SessionState.FAILED, got, now)
        if got is None:
            return []
        return [Publish(got)] + self._on_plan(s, self.me, got, now)

    def round_done(self, s: Session, now: float) -> list[Action]:
        """The accepted result's model is here: the round is complete."""
        c = s.coordinator
        assert c is not None
        rec = c.model_arrived(now)
        s.mark(now, rec.round, c.try_no, "round_done")
        s.latest_model = rec.model_hash
        s.rounds_done = rec.round
        out: list[Action] = [Emit(TrainingRoundCompleted(
            s.sid.hex(), rec.round, rec.aggregator, rec.accepted, rec.dropped,
            tuple(rec.rejected), rec.loss, rec.accuracy, rec.model_hash.hex()))]
        bundle = s.models[rec.model_hash]
        out.append(SaveModel(s.sid, rec.model_hash, bundle.params, False))
        if c.finished_all_rounds:
            return out + self._end(s, SessionState.COMPLETED, "", now)
        plan = c.make_plan(now)
        if plan is not None:
            out += [Publish(plan)] + self._on_plan(s, self.me, plan, now)
        return out

    def model_fetched(self, s: Session, model_hash: bytes, now: float) -> list[Action]:
        """A fetched model arrived: the round is complete if it is the awaited new model."""
        c = s.coordinator
        if c is not None and c.phase == Phase.FETCHING and c.pending is not None \
                and c.pending.receipt.model_hash == model_hash:
            return self.round_done(s, now)
        return []

    def model_fetch_failed(self, s: Session, model_hash: bytes, reason: str,
                           now: float) -> list[Action]:
        """A model fetch failed: retry the round if it was the awaited new model."""
        c = s.coordinator
        if c is not None and c.phase == Phase.FETCHING and c.pending is not None \
                and c.pending.receipt.model_hash == model_hash:
            return self.retry(s, f"the new model could not be fetched from "
                                 f"{c.pending.receipt.aggregator}: {reason}", now)
        return []

    def tick(self, s: Session, now: float) -> list[Action]:
        """The coordinator's deadlines and republishing."""
        c = s.coordinator
        if c is None:
            return []
        out: list[Action] = []
        msgs, failure = c.tick(now)
        if failure is not None:
            # in OPT_IN: too few candidates for the whole wait; no plan went out, so no try was
            # used, and another try would wait for the same candidates
            out += self._end(s, SessionState.FAILED, failure, now) if c.phase == Phase.OPT_IN \
                else self.retry(s, failure, now)
        for m in msgs:
            out.append(Publish(m))
            if isinstance(m, RoundPlan):
                out += self._on_plan(s, self.me, m, now)
        return out

