"""Secure aggregation in the FL core (`SecAggRounds`, a collaborator of `session.core.FlCore`): one SecAgg run per
participant and per aggregator slot of a round attempt, fed by the round engine.

A participant of a `secagg` session, once trained, joins the run of the aggregator of its
current slot with fresh keys (`join`: advertise keys), answers the roster with
encrypted shares, the share bundle with its masked contribution and the unmask request with
its shares; when its aggregator cannot be reached, or the slot ends without a round result, it
joins the next slot's run (new round id, new keys). The aggregator's run (created with the
round) closes each phase when every expected peer answered or at the phase deadline; the sum
of the survivors goes to `strategy.aggregate_sum` (AggregateSum), too few survivors fail the
round (RoundFailed: the coordinator retries it as a new attempt with a new round id).
Messages a node sends to itself (it is participant and aggregator) stay in memory (`route`).
"""
from __future__ import annotations

from typing import Any, Callable

from nacl.signing import SigningKey

from fognode.node.errors import LocalProtocolError, RemoteProtocolError
from fognode.node.peerid import pubkey_from_peer_id
from fognode.protocols.fl.actions import Action, AggregateSum, SendSecAgg, UpdateRefused
from fognode.protocols.fl.messages import RoundPlan
from fognode.protocols.fl.secagg import round as secagg_round
from fognode.protocols.fl.secagg.core import (
    Completed, Failed, SecAggAggregator, SecAggConfig, SecAggParticipant, SecAggResult, Send,
    split_weight)
from fognode.protocols.fl.secagg.messages import (
    AdvertiseKeys, KeyRoster, ShareBundle, UnmaskRequest)
from fognode.protocols.fl.secagg.messages import Message as SecAggMessage
from fognode.protocols.fl.session.rounds import (
    AggregatorRound, AggregatorState, ParticipantRound, ParticipantState, UpdateMeta)
from fognode.protocols.fl.session.state import Session
from fognode.protocols.fl.strategies.base import StrategyError
from fognode.protocols.fl.strategies.registry import build_strategy


class SecAggRounds:
    """The core's secure-aggregation collaborator: handed the node's sessions (the core's
    own map) and the core's `send` (a participant's next send) and `round_failed` steps."""

    def __init__(self, *, me: str, key: SigningKey, sessions: dict[bytes, Session],
                 send: Callable[[Session, ParticipantRound, int, float], list[Action]],
                 round_failed: Callable[[Session, str], list[Action]]) -> None:
        self.me = me
        self.key = key
        self.sessions = sessions
        self._send = send
        self._round_failed = round_failed

    def config(self, s: Session, plan: RoundPlan, slot: int) -> SecAggConfig:
        assert s.prepared is not None
        return secagg_round.config_for(s.sid, plan, slot, s.prepared.layout.size + 1,
                                       s.spec.min_participants)

    def aggregator(self, s: Session, ar: AggregatorRound) -> SecAggAggregator:
        """The SecAgg aggregator of `ar`'s slot: the key phase (which also absorbs local
        training) ends KEYS_SHARE of the deadline into the slot, each later phase gets
        PHASE_SHARE of it."""
        d = s.spec.deadline
        start = ar.t0 + ar.slot * d
        sa = SecAggAggregator(self.config(s, ar.plan, ar.slot), start,
                              phase_timeout=secagg_round.PHASE_SHARE * d,
                              verify_keys=_verify_keys(ar.plan.peers))
        sa.deadline = start + secagg_round.KEYS_SHARE * d
        return sa

    def join(self, s: Session, pr: ParticipantRound, slot: int, now: float) -> list[Action]:
        """Start a fresh SecAgg run (new keys) with the aggregator of `slot`: advertise keys."""
        pr.sent_slot = slot
        plan = pr.plan
        try:
            part = SecAggParticipant(self.config(s, plan, slot), self.me, identity=self.key,
                                     verify_keys=_verify_keys(plan.peers))
        except LocalProtocolError:
            pr.state = ParticipantState.DONE
            return []
        pr.secagg = part
        return [SendSecAgg(s.sid, plan.round, plan.try_no, slot, pr.order[slot], part.advertise(),
                           pr.meta, True)]

    def receive(self, peer: str, sid: bytes, round_no: int, try_no: int, fallback: int,
                       msg: SecAggMessage, meta: UpdateMeta | None,
                       now: float) -> tuple[str | None, list[Action]]:
        """One secure-aggregation message from `peer` (authenticated stream origin) for slot
        `fallback` of (round, try); (refusal reason or None, actions). Messages from the
        aggregator go to this node's participant run, the others to its aggregator run."""
        why, out = self._receive(peer, sid, round_no, try_no, fallback, msg, meta, now)
        return why, self.route(out, now)

    def _receive(self, peer: str, sid: bytes, round_no: int, try_no: int, fallback: int,
                   msg: SecAggMessage, meta: UpdateMeta | None,
                   now: float) -> tuple[str | None, list[Action]]:
        s = self.sessions.get(sid)
        if s is None:
            return "unknown session", []
        if s.state.ended:
            return "session ended", []
        if not s.spec.privacy.secagg:
            return "not a secure-aggregation session", []
        if s.plan is None or (s.plan.round, s.plan.try_no) != (round_no, try_no):
            return "unknown round", []
        if isinstance(msg, (KeyRoster, ShareBundle, UnmaskRequest)):
            return self._as_participant(s, peer, fallback, msg)
        if peer not in s.plan.peers:
            return "not a participant", []
        ar = s.aggregator
        if ar is None or ar.slot != fallback or ar.secagg is None:
            return "not the aggregator", []
        if ar.state != AggregatorState.COLLECTING:
            return "round closed", []
        if isinstance(msg, AdvertiseKeys) and meta is None:
            return "malformed", [UpdateRefused(sid, peer, "malformed")]
        try:
            acts = ar.secagg.receive(peer, msg, now)
        except RemoteProtocolError as e:
            return f"secagg: {e}"[:200], [UpdateRefused(sid, peer, "secagg")]
        if isinstance(msg, AdvertiseKeys) and meta is not None:
            ar.meta[peer] = meta
        return None, self.actions(s, ar, acts, now)

    def _as_participant(self, s: Session, peer: str, fallback: int,
                               msg: SecAggMessage) -> tuple[str | None, list[Action]]:
        pr = s.participant
        if pr is None or pr.secagg is None or pr.state != ParticipantState.SENDING \
                or pr.sent_slot != fallback or peer != pr.order[fallback]:
            return "not expected", []
        part = pr.secagg
        try:
            reply = part.receive(msg)
            if isinstance(msg, ShareBundle):
                assert pr.contribution is not None
                reply = part.masked_input(pr.contribution)
        except RemoteProtocolError as e:
            pr.secagg = None        # this run is over; the next slot's aggregator may do better
            return str(e)[:200], []
        except LocalProtocolError as e:
            pr.state = ParticipantState.DONE     # our contribution cannot be masked (too large)
            return str(e)[:200], []
        if reply is None:
            return None, []
        return None, [SendSecAgg(s.sid, pr.plan.round, pr.plan.try_no, fallback, peer, reply, None, True)]

    def delivered(self, sid: bytes, round_no: int, try_no: int, fallback: int, ok: bool,
                         reason: str, now: float) -> list[Action]:
        """Outcome of a participant's SendSecAgg: when the aggregator cannot be reached the
        next one in the order is tried (with a fresh run)."""
        s = self.sessions.get(sid)
        pr = s.participant if s is not None else None
        if s is None or pr is None or ok or (pr.plan.round, pr.plan.try_no) != (round_no, try_no) \
                or pr.state != ParticipantState.SENDING or fallback != pr.sent_slot:
            return []
        pr.secagg = None
        if fallback + 1 < len(pr.order):
            return self.route(self._send(s, pr, fallback + 1, now), now)
        return []

    def actions(self, s: Session, ar: AggregatorRound, acts: list[Any],
                        now: float) -> list[Action]:
        out: list[Action] = []
        for a in acts:
            if isinstance(a, Send):
                out.append(SendSecAgg(s.sid, ar.plan.round, ar.plan.try_no, ar.slot, a.peer,
                                      a.message, None, False))
            elif isinstance(a, Completed):
                out += self._completed(s, ar, a.result)
            elif isinstance(a, Failed):
                if ar.state == AggregatorState.COLLECTING:
                    out += self._round_failed(s, f"secure aggregation failed: {a.reason}")
        return out

    def _completed(self, s: Session, ar: AggregatorRound, result: SecAggResult) -> list[Action]:
        """The secure sum is known: hand it to the strategy (only the sum, never an update)."""
        if ar.state != AggregatorState.COLLECTING:
            return []
        ar.contributors = result.contributors
        if len(result.contributors) < ar.min_participants:
            return self._round_failed(s, f"{len(result.contributors)} inputs in the secure sum, "
                                         f"minimum {ar.min_participants}")
        base = s.models.get(ar.plan.base_model_hash)
        if base is None:
            return self._round_failed(s, "the aggregator has no base model")
        strategy = build_strategy(s.spec)
        try:
            strategy.load_state_arrays(base.state)
        except StrategyError as e:
            return self._round_failed(s, f"strategy state of the base model is unusable: {e}")
        delta_sum, total = split_weight(result.total)
        ar.state = AggregatorState.AGGREGATING
        return [AggregateSum(s.sid, ar.plan.round, ar.plan.try_no, ar.slot, strategy, base.params,
                             delta_sum, total, result.contributors,
                             {p: ar.meta[p].num_samples for p in result.contributors})]

    def route(self, actions: list[Action], now: float) -> list[Action]:
        """Carry secagg messages this node sends to itself (participant and aggregator in one)
        in memory; everything else goes to the adapter."""
        out: list[Action] = []
        queue = list(actions)
        while queue:
            a = queue.pop(0)
            if isinstance(a, SendSecAgg) and a.to == self.me:
                queue.extend(self._receive(self.me, a.session_id, a.round, a.try_no, a.fallback,
                                             a.message, a.meta, now)[1])
            else:
                out.append(a)
        return out


def _verify_keys(peers: tuple[str, ...]) -> dict[str, bytes]:
    """The Ed25519 identity keys inside the participants' peer ids: their SecAgg key adverts
    must be signed with them (a peer id without one cannot take part)."""
    out: dict[str, bytes] = {}
    for p in peers:
        try:
            out[p] = pubkey_from_peer_id(p)
        except ValueError:
            continue
    return out
