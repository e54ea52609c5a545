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
If the coordinator falls silent, a fallback coordinator named in the announcement takes the
session over from the last completed round (session/failover.py).
In a `secagg` session the update is never sent in the clear: participant and aggregator run
the SecAgg protocol instead and the aggregator gets only the sum (secagg/session.py).
In a `hierarchical` session updates go to regional aggregators, which forward one combined
update per region to the global aggregator (session/hier.py).
Rewards (rewards/receipts.py): a participant acts on a plan only if its signed round header matches
the plan and the election (messages.plan_problem); an aggregator pays its round's participants
(`PayRewards`) once the coordinator adopted its model (`_adopted`).

FlCore has no base classes: failover (`Failover`), hierarchical rounds (`Hierarchy`) and
secure aggregation (`SecAggRounds`) are collaborators it hands each `Session` to.
Over 500 lines because participant and aggregator behaviour still live here (issue 11 item 3:
they are to become collaborators too).
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterable

import numpy as np
from nacl.signing import SigningKey

from fognode.node.wire import digest
from fognode.protocols.fl.actions import (
    Action, Aggregate, Emit, FetchModel, PayRewards, PrepareTask, Publish,
    ReportOutcome, RoundJudged, SaveModel, SendUpdate, Train, UpdateRefused)
from fognode.protocols.fl.errors import SessionRejected
from fognode.protocols.fl.events import (
    TrainingRoundCompleted, TrainingRoundStarted, TrainingSessionEnded)
from fognode.protocols.fl.messages import (
    DeviceFacts, GossipMessage, OptIn, RoundFailed, RoundPlan, RoundResult, SessionAnnouncement,
    SessionEnded, SessionSpec, UpdateHeader, coordinators_of, plan_problem)
from fognode.protocols.fl.rewards.receipts import AcceptedUpdate, RoundReceipt, round_reward_of
from fognode.protocols.fl.secagg.core import with_weight
from fognode.protocols.fl.secagg.messages import Message as SecAggMessage
from fognode.protocols.fl.secagg.session import SecAggRounds
from fognode.protocols.fl.session.coordinator import (
    CandidateView, Coordinator, Phase, SessionState)
from fognode.protocols.fl.session.election import aggregator_order
from fognode.protocols.fl.session.failover import Failover
from fognode.protocols.fl.session.hier import Hierarchy
from fognode.protocols.fl.session.rounds import (
    SLOT_SETTLED, AggregatorRound, AggregatorState, ParticipantRound, ParticipantState, TrainOutcome,
    UpdateMeta)
from fognode.protocols.fl.session.selection import ineligibility
from fognode.protocols.fl.session.standby import choose_fallbacks, plan_span
from fognode.protocols.fl.session.state import Admission, ModelBundle, Session
from fognode.protocols.fl.strategies.base import AggregateResult, ClientUpdate, StrategyError
from fognode.protocols.fl.strategies.registry import build_strategy
from fognode.protocols.fl.tasks import TrainConfig
from fognode.protocols.fl.training.prepared import PreparedTask, init_seed_of
from fognode.protocols.fl.transfer.tensors import params_hash

MAX_SESSIONS = 64
MAX_KNOWN_PEERS = 1024      # peers remembered from opt-ins, as fallback coordinator candidates
MODELS_KEPT = 3
END_REPUBLISH = 3           # republishes of a SessionEnded, one per republish interval
# Rejections that say something about the sender's honesty or competence (reported to
# reputation); lateness and races ("round closed", "unknown round") are not.
BLAMEWORTHY = {"dtype", "shape", "size", "oversize", "hash", "nonfinite", "not a participant",
               "malformed"}


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
        self.facts = facts
        self.view = candidate_view
        self.interval = republish_interval
        self.nonce = nonce
        self.sessions: dict[bytes, Session] = {}
        self.ignored: dict[bytes, str] = {}     # announcements this node does not join, why
        self.fl_peers = fl_peers                # peers known to run fl (the registry's view)
        self.coordinator_fallbacks = coordinator_fallbacks
        self.seen_peers: dict[str, DeviceFacts] = {}   # peers seen opting in to any session
        self.failover = Failover(me=peer_id, key=key, view=candidate_view,
                                 interval=republish_interval, facts=lambda: self.facts,
                                 on_plan=self._on_plan, end=self._end, need_model=self._need_model)
        self.hierarchy = Hierarchy(me=peer_id, round_failed=self._round_failed)
        self.secagg_rounds = SecAggRounds(me=peer_id, key=key, sessions=self.sessions,
                                          send=self._send, round_failed=self._round_failed)

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
        self._store(s, ann.initial_model_hash, ModelBundle(prepared.initial_params))
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
        if isinstance(msg, OptIn):
            if s.coordinator is not None and not s.state.ended:
                s.coordinator.on_optin(peer, msg.facts)
            elif s.standby is not None:
                s.standby.candidates[peer] = msg.facts
            return []
        if isinstance(msg, RoundPlan):
            return self._on_plan(s, peer, msg, now)
        if isinstance(msg, RoundResult):
            return self._on_result(s, peer, msg, now)
        if isinstance(msg, RoundFailed):
            return self._on_failed(s, peer, msg, now)
        if isinstance(msg, SessionEnded):
            refused = self.failover.refusal(s, peer, "ended", msg.rank)
            if refused:
                return refused
            if s.state.ended and msg.rank <= s.acting:
                return []
            self.failover.follow(s, msg.rank, now)
            if s.coordinator is not None:
                return []
            s.state = SessionState(msg.state)
            s.reason = msg.reason
            s.rounds_done = max(s.rounds_done, msg.rounds_done)
            self._close_rounds(s)
            paid = self._adopted(s, msg.rounds_done, msg.final_model_hash, None)
            s.rewards_due.clear()
            return paid + [Emit(TrainingSessionEnded(sid.hex(), msg.state, msg.rounds_done,
                                                     msg.final_model_hash.hex(), msg.reason))]
        return []

    def _on_announcement(self, peer: str, ann: SessionAnnouncement, now: float) -> list[Action]:
        sid = ann.session_id
        known = self.sessions.get(sid)
        if known is not None and known.standby is not None and known.acting == 0 \
                and known.plan is None and peer == known.ann.starter:
            known.standby.heard = now   # the starter still collects opt-ins: it is alive
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
        s = self.sessions[sid] = Session(ann, SessionState.PREPARING)
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
        self._store(s, s.ann.initial_model_hash, ModelBundle(prepared.initial_params))
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
            if s.standby is not None and plan.rank == s.acting:
                s.standby.heard = now    # the acting coordinator republished its plan
            return []
        self.failover.follow(s, plan.rank, now)
        if s.standby is not None:
            s.standby.on_plan(plan, now, plan_span(s.spec, plan))
        if s.prepared is None:
            return []
        why = plan_problem(s.ann, plan, 1 + s.spec.fallbacks)
        if why is not None:     # no signed evidence of this election: nobody trains for it
            s.reason = f"refused round {plan.round} try {plan.try_no} plan: {why}"
            return []
        self._close_rounds(s)
        s.reason = ""
        s.plan = plan
        s.order = aggregator_order(plan.seed, plan.participants, 1 + s.spec.fallbacks)
        s.state = SessionState.RUNNING
        s.rounds_done = max(s.rounds_done, plan.base_round)
        out: list[Action] = self._adopted(s, plan.base_round, plan.base_model_hash, plan.sources)
        is_part = self.me in plan.peers
        if self.me in s.order:
            slot = s.order.index(self.me)
            s.aggregator = AggregatorRound(plan, s.order, slot, now, s.spec.deadline,
                                           s.spec.min_participants)
            if s.spec.privacy.secagg:
                s.aggregator.secagg = self.secagg_rounds.aggregator(s, s.aggregator)
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
            out += self._maybe_train(s, now)
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
        """A fetched model arrived (the adapter checked its hash against `model_hash`)."""
        s = self.sessions.get(sid)
        if s is None:
            return []
        s.fetching.discard(model_hash)
        if params_hash(params) != model_hash:
            return self.model_fetch_failed(sid, model_hash, "hash mismatch", now)
        self._store(s, model_hash, ModelBundle(params, dict(state)))
        out = self._maybe_train(s, now)
        c = s.coordinator
        if c is not None and c.phase == Phase.FETCHING and c.pending is not None \
                and c.pending.receipt.model_hash == model_hash:
            out += self._round_done(s, now)
        elif c is not None and c.phase == Phase.RESUMING and c.base_hash == model_hash:
            out += self.failover.resumed(s, now)
        return out

    def model_fetch_failed(self, sid: bytes, model_hash: bytes, reason: str,
                           now: float) -> list[Action]:
        s = self.sessions.get(sid)
        if s is None:
            return []
        s.fetching.discard(model_hash)
        c = s.coordinator
        if c is not None and c.phase == Phase.FETCHING and c.pending is not None \
                and c.pending.receipt.model_hash == model_hash:
            return self._retry(s, f"the new model could not be fetched from "
                                  f"{c.pending.receipt.aggregator}: {reason}", now)
        return []

    def _maybe_train(self, s: Session, now: float) -> list[Action]:
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

    # == rounds: participant ===============================================================

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
        return self.secagg_rounds.route(self._send(s, pr, pr.slot_at(now), now), now)

    def _send(self, s: Session, pr: ParticipantRound, slot: int, now: float) -> list[Action]:
        assert pr.delta is not None and pr.meta is not None
        if pr.contribution is not None:
            return self.secagg_rounds.join(s, pr, slot, now)
        pr.sending_to(slot)
        to = pr.order[slot]
        m = pr.meta
        act = SendUpdate(s.sid, pr.plan.round, pr.plan.try_no, slot, to, m.num_samples,
                         m.base_loss, m.base_accuracy, m.train_loss, pr.delta)
        if to != self.me:
            pr.in_flight = True
            return [act]
        # this node is the aggregator of that slot: hand the update over in memory
        from fognode.protocols.fl.transfer.tensors import encode_tensor

        header = act.header(encode_tensor(pr.delta, chunk_size=1 << 20)[0])
        reason, out = self.receive_update(self.me, header, pr.delta.copy(), now)
        return out + self._sent(s, pr, slot, reason is None or reason in SLOT_SETTLED, now)

    def _sent(self, s: Session, pr: ParticipantRound, slot: int, ok: bool, now: float) -> list[Action]:
        """The send to `slot` went through or failed: on to the next aggregator at once, or
        a retry later (ParticipantRound.outcome)."""
        nxt = pr.outcome(slot, ok, now)
        if nxt is None or pr.state != ParticipantState.SENDING:
            return []
        return self._send(s, pr, nxt, now)

    def update_delivered(self, sid: bytes, round_no: int, try_no: int, fallback: int, ok: bool,
                         reason: str, now: float, *, forward: bool = False) -> list[Action]:
        """Outcome of a SendUpdate (`forward`: one carrying a regional update, i.e. with
        members). On failure the next aggregator in the order is tried (rounds.py)."""
        s = self.sessions.get(sid)
        pr = s.participant if s is not None else None
        if forward:
            return self.hierarchy.delivered(s, round_no, try_no, fallback, ok, reason, now) \
                if s is not None else []
        if s is None or pr is None or (pr.plan.round, pr.plan.try_no) != (round_no, try_no) \
                or pr.state != ParticipantState.SENDING or fallback != pr.sent_slot:
            return []
        return self._sent(s, pr, fallback, ok or reason in SLOT_SETTLED, now)

    # == rounds: aggregator ================================================================

    def expected_shape(self, sid: bytes) -> tuple[int, ...] | None:
        """Shape of an update for `sid` on this node (None: unknown session / not loaded)."""
        s = self.sessions.get(sid)
        if s is None or s.prepared is None:
            return None
        return (s.prepared.layout.size,)

    def admit_update(self, peer: str, sid: bytes, round_no: int, try_no: int,
                     fallback: int) -> Admission:
        """The one admission decision for an update addressed like this, made from its header
        before its tensor is read (so nobody streams megabytes that are refused anyway): the
        refusal reason, or None and the shape its tensor must have. `receive_update` asks
        again once the tensor is in, since the round may have closed while it streamed."""
        refusal = self._update_refusal(peer, sid, round_no, try_no, fallback)
        return Admission(refusal, self.expected_shape(sid) if refusal is None else None)

    def _update_refusal(self, peer: str, sid: bytes, round_no: int, try_no: int, fallback: int) -> str | None:
        s = self.sessions.get(sid)
        if s is None:
            return "unknown session"
        if s.state.ended:
            return "session ended"
        if s.plan is None or (s.plan.round, s.plan.try_no) != (round_no, try_no):
            return "unknown round"
        if peer not in s.plan.peers:
            return "not a participant"
        if s.spec.privacy.secagg:
            return "plain update in a secure-aggregation session"
        if s.hier is not None:
            return self.hierarchy.admit(s, fallback)
        ar = s.aggregator
        if ar is None or ar.slot != fallback:
            return "not the aggregator"
        if ar.state != AggregatorState.COLLECTING:
            return "round closed"
        if peer in ar.answered:
            return "duplicate update"
        return None

    def receive_update(self, peer: str, header: UpdateHeader, delta: np.ndarray,
                       now: float) -> tuple[str | None, list[Action]]:
        """A fully received update; (refusal reason or None, actions). Never aggregates a
        refused update."""
        admission = self.admit_update(peer, header.session_id, header.round, header.try_no,
                                      header.fallback)
        reason = admission.refusal
        if reason is None:
            shape = admission.expected_shape
            if delta.dtype != np.float32:
                reason = "dtype"
            elif shape is None or delta.shape != shape:
                reason = "shape"
            elif not np.isfinite(delta).all():
                reason = "nonfinite"
        if reason is not None:
            return reason, self.reject_update(peer, header.session_id, header.round, header.try_no, reason, now)
        s = self.sessions[header.session_id]
        if s.hier is not None:
            got = self.hierarchy.receive(s, peer, header, delta, now)
            if isinstance(got, str):
                return got, self.reject_update(peer, header.session_id, header.round,
                                               header.try_no, got, now)
            return None, got
        ar = s.aggregator
        assert ar is not None
        ar.updates[peer] = ClientUpdate(peer, delta, header.num_samples, loss=header.base_loss)
        ar.meta[peer] = UpdateMeta(header.num_samples, header.base_loss, header.base_accuracy, header.train_loss)
        return None, self._maybe_aggregate(s, now)

    def reject_update(self, peer: str, sid: bytes, round_no: int, try_no: int, reason: str,
                      now: float) -> list[Action]:
        """Record a refused update (malformed on the wire, or refused by `admit_update`)."""
        out: list[Action] = [UpdateRefused(sid, peer, reason)]
        if reason in BLAMEWORTHY:
            out.append(ReportOutcome(peer, False, 1.0, _evidence(sid, round_no, try_no, peer, reason),
                                     f"fl update for {sid.hex()[:16]} refused: {reason}"))
        s = self.sessions.get(sid)
        ar = s.aggregator if s is not None else None
        if s is not None and s.hier is not None:
            # a refused update counts as the participant's answer at its regional aggregator
            ar = s.hier.regional
            if ar is None or peer not in ar.plan.peers:
                return out
        if s is not None and ar is not None and s.plan is not None \
                and (s.plan.round, s.plan.try_no) == (round_no, try_no) \
                and peer in s.plan.peers and ar.state == AggregatorState.COLLECTING \
                and peer not in ar.answered and reason in BLAMEWORTHY:
            ar.rejected[peer] = reason
            out += self._maybe_aggregate(s, now) if s.hier is None \
                else self.hierarchy.maybe_regional(s, now)
        return out

    def _maybe_aggregate(self, s: Session, now: float, *, closing: bool = False) -> list[Action]:
        if s.hier is not None:
            return self.hierarchy.maybe_global(s, now, closing=closing)
        ar = s.aggregator
        if ar is None or ar.state != AggregatorState.COLLECTING:
            return []
        if ar.secagg is not None:
            # the SecAgg protocol drives this round; at the slot end it has not finished
            if not closing:
                return []
            if ar.slot == len(ar.order) - 1:
                return self._round_failed(s, f"secure aggregation did not finish in time (phase "
                                             f"{ar.secagg.phase.value})")
            ar.state = AggregatorState.DONE
            return []
        everyone = ar.everyone_answered()
        if not (everyone or closing):
            return []
        enough = len(ar.updates) >= ar.min_participants
        base = s.models.get(ar.plan.base_model_hash)
        if enough and base is not None:
            ar.state = AggregatorState.AGGREGATING
            strategy = build_strategy(s.spec)
            try:
                strategy.load_state_arrays(base.state)
            except StrategyError as e:
                return self._round_failed(s, f"strategy state of the base model is unusable: {e}")
            return [Aggregate(s.sid, ar.plan.round, ar.plan.try_no, ar.slot, strategy,
                              base.params, tuple(ar.updates.values()))]
        if enough and not closing:
            return []   # the base model is still being fetched; the slot end decides
        if everyone or ar.slot == len(ar.order) - 1:
            why = (f"{len(ar.updates)} usable updates of the minimum {ar.min_participants}"
                   if base is not None else "the aggregator has no base model")
            return self._round_failed(s, why)
        ar.state = AggregatorState.DONE     # the next aggregator in the order takes over
        return []

    def _round_failed(self, s: Session, reason: str) -> list[Action]:
        ar = s.aggregator
        assert ar is not None
        ar.state = AggregatorState.DONE
        msg = RoundFailed(s.sid, ar.plan.round, ar.plan.try_no, reason)
        return [Publish(msg)] + self._on_failed(s, self.me, msg, None)

    def aggregated(self, sid: bytes, round_no: int, try_no: int, fallback: int,
                   result: AggregateResult | None, error: str, now: float,
                   strategy_state: dict[str, np.ndarray] | None = None) -> list[Action]:
        """The strategy ran (or raised: `error`); `strategy_state` is its `state_arrays()`
        afterwards. Sign the receipt, publish the result."""
        s = self.sessions.get(sid)
        ar = s.aggregator if s is not None else None
        if s is None or ar is None or ar.state != AggregatorState.AGGREGATING \
                or (ar.plan.round, ar.plan.try_no, ar.slot) != (round_no, try_no, fallback):
            return []
        if result is None:
            return self._round_failed(s, f"aggregation failed: {error}")
        params = np.ascontiguousarray(result.params, dtype=np.float32)
        if not np.isfinite(params).all():
            return self._round_failed(s, "aggregation produced NaN or Inf")
        ar.state = AggregatorState.DONE
        mh = params_hash(params)
        self._store(s, mh, ModelBundle(params, _portable_state(strategy_state or {})))
        weights = _normalised(result.weights, result.accepted)
        accepted = tuple(AcceptedUpdate(p, weights[p], ar.meta[p].num_samples) for p in result.accepted)
        receipt = RoundReceipt(sid, round_no, try_no, self.me, bytes(self.key.verify_key),
                               ar.plan.base_model_hash, mh, accepted,
                               round_reward_of(s.spec), now).signed(self.key)
        rejected = {**ar.rejected, **{p: r[:200] for p, r in result.rejected.items()}}
        metas = [ar.meta[p] for p in result.accepted]
        n = sum(m.num_samples for m in metas)
        res = RoundResult(receipt, _wavg([(m.base_loss, m.num_samples) for m in metas]),
                          _wavg([(m.base_accuracy, m.num_samples) for m in metas]),
                          _wavg([(m.train_loss, m.num_samples) for m in metas]) if n else -1.0,
                          ar.dropped(), rejected)
        out: list[Action] = [Publish(res)]
        if receipt.round_reward > 0 and any(a.peer != self.me for a in accepted):
            s.rewards_due.append(PayRewards(receipt, s.ann, ar.plan))
        for p in result.accepted:
            if p != self.me and weights[p] > 0:
                out.append(ReportOutcome(p, True, weights[p], receipt.receipt_id,
                                         f"fl receipt {receipt.receipt_id.hex()}"))
        for p, why in result.rejected.items():
            out.append(UpdateRefused(sid, p, "strategy"))
            if p != self.me:
                out.append(ReportOutcome(p, False, 1.0, _evidence(sid, round_no, try_no, p, why),
                                         f"fl update for {sid.hex()[:16]} round {round_no} left out: {why}"))
        return out + self._on_result(s, self.me, res, now)

    # == rounds: results ===================================================================

    def _on_result(self, s: Session, peer: str, res: RoundResult, now: float) -> list[Action]:
        r = res.receipt
        if s.state.ended or s.plan is None or (r.round, r.try_no) != (s.plan.round, s.plan.try_no) \
                or peer != r.aggregator or r.aggregator not in s.order:
            return []
        out: list[Action] = []
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
        if s.standby is not None:
            s.standby.on_result(s.plan, res, now)
        c = s.coordinator
        if c is not None:
            if c.accepts_result(peer, res):
                c.on_result(res)
                if r.model_hash in s.models:
                    out += self._round_done(s, now)
                else:
                    out += self._need_model(s, r.model_hash, (r.aggregator,))
        else:
            out.append(Emit(TrainingRoundCompleted(s.sid.hex(), r.round, r.aggregator,
                                                   tuple(a.peer for a in r.accepted), res.dropped,
                                                   tuple(res.rejected), res.loss, res.accuracy,
                                                   r.model_hash.hex())))
        return out

    def _on_failed(self, s: Session, peer: str, msg: RoundFailed, now: float | None) -> list[Action]:
        if s.standby is not None and now is not None and s.plan is not None \
                and (msg.round, msg.try_no) == (s.plan.round, s.plan.try_no) and peer in s.order:
            s.standby.on_failed(peer, msg, now)
        c = s.coordinator
        if c is None or not c.accepts_failure(peer, msg):
            return []
        return self._retry(s, f"aggregator {peer}: {msg.reason}", now if now is not None else c.plan_at)

    def _retry(self, s: Session, reason: str, now: float) -> list[Action]:
        c = s.coordinator
        assert c is not None
        got = c.retry(reason, now)
        if isinstance(got, str):
            return self._end(s, SessionState.FAILED, got, now)
        if got is None:
            return []
        return [Publish(got)] + self._on_plan(s, self.me, got, now)

    def _round_done(self, s: Session, now: float) -> list[Action]:
        c = s.coordinator
        assert c is not None
        rec = c.model_arrived(now)
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

    def _adopted(self, s: Session, base_round: int, base_hash: bytes,
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
                    and (sources is None or self.me in sources):
                out.append(due)
        s.rewards_due = keep
        return out

    def _end(self, s: Session, state: SessionState, reason: str, now: float) -> list[Action]:
        s.state = state
        s.reason = reason
        if s.coordinator is not None:
            s.coordinator.phase = Phase.IDLE
            s.coordinator.end_reason = reason
        self._close_rounds(s)
        paid = self._adopted(s, s.rounds_done, s.latest_model, None)
        s.rewards_due.clear()
        rank = s.coordinator.rank if s.coordinator is not None else s.acting
        s.end = SessionEnded(s.sid, state.value, s.rounds_done, s.latest_model, reason, rank)
        s.end_republish = (END_REPUBLISH, now + self.interval)
        out: list[Action] = paid + [Publish(s.end),
                                    Emit(TrainingSessionEnded(s.sid.hex(), state.value, s.rounds_done,
                                                              s.latest_model.hex(), reason))]
        bundle = s.models.get(s.latest_model)
        if bundle is not None:
            out.append(SaveModel(s.sid, s.latest_model, bundle.params, True))
        return out

    def _close_rounds(self, s: Session) -> None:
        if s.participant is not None:
            s.participant.state = ParticipantState.DONE
        self.hierarchy.close(s)
        if s.aggregator is not None:
            s.aggregator.state = AggregatorState.DONE   # also drops an aggregation in flight

    # == time ==============================================================================

    def tick(self, now: float) -> list[Action]:
        """Deadlines, fallbacks, retries and republishing for every session."""
        out: list[Action] = []
        for s in list(self.sessions.values()):
            if s.state.ended:
                left, due = s.end_republish
                if s.end is not None and left > 0 and now >= due:
                    s.end_republish = (left - 1, now + self.interval)
                    out.append(Publish(s.end))
                continue
            c = s.coordinator
            if c is not None:
                msgs, failure = c.tick(now)
                if failure is not None:
                    if c.phase == Phase.OPT_IN and not c.history and c.plan is None:
                        out += self._end(s, SessionState.FAILED, failure, now) \
                            if c.try_no >= s.spec.max_retries else self._bump(s, failure)
                    else:
                        out += self._retry(s, failure, now)
                for m in msgs:
                    out.append(Publish(m))
                    if isinstance(m, RoundPlan):
                        out += self._on_plan(s, self.me, m, now)
            if not s.state.ended:
                out += self.failover.tick(s, now)
            pr = s.participant
            if pr is not None and pr.state == ParticipantState.SENDING:
                if pr.contribution is not None:   # secure aggregation: a fresh run per slot
                    if not pr.in_flight and now >= pr.slot_end(pr.sent_slot) \
                            and pr.sent_slot + 1 < len(pr.order):
                        out += self._send(s, pr, pr.sent_slot + 1, now)
                elif (slot := pr.next_send(now)) is not None:
                    out += self._send(s, pr, slot, now)
            ar = s.aggregator
            if ar is not None and ar.state == AggregatorState.COLLECTING and ar.secagg is not None:
                out += self.secagg_rounds.actions(s, ar, ar.secagg.tick(now), now)
            if ar is not None and ar.state == AggregatorState.COLLECTING and now >= ar.closes:
                out += self._maybe_aggregate(s, now, closing=True)
            out += self.hierarchy.tick(s, now)
        return self.secagg_rounds.route(out, now)

    def _bump(self, s: Session, failure: str) -> list[Action]:
        c = s.coordinator
        assert c is not None
        c.failures.append(failure)
        c.try_no += 1
        return []

    # == models and status =================================================================

    def _store(self, s: Session, h: bytes, bundle: ModelBundle) -> None:
        if h not in s.models:
            s.model_order.append(h)
        s.models[h] = bundle
        keep = {s.latest_model, s.plan.base_model_hash if s.plan else b"", h}
        while len(s.model_order) > MODELS_KEPT:
            victim = next((x for x in s.model_order if x not in keep), None)
            if victim is None:
                break
            s.model_order.remove(victim)
            del s.models[victim]

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
        """`fl.status` of one session (LookupError if unknown)."""
        s = self.sessions.get(sid)
        if s is None:
            raise LookupError(sid.hex())
        spec = s.spec
        out: dict[str, Any] = {
            "session_id": sid.hex(), "task": spec.task, "strategy": spec.strategy,
            "state": s.state.value if s.state.ended else "running",
            "phase": s.state.value, "starter": s.ann.starter, "started": s.ann.created,
            "role": "coordinator" if s.coordinator is not None else "participant",
            "rounds": spec.rounds, "rounds_done": s.rounds_done,
            "min_participants": spec.min_participants, "participants_per_round": spec.participants,
            "model_hash": s.latest_model.hex(), "reason": s.reason,
            "secagg": spec.privacy.secagg, "hierarchical": spec.hierarchical,
            "coordinators": list(coordinators_of(s.ann)),
            "acting_coordinator": coordinators_of(s.ann)[s.acting],
        }
        if spec.privacy.dp:
            from fognode.protocols.fl.privacy.dp import epsilon_after

            out["epsilon"] = epsilon_after(s.rounds_done, spec.privacy.dp_noise, 1.0, spec.privacy.dp_delta)
            out["delta"] = spec.privacy.dp_delta
        else:
            out["epsilon"] = None
        c = s.coordinator
        if c is not None:
            out["history"] = [r.to_status() for r in c.history]
            if spec.privacy.dp:     # the privacy spent after each round
                for h in out["history"]:
                    h["epsilon"] = epsilon_after(h["round"], spec.privacy.dp_noise, 1.0, spec.privacy.dp_delta)
            out["candidates"] = sorted(c.candidates)
            out["current"] = None if c.plan is None or s.state.ended else {
                "round": c.round_no, "try": c.try_no, "phase": c.phase.value,
                "participants": list(c.plan.peers), "aggregators": list(c.order)}
        else:
            out["history"] = list(s.participation)
        return out

    def session_list(self) -> list[dict[str, Any]]:
        return [session_row(self.status(sid)) for sid in self.sessions]


def session_row(status: dict[str, Any]) -> dict[str, Any]:
    """`fl.sessions`' row of a session from its `fl.status` (live or archived)."""
    return {k: status.get(k) for k in ("session_id", "task", "strategy", "state", "role", "started",
                                       "rounds_done", "rounds", "reason")}


def _evidence(sid: bytes, round_no: int, try_no: int, peer: str, reason: str) -> bytes:
    return digest(sid + f"/{round_no}/{try_no}/{peer}/{reason}".encode())


def _seed(s: Session, plan: RoundPlan) -> bytes:
    from fognode.protocols.fl.session.selection import round_seed

    return round_seed(s.sid, plan.round, plan.try_no)


def _wavg(pairs: list[tuple[float, int]]) -> float:
    good = [(v, n) for v, n in pairs if math.isfinite(v) and v >= 0]
    total = sum(n for _, n in good)
    return sum(v * n for v, n in good) / total if total else -1.0


def _normalised(weights: dict[str, float], accepted: tuple[str, ...]) -> dict[str, float]:
    w = {p: max(float(weights.get(p, 0.0)), 0.0) for p in accepted}
    total = sum(w.values())
    if total <= 0:
        return {p: 1.0 / len(accepted) for p in accepted} if accepted else {}
    return {p: v / total for p, v in w.items()}


def _portable_state(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Server-optimiser state handed to the next aggregator with the model (FedAdam's moments
    and the like) as 1-D float32; DP accounting is not carried (the coordinator computes the
    session's epsilon from the rounds done)."""
    return {k: np.ascontiguousarray(v, dtype=np.float32).ravel() for k, v in state.items()
            if not k.startswith("dp_")}
