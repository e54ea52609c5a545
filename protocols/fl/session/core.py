"""The sans-IO FL core of one node: every session it coordinates, trains in or aggregates.

Inputs: `receive(peer, msg, now)` for decoded gossip, `tick(now)`, and the outcomes of the
actions it asked for (`task_ready`, `model_fetched`, `trained`, `update_delivered`,
`receive_update` / `reject_update`, `aggregated`). Outputs: lists of actions (actions.py).
No trio, no libp2p, no torch here: time is an argument, CPU work is an action.

A session's life at a node (see coordinator.py for the starter's part, rounds.py for the
round timing): announcement -> task prepared -> opt-in -> per round: plan -> fetch base
model -> train -> send update to the elected aggregator (or a fallback) -> the aggregator
validates, aggregates, signs a receipt and publishes the result -> the coordinator fetches the
new model and plans the next round -> session ended (completed, failed or stopped).
If the coordinator falls silent, a fallback named in the announcement takes the session over
from the last completed round (session/failover.py). `secagg` sessions run SecAgg, so the
aggregator gets only the sum (secagg/session.py); `hierarchical` ones aggregate per region
first (session/hier.py). Rewards (rewards/receipts.py): a participant acts on a plan only if
its signed round header matches the plan and the election (messages.plan_problem); an
aggregator pays its round (`PayRewards`) once the coordinator adopted its model (ending.py).

Invariants across coordinator failover and network splits (session/quorum.py, failover.py):
  I1  a fallback becomes acting coordinator only with silence votes of a majority of the
      membership (the last plan's participants), and a member votes only while it hears nothing
      from the acting coordinator: a fallback cut off with a minority never plans a round;
  I2  nodes follow the highest rank they accepted and a lower-ranked coordinator steps down
      when it hears a higher one: after a heal all follow the coordinator that made progress;
  I3  an aggregator pays its round only once the acting coordinator adopted its model, and the
      ledger pays one split per (session, round), each participant once (rewards/receipts.py):
      a round is paid at most once, as the adopted history says;
  I4  a member that hears nothing keeps asking (its votes) and the coordinator that ended the
      session answers with its SessionEnded: every member that can reach it learns the end.

FlCore has no base classes. It keeps the node's sessions, joins announced sessions, follows
plans and results, and hands each `Session` to collaborators: the participant's part
(`ParticipantSide`, session/participant.py), the aggregator's (`AggregatorSide`,
session/aggregator.py), the acting coordinator's (`CoordinatorSide`, session/coordinating.py),
failover (`Failover`) and its takeover quorum (`Quorum`), hierarchical rounds (`Hierarchy`)
and secure aggregation (`SecAggRounds`); a session's end is ending.py, its status status.py.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable

import numpy as np
from nacl.signing import SigningKey

from fognode.protocols.fl.actions import Action, Emit, FetchModel, PrepareTask, Publish, RoundJudged
from fognode.protocols.fl.errors import SessionRejected
from fognode.protocols.fl.events import TrainingRoundCompleted, TrainingRoundStarted
from fognode.protocols.fl.messages import (
    CoordinatorSilent, DeviceFacts, GossipMessage, OptIn, RoundFailed, RoundPlan, RoundResult, SessionAnnouncement,
    SessionEnded, SessionSpec, UpdateHeader, coordinators_of, plan_problem)
from fognode.protocols.fl.secagg.messages import Message as SecAggMessage
from fognode.protocols.fl.secagg.session import SecAggRounds
from fognode.protocols.fl.session.aggregator import AggregatorSide
from fognode.protocols.fl.session.coordinating import CoordinatorSide
from fognode.protocols.fl.session.coordinator import CandidateView, Coordinator, Phase, SessionState
from fognode.protocols.fl.session.election import aggregator_order
from fognode.protocols.fl.session.ending import (
    adopted_rewards, close_rounds, end_session, follow_end, republish_end)
from fognode.protocols.fl.session.failover import Failover
from fognode.protocols.fl.session.hier import Hierarchy
from fognode.protocols.fl.session.participant import ParticipantSide
from fognode.protocols.fl.session.push import ResultPush, advertising
from fognode.protocols.fl.session.quorum import Quorum
from fognode.protocols.fl.session.rounds import (
    AggregatorState, ParticipantRound, ParticipantState, TrainOutcome, UpdateMeta)
from fognode.protocols.fl.session.selection import ineligibility, round_seed
from fognode.protocols.fl.session.standby import choose_fallbacks, plan_span
from fognode.protocols.fl.session.state import Admission, ModelBundle, Session
from fognode.protocols.fl.session.status import session_row, session_status
from fognode.protocols.fl.strategies.base import AggregateResult, StrategyError
from fognode.protocols.fl.strategies.registry import build_strategy
from fognode.protocols.fl.training.prepared import PreparedTask, init_seed_of

MAX_SESSIONS = 64
MAX_KNOWN_PEERS = 1024      # peers remembered from opt-ins, as fallback coordinator candidates


class FlCore:
    """All FL sessions of one node. Synchronous; never blocks; time is an argument."""

    def __init__(self, peer_id: str, key: SigningKey, *, tasks_enabled: set[str],
                 facts: DeviceFacts, candidate_view: CandidateView,
                 republish_interval: float = 2.0,
                 nonce: Callable[[], bytes] = lambda: os.urandom(16),
                 fl_peers: Callable[[], Iterable[tuple[str, DeviceFacts]]] = lambda: (),
                 coordinator_fallbacks: int = 2) -> None:
        self.me = peer_id
        self.key = key
        self.tasks_enabled = set(tasks_enabled)
        self.facts = advertising(facts)     # this node takes a result push (session/push.py)
        self.view = candidate_view
        self.interval = republish_interval
        self.nonce = nonce
        self.sessions: dict[bytes, Session] = {}
        self.ignored: dict[bytes, str] = {}     # announcements this node does not join, why
        self.fl_peers = fl_peers                # peers known to run fl (the registry's view)
        self.coordinator_fallbacks = coordinator_fallbacks
        self.seen_peers: dict[str, DeviceFacts] = {}   # peers seen opting in to any session
        self.push = ResultPush(me=peer_id, sessions=self.sessions, seen_peers=self.seen_peers, receive=self.receive,
                               model_fetched=self.model_fetched, need_model=self._need_model)
        self.quorum = Quorum(me=peer_id, interval=republish_interval)
        self.coordinator_side = CoordinatorSide(me=peer_id, on_plan=self._on_plan, end=self._end,
                                                need_model=self._need_model)
        self.failover = Failover(me=peer_id, key=key, view=candidate_view,
                                 interval=republish_interval, facts=lambda: self.facts,
                                 quorum=self.quorum.has_quorum, on_plan=self._on_plan, end=self._end, need_model=self._need_model)
        # the collaborators that fail a round or send an update reach the sides built after
        # them through these steps
        def round_failed(s: Session, reason: str) -> list[Action]:
            return self.aggregator_side.round_failed(s, reason)

        def send(s: Session, pr: ParticipantRound, slot: int, now: float) -> list[Action]:
            return self.participant_side.send(s, pr, slot, now)

        self.hierarchy = Hierarchy(me=peer_id, round_failed=round_failed)
        self.secagg_rounds = SecAggRounds(me=peer_id, key=key, sessions=self.sessions,
                                          send=send, round_failed=round_failed)
        self.aggregator_side = AggregatorSide(me=peer_id, key=key, sessions=self.sessions,
                                              hierarchy=self.hierarchy, secagg=self.secagg_rounds,
                                              on_failed=self._on_failed, on_result=self._on_result)
        self.participant_side = ParticipantSide(me=peer_id, sessions=self.sessions,
                                                secagg=self.secagg_rounds, hierarchy=self.hierarchy,
                                                deliver_locally=self.aggregator_side.receive_update)

    # == starting, stopping ================================================================

    def new_announcement(self, spec: SessionSpec, prepared: PreparedTask, nonce: bytes,
                         now: float) -> SessionAnnouncement:
        """The signed announcement of a session this node starts (see `start_session`),
        naming up to `coordinator_fallbacks` fallback coordinators among the peers this node
        knows to run fl (`fl_peers`, opt-ins it saw) that are eligible for the session."""
        pool = {**dict(self.fl_peers()), **self.seen_peers}
        eligible = [p for p, f in pool.items()
                    if ineligibility(self.view(p, f), spec.criteria) is None]
        coords = choose_fallbacks(nonce, self.me, eligible, self.coordinator_fallbacks)
        return SessionAnnouncement(spec, self.me, bytes(self.key.verify_key), now, nonce,
                                   prepared.initial_hash, prepared.layout_hash,
                                   fallback_coordinators=coords).signed(self.key)

    def start_session(self, ann: SessionAnnouncement, prepared: PreparedTask,
                      now: float) -> list[Action]:
        """Start coordinating `ann` (built by `new_announcement` from the same prepared task).
        Raises SessionRejected when the strategy cannot be built or too many sessions run."""
        try:
            build_strategy(ann.spec)
        except StrategyError as e:
            raise SessionRejected(str(e)) from None
        if len([s for s in self.sessions.values() if not s.state.ended]) >= MAX_SESSIONS:
            raise SessionRejected(f"this node already runs {MAX_SESSIONS} sessions")
        s = Session(ann, SessionState.WAITING, prepared=prepared)
        s.coordinator = Coordinator(ann, self.me, self.view, now, self.interval, key=self.key)
        self.sessions[ann.session_id] = s
        s.keep_model(ann.initial_model_hash, ModelBundle(prepared.initial_params))
        s.latest_model = ann.initial_model_hash
        out: list[Action] = [Publish(ann)]
        out += self._opt_in(s, now)
        return out

    def stop_session(self, sid: bytes, now: float) -> list[Action]:
        """Stop a session this node coordinates (LookupError if unknown, PermissionError if
        another node coordinates it, ValueError if it already ended)."""
        s = self.sessions.get(sid)
        if s is None:
            raise LookupError(sid.hex())
        if s.coordinator is None:
            raise PermissionError(f"session {sid.hex()} is coordinated by "
                                  f"{coordinators_of(s.ann)[s.acting]}")
        if s.state.ended:
            raise ValueError(f"session {sid.hex()} already {s.state.value}")
        return self._end(s, SessionState.STOPPED, "stopped by the operator", now)

    # == gossip ============================================================================

    def receive(self, peer: str, msg: GossipMessage, now: float) -> list[Action]:
        """Handle one decoded gossip message from `peer` (the authenticated origin)."""
        if isinstance(msg, SessionAnnouncement):
            return self._on_announcement(peer, msg, now)
        sid = msg.receipt.session_id if isinstance(msg, RoundResult) else msg.session_id
        if isinstance(msg, OptIn) and peer != self.me:
            self.seen_peers.pop(peer, None)
            self.seen_peers[peer] = msg.facts
            while len(self.seen_peers) > MAX_KNOWN_PEERS:
                del self.seen_peers[next(iter(self.seen_peers))]
        s = self.sessions.get(sid)
        if s is None:
            return []
        if isinstance(msg, CoordinatorSilent):
            return self.quorum.receive(s, peer, msg, now)
        # the sender does not know the session ended: tell it (quorum.py, answers)
        answer = self.quorum.answer_end(s, now) if s.state.ended and peer != self.me \
            and isinstance(msg, (OptIn, RoundPlan)) else []
        if isinstance(msg, OptIn):
            if s.coordinator is not None and not s.state.ended:
                s.coordinator.on_optin(peer, msg.facts)
            elif s.standby is not None:
                s.standby.candidates[peer] = msg.facts
            return answer
        if isinstance(msg, RoundPlan):
            return answer + self._on_plan(s, peer, msg, now)
        if isinstance(msg, RoundResult):
            return self._on_result(s, peer, msg, now)
        if isinstance(msg, RoundFailed):
            return self._on_failed(s, peer, msg, now)
        if isinstance(msg, SessionEnded):
            refused = self.failover.refusal(s, peer, "ended", msg.rank)
            if refused or (s.state.ended and msg.rank <= s.acting):
                return refused
            self.failover.follow(s, msg.rank, now)
            return [] if s.coordinator is not None else follow_end(s, msg, self.me, self.hierarchy)
        return []

    def _on_announcement(self, peer: str, ann: SessionAnnouncement, now: float) -> list[Action]:
        sid = ann.session_id
        known = self.sessions.get(sid)
        if known is not None and known.acting == 0 and known.plan is None and peer == known.ann.starter:
            self.quorum.heard(known, now)   # the starter still collects opt-ins: it is alive
        if known is not None and known.coordinator is None and known.state == SessionState.WAITING \
                and known.plan is None and peer == known.ann.starter:
            # the starter is still collecting opt-ins: ours may have been lost, say it again
            return self._opt_in(known, now)
        if sid in self.sessions or sid in self.ignored or peer != ann.starter:
            return []
        why = self._why_not_join(ann.spec)
        if why is not None:
            if len(self.ignored) < 4 * MAX_SESSIONS:
                self.ignored[sid] = why
            return []
        s = self.sessions[sid] = Session(ann, SessionState.PREPARING, heard_at=now)
        self.failover.join(s, now)
        return [PrepareTask(sid, ann.spec.task, dict(ann.spec.task_params), init_seed_of(ann.nonce))]

    def _why_not_join(self, spec: SessionSpec) -> str | None:
        if spec.task not in self.tasks_enabled:
            return f"task {spec.task!r} is not enabled on this node"
        if len([s for s in self.sessions.values() if not s.state.ended]) >= MAX_SESSIONS:
            return "too many sessions"
        try:
            build_strategy(spec)
        except StrategyError as e:
            return str(e)
        return ineligibility(self.view(self.me, self.facts), spec.criteria)

    def task_ready(self, sid: bytes, prepared: PreparedTask, now: float) -> list[Action]:
        """The task of a joined session is loaded; opt in if it matches the announcement."""
        s = self.sessions.get(sid)
        if s is None or s.state != SessionState.PREPARING:
            return []
        if prepared.layout_hash != s.ann.layout_hash or prepared.initial_hash != s.ann.initial_model_hash:
            return self.task_failed(sid, "the local task builds a different model than the "
                                         "starter's (layout or round-0 hash differs)", now)
        s.prepared = prepared
        s.state = SessionState.WAITING
        s.keep_model(s.ann.initial_model_hash, ModelBundle(prepared.initial_params))
        s.latest_model = s.ann.initial_model_hash
        return self._opt_in(s, now)

    def task_failed(self, sid: bytes, reason: str, now: float) -> list[Action]:
        s = self.sessions.pop(sid, None)
        if s is not None:
            self.ignored[sid] = reason
        return []

    def _opt_in(self, s: Session, now: float) -> list[Action]:
        if ineligibility(self.view(self.me, self.facts), s.spec.criteria) is not None:
            return []
        if s.coordinator is not None:
            s.coordinator.on_optin(self.me, self.facts)
        return [Publish(OptIn(s.sid, self.facts))]

    # == rounds: plans =====================================================================

    def _on_plan(self, s: Session, peer: str, plan: RoundPlan, now: float) -> list[Action]:
        refused = self.failover.refusal(s, peer, "plan", plan.rank)
        if refused:
            return refused
        if s.state.ended or plan.seed != _seed(s, plan):
            return []
        if s.plan is not None and (plan.rank, plan.round, plan.try_no) \
                <= (s.plan.rank, s.plan.round, s.plan.try_no):
            if plan.rank == s.acting:    # the acting coordinator republished its plan
                self.quorum.heard(s, now)
            return []
        self.failover.follow(s, plan.rank, now)
        self.quorum.heard(s, now, open_for=plan_span(s.spec, plan))
        if s.standby is not None:
            s.standby.on_plan(plan, now, s.spec)
        if s.prepared is None:
            return []
        why = plan_problem(s.ann, plan, 1 + s.spec.fallbacks)
        if why is not None:     # no signed evidence of this election: nobody trains for it
            s.reason = f"refused round {plan.round} try {plan.try_no} plan: {why}"
            return []
        close_rounds(s, self.hierarchy)
        s.reason = ""
        s.plan = plan
        s.mark(now, plan.round, plan.try_no, "plan", peer)
        s.order = aggregator_order(plan.seed, plan.participants, 1 + s.spec.fallbacks)
        s.state = SessionState.RUNNING
        s.rounds_done = max(s.rounds_done, plan.base_round)
        out: list[Action] = adopted_rewards(s, self.me, plan.base_round, plan.base_model_hash, plan.sources)
        is_part = self.me in plan.peers
        if self.me in s.order:
            self.aggregator_side.plan(s, now)
        if s.spec.hierarchical:
            if not plan.regions:
                return []
            self.hierarchy.plan(s, plan, now)
        role = "+".join(r for r, yes in (("coordinator", s.coordinator is not None),
                                         ("participant", is_part)) if yes)
        if role:
            out.append(Emit(TrainingRoundStarted(s.sid.hex(), plan.round, plan.try_no, plan.peers,
                                                 s.order[0], role)))
        if is_part:
            s.participant = ParticipantRound(plan, s.hier.region_order if s.hier is not None
                                             else s.order, now, s.spec.deadline)
            out += self._need_model(s, plan.base_model_hash, plan.sources)
            out += self.participant_side.maybe_train(s, now)
        return out

    def _need_model(self, s: Session, h: bytes, sources: tuple[str, ...]) -> list[Action]:
        if h in s.models or h in s.fetching:
            return []
        srcs = tuple(p for p in sources if p != self.me)
        if not srcs:
            return []
        s.fetching.add(h)
        return [FetchModel(s.sid, h, srcs)]

    def model_fetched(self, sid: bytes, model_hash: bytes, params: np.ndarray,
                      state: dict[str, np.ndarray], now: float) -> list[Action]:
        """A fetched model arrived. The caller checked that `params` hash to `model_hash`
        (transfer/models.py `fetch_model`; hashing it again cost 0.6 ms per 0.58 MB model)."""
        s = self.sessions.get(sid)
        if s is None:
            return []
        s.fetching.discard(model_hash)
        s.keep_model(model_hash, ModelBundle(params, dict(state)))
        out = self.participant_side.maybe_train(s, now)
        c = s.coordinator
        resuming = c is not None and c.phase == Phase.RESUMING and c.base_hash == model_hash
        out += self.coordinator_side.model_fetched(s, model_hash, now)
        if resuming:
            out += self.failover.resumed(s, now)
        return out

    def model_fetch_failed(self, sid: bytes, model_hash: bytes, reason: str,
                           now: float) -> list[Action]:
        s = self.sessions.get(sid)
        if s is None:
            return []
        s.fetching.discard(model_hash)
        return self.coordinator_side.model_fetch_failed(s, model_hash, reason, now)

    # == rounds: participant (session/participant.py) ====================================

    def trained(self, sid: bytes, round_no: int, try_no: int, outcome: TrainOutcome,
                now: float) -> list[Action]:
        """Local training of (round, try) finished; send the update."""
        return self.participant_side.trained(sid, round_no, try_no, outcome, now)

    def update_delivered(self, sid: bytes, round_no: int, try_no: int, fallback: int, ok: bool,
                         reason: str, now: float, *, forward: bool = False) -> list[Action]:
        """Outcome of a SendUpdate (`forward`: one carrying a regional update, i.e. with
        members). On failure the next aggregator in the order is tried (rounds.py)."""
        return self.participant_side.update_delivered(sid, round_no, try_no, fallback, ok, reason,
                                                      now, forward=forward)

    # == rounds: aggregator (session/aggregator.py) ======================================

    def expected_shape(self, sid: bytes) -> tuple[int, ...] | None:
        """Shape of an update for `sid` on this node (None: unknown session / not loaded)."""
        return self.aggregator_side.expected_shape(sid)

    def admit_update(self, peer: str, sid: bytes, round_no: int, try_no: int,
                     fallback: int) -> Admission:
        """The one admission decision for an update addressed like this, made from its header
        (`AggregatorSide.admit_update`)."""
        return self.aggregator_side.admit_update(peer, sid, round_no, try_no, fallback)

    def receive_update(self, peer: str, header: UpdateHeader, delta: np.ndarray,
                       now: float) -> tuple[str | None, list[Action]]:
        """A fully received update; (refusal reason or None, actions). Never aggregates a
        refused update."""
        return self.aggregator_side.receive_update(peer, header, delta, now)

    def reject_update(self, peer: str, sid: bytes, round_no: int, try_no: int, reason: str,
                      now: float) -> list[Action]:
        """Record a refused update (malformed on the wire, or refused by `admit_update`)."""
        return self.aggregator_side.reject_update(peer, sid, round_no, try_no, reason, now)

    def aggregated(self, sid: bytes, round_no: int, try_no: int, fallback: int,
                   result: AggregateResult | None, error: str, now: float,
                   strategy_state: dict[str, np.ndarray] | None = None) -> list[Action]:
        """The strategy ran (or raised: `error`); `strategy_state` is its `state_arrays()`
        afterwards. Sign the receipt, publish the result (and push it: session/push.py)."""
        return self.push.after_aggregation(sid, self.aggregator_side.aggregated(
            sid, round_no, try_no, fallback, result, error, now, strategy_state))

    # == rounds: results ===================================================================

    def _on_result(self, s: Session, peer: str, res: RoundResult, now: float) -> list[Action]:
        r = res.receipt
        if s.standby is not None and peer == r.aggregator and not s.state.ended:
            s.standby.on_result(res, now)   # any round or try, its plan seen or not (standby.py)
        if s.state.ended or s.plan is None or (r.round, r.try_no) != (s.plan.round, s.plan.try_no) \
                or peer != r.aggregator or r.aggregator not in s.order:
            # the coordinator still takes a late result of an earlier try (coordinator.py)
            late = s.coordinator is not None and not s.state.ended and s.plan is not None
            return self.coordinator_side.result(s, peer, res, now) if late else []
        out: list[Action] = []
        s.mark(now, r.round, r.try_no, "result", peer)
        pr = s.participant
        if pr is not None and pr.state != ParticipantState.DONE:
            trained = pr.delta is not None
            pr.state = ParticipantState.DONE
            s.participation.append({"round": r.round, "aggregator": r.aggregator,
                                    "accepted": self.me in {a.peer for a in r.accepted},
                                    "weight": r.weight_of(self.me),
                                    "reason": res.rejected.get(self.me, ""),
                                    "plan_at": round(pr.t0, 3)})
            if trained:
                out.append(RoundJudged(r))
        ar = s.aggregator
        if ar is not None and peer != self.me and ar.state == AggregatorState.COLLECTING:
            ar.state = AggregatorState.DONE     # someone earlier in the order completed it
        s.latest_model = r.model_hash
        s.rounds_done = max(s.rounds_done, r.round)
        self.quorum.heard(s, now, open_for=0.0)
        if s.coordinator is not None:
            out += self.coordinator_side.result(s, peer, res, now)
        else:
            out.append(Emit(TrainingRoundCompleted(s.sid.hex(), r.round, r.aggregator,
                                                   tuple(a.peer for a in r.accepted), res.dropped,
                                                   tuple(res.rejected), res.loss, res.accuracy,
                                                   r.model_hash.hex())))
        return out

    def _on_failed(self, s: Session, peer: str, msg: RoundFailed, now: float | None) -> list[Action]:
        if now is not None and s.plan is not None \
                and (msg.round, msg.try_no) == (s.plan.round, s.plan.try_no) and peer in s.order:
            self.quorum.heard(s, now, open_for=0.0)
            if s.standby is not None:
                s.standby.on_failed(peer, msg, now)
        return self.coordinator_side.failed(s, peer, msg, now)

    def _end(self, s: Session, state: SessionState, reason: str, now: float) -> list[Action]:
        return end_session(s, state, reason, now, me=self.me, hierarchy=self.hierarchy,
                           interval=self.interval)

    # == time ==============================================================================

    def tick(self, now: float) -> list[Action]:
        """Deadlines, fallbacks, retries and republishing for every session."""
        out: list[Action] = []
        for s in list(self.sessions.values()):
            if s.state.ended:
                out += republish_end(s, now, self.interval)
                continue
            out += self.coordinator_side.tick(s, now)
            out += self.quorum.tick(s, now)
            if not s.state.ended:
                out += self.failover.tick(s, now)
            out += self.participant_side.tick(s, now)
            out += self.aggregator_side.tick(s, now)
            out += self.hierarchy.tick(s, now)
        return self.secagg_rounds.route(out, now)

    # == models and status =================================================================

    def receive_secagg(self, peer: str, sid: bytes, round_no: int, try_no: int, fallback: int,
                       msg: SecAggMessage, meta: UpdateMeta | None,
                       now: float) -> tuple[str | None, list[Action]]:
        """One secure-aggregation message from `peer` (see `SecAggRounds.receive`)."""
        return self.secagg_rounds.receive(peer, sid, round_no, try_no, fallback, msg, meta, now)

    def secagg_delivered(self, sid: bytes, round_no: int, try_no: int, fallback: int, ok: bool,
                         reason: str, now: float) -> list[Action]:
        """Outcome of a participant's SendSecAgg (see `SecAggRounds.delivered`)."""
        return self.secagg_rounds.delivered(sid, round_no, try_no, fallback, ok, reason, now)

    def model_for(self, sid: bytes, model_hash: bytes) -> ModelBundle | None:
        """A model this node can serve on the model stream (None if it does not hold it)."""
        s = self.sessions.get(sid)
        return s.models.get(model_hash) if s is not None else None

    def status(self, sid: bytes) -> dict[str, Any]:
        """`fl.status` of one session (LookupError if unknown; session/status.py)."""
        s = self.sessions.get(sid)
        if s is None:
            raise LookupError(sid.hex())
        return session_status(s)

    def session_list(self) -> list[dict[str, Any]]:
        return [session_row(self.status(sid)) for sid in self.sessions]


def _seed(s: Session, plan: RoundPlan) -> bytes:
    return round_seed(s.sid, plan.round, plan.try_no)
