"""How rounds and sessions end at a node, for the FL core (`session.core.FlCore`): closing the
rounds in flight (`close_rounds`), paying the rounds this node aggregated once the coordinator
adopted their model (`adopted_rewards`), and a session's end (`end_session`: the SessionEnded
it publishes, republished END_REPUBLISH times so one lost message does not cost the last
round's rewards (a node that missed them asks: session/quorum.py), and the final model it
saves), and following the end another coordinator published (`follow_end`). Plain functions
over a `Session`."""
from __future__ import annotations

from fognode.protocols.fl.actions import Action, Emit, PayRewards, Publish, SaveModel
from fognode.protocols.fl.events import TrainingSessionEnded
from fognode.protocols.fl.messages import SessionEnded
from fognode.protocols.fl.session.coordinator import Phase, SessionState
from fognode.protocols.fl.session.hier import Hierarchy
from fognode.protocols.fl.session.rounds import AggregatorState, ParticipantState
from fognode.protocols.fl.session.state import Session

END_REPUBLISH = 3           # republishes of a SessionEnded, one per republish interval


def close_rounds(s: Session, hierarchy: Hierarchy) -> None:
    """Stop this node's part in the round in flight (a new plan, or the session's end)."""
    if s.participant is not None:
        s.participant.state = ParticipantState.DONE
    hierarchy.close(s)
    if s.aggregator is not None:
        s.aggregator.state = AggregatorState.DONE   # also drops an aggregation in flight


def adopted_rewards(s: Session, me: str, base_round: int, base_hash: bytes,
                    sources: tuple[str, ...] | None) -> list[Action]:
    """The coordinator built on round `base_round`'s model `base_hash` (a plan's base, with
    the plan's model `sources`; or the session's final model, sources None): pay the round
    if this node's result is the one adopted, forget rounds up to it that were not. So of
    two aggregators that both completed a round (the first was only slow), only the one
    the coordinator accepted mints, and the ledger's claim lock never splits their votes."""
    out: list[Action] = []
    keep: list[PayRewards] = []
    for due in s.rewards_due:
        r = due.receipt
        if r.round > base_round:
            keep.append(due)
        elif r.round == base_round and r.model_hash == base_hash \
                and (sources is None or me in sources):
            out.append(due)
    s.rewards_due = keep
    return out


def end_session(s: Session, state: SessionState, reason: str, now: float, *, me: str,
                hierarchy: Hierarchy, interval: float) -> list[Action]:
    """End `s` here as `state` (this node coordinates it, or gave up on it): close its rounds,
    pay the final round if adopted, publish SessionEnded (republished every `interval`,
    `republish_end`) and save the final model."""
    s.state = state
    s.reason = reason
    if s.coordinator is not None:
        s.coordinator.phase = Phase.IDLE
        s.coordinator.end_reason = reason
    close_rounds(s, hierarchy)
    paid = adopted_rewards(s, me, s.rounds_done, s.latest_model, None)
    s.rewards_due.clear()
    rank = s.coordinator.rank if s.coordinator is not None else s.acting
    s.end = SessionEnded(s.sid, state.value, s.rounds_done, s.latest_model, reason, rank)
    s.end_republish = (END_REPUBLISH, now + interval)
    out: list[Action] = paid + [Publish(s.end),
                                Emit(TrainingSessionEnded(s.sid.hex(), state.value, s.rounds_done,
                                                          s.latest_model.hex(), reason))]
    bundle = s.models.get(s.latest_model)
    if bundle is not None:
        out.append(SaveModel(s.sid, s.latest_model, bundle.params, True))
    return out


def follow_end(s: Session, msg: SessionEnded, me: str, hierarchy: Hierarchy) -> list[Action]:
    """The acting coordinator ended `s` (its SessionEnded was accepted; this node does not
    coordinate it): end it here the same way, paying the final round if adopted."""
    s.state = SessionState(msg.state)
    s.reason = msg.reason
    s.rounds_done = max(s.rounds_done, msg.rounds_done)
    close_rounds(s, hierarchy)
    paid = adopted_rewards(s, me, msg.rounds_done, msg.final_model_hash, None)
    s.rewards_due.clear()
    return paid + [Emit(TrainingSessionEnded(s.sid.hex(), msg.state, msg.rounds_done,
                                             msg.final_model_hash.hex(), msg.reason))]


def republish_end(s: Session, now: float, interval: float) -> list[Action]:
    """The ended session's SessionEnded again, when one of its republishes is due."""
    left, due = s.end_republish
    if s.end is not None and left > 0 and now >= due:
        s.end_republish = (left - 1, now + interval)
        return [Publish(s.end)]
    return []
