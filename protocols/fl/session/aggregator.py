"""An aggregator's part of an FL round: `AggregatorSide`, a collaborator of `session.core.FlCore`
(sans-IO, time is an argument).

Once a plan elects this node to an aggregator slot (the core sets up `Session.aggregator`), it
decides on every update addressed to it from the header alone (`admit_update`, before the
tensor streams in, handing out the row of the round's update matrix it streams into:
strategies/matrix.py) and again once the tensor is in (`receive_update`: dtype, shape, finite);
a refusal that says something about the sender's honesty or competence (`BLAMEWORTHY`) is
reported to reputation and counts as that participant's answer. When every participant
answered, or at its slot end, it asks for the strategy to run (`Aggregate`) with at least
`min_participants` updates (the matrix sealed: its committed rows are the strategy's
input, no copy), leaves the round to the next aggregator in the order, or (the last
one) fails it (`RoundFailed`). With the strategy's result it signs the round receipt,
publishes the `RoundResult`, reports each accepted and left-out participant, and keeps the
round's rewards due until the coordinator adopts its model (rewards/receipts.py).
Hierarchical rounds (session/hier.py) and secure aggregation (secagg/session.py) have their
own collection; this side routes to them.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from nacl.signing import SigningKey

from fognode.node.wire import digest
from fognode.protocols.fl.actions import (
    Action, Aggregate, PayRewards, Publish, ReportOutcome, UpdateRefused)
from fognode.protocols.fl.messages import RoundFailed, RoundResult, UpdateHeader
from fognode.protocols.fl.rewards.receipts import AcceptedUpdate, RoundReceipt, round_reward_of
from fognode.protocols.fl.secagg.session import SecAggRounds
from fognode.protocols.fl.session.hier import Hierarchy
from fognode.protocols.fl.session.rounds import AggregatorRound, AggregatorState, UpdateMeta
from fognode.protocols.fl.session.state import Admission, ModelBundle, Session
from fognode.protocols.fl.strategies.base import AggregateResult, ClientUpdate, StrategyError
from fognode.protocols.fl.strategies.matrix import sealed_updates
from fognode.protocols.fl.strategies.registry import build_strategy
from fognode.protocols.fl.transfer.tensors import params_hash

# Rejections that say something about the sender's honesty or competence (reported to
# reputation); lateness and races ("round closed", "unknown round") are not.
BLAMEWORTHY = {"dtype", "shape", "size", "oversize", "hash", "nonfinite", "not a participant",
               "malformed"}

# The core's steps this side hands its outcomes to: a round failure this node publishes
# (now None: at the failure's own time) and a round result this node publishes.
OnFailed = Callable[[Session, str, RoundFailed, float | None], list[Action]]
OnResult = Callable[[Session, str, RoundResult, float], list[Action]]


class AggregatorSide:
    """The core's aggregator collaborator: handed the node's sessions (the core's own map),
    its hierarchical and secure-aggregation collaborators, and the core's steps for a failed
    and a completed round."""

    def __init__(self, *, me: str, key: SigningKey, sessions: dict[bytes, Session],
                 hierarchy: Hierarchy, secagg: SecAggRounds, on_failed: OnFailed,
                 on_result: OnResult) -> None:
        self.me = me
        self.key = key
        self.sessions = sessions
        self.hierarchy = hierarchy
        self.secagg = secagg
        self._on_failed = on_failed
        self._on_result = on_result

    # -- a plan, time ----------------------------------------------------------------------

    def plan(self, s: Session, now: float) -> None:
        """This node holds a slot of `s.order` for `s.plan`: open its collection."""
        assert s.plan is not None
        slot = s.order.index(self.me)
        s.aggregator = AggregatorRound(s.plan, s.order, slot, now, s.spec.deadline,
                                       s.spec.min_participants)
        if s.spec.privacy.secagg:
            s.aggregator.secagg = self.secagg.aggregator(s, s.aggregator)

    def tick(self, s: Session, now: float) -> list[Action]:
        """The SecAgg run's phase deadlines, then the slot end."""
        out: list[Action] = []
        ar = s.aggregator
        if ar is not None and ar.state == AggregatorState.COLLECTING and ar.secagg is not None:
            out += self.secagg.actions(s, ar, ar.secagg.tick(now), now)
        if ar is not None and ar.state == AggregatorState.COLLECTING and now >= ar.closes:
            out += self.maybe_aggregate(s, now, closing=True)
        return out

    # -- updates ---------------------------------------------------------------------------

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
        if refusal is not None:
            return Admission(refusal)
        shape = self.expected_shape(sid)
        ar = self.sessions[sid].aggregator
        if shape is None or ar is None or self.sessions[sid].hier is not None:
            return Admission(None, shape)
        # a flat round: the tensor streams straight into its row of the round's matrix
        return Admission(None, shape, ar.update_matrix(shape[0]).lease(peer))

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
        reason = self._update_refusal(peer, header.session_id, header.round, header.try_no,
                                      header.fallback)
        if reason is None:
            shape = self.expected_shape(header.session_id)
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
        assert ar is not None and shape is not None
        # no copy when `delta` streamed into its row (admit_update's lease), else copied in
        row = ar.update_matrix(shape[0]).commit(peer, delta)
        ar.updates[peer] = ClientUpdate(peer, row, header.num_samples, loss=header.base_loss)
        ar.meta[peer] = UpdateMeta(header.num_samples, header.base_loss, header.base_accuracy, header.train_loss)
        s.mark(now, header.round, header.try_no, "update_in", peer)
        return None, self.maybe_aggregate(s, now)

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
            out += self.maybe_aggregate(s, now) if s.hier is None \
                else self.hierarchy.maybe_regional(s, now)
        return out

    # -- aggregation -----------------------------------------------------------------------

    def maybe_aggregate(self, s: Session, now: float, *, closing: bool = False) -> list[Action]:
        """[Aggregate] once everyone answered (or at the slot end, `closing`) with enough
        updates; else wait, hand over to the next slot, or fail the round."""
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
                return self.round_failed(s, f"secure aggregation did not finish in time (phase "
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
                return self.round_failed(s, f"strategy state of the base model is unusable: {e}")
            return [Aggregate(s.sid, ar.plan.round, ar.plan.try_no, ar.slot, strategy,
                              base.params, self._sealed_updates(ar))]
        if enough and not closing:
            return []   # the base model is still being fetched; the slot end decides
        if everyone or ar.slot == len(ar.order) - 1:
            why = (f"{len(ar.updates)} usable updates of the minimum {ar.min_participants}"
                   if base is not None else "the aggregator has no base model")
            return self.round_failed(s, why)
        ar.state = AggregatorState.DONE     # the next aggregator in the order takes over
        return []

    @staticmethod
    def _sealed_updates(ar: AggregatorRound) -> tuple[ClientUpdate, ...]:
        """The round's updates as consecutive rows of its matrix (sealed: the transfers still
        open stop writing), so a mean-based rule is one BLAS call over them."""
        if ar.matrix is None:
            return tuple(ar.updates.values())
        ar.updates = {u.peer: u for u in sealed_updates(ar.matrix, ar.updates)}
        return tuple(ar.updates.values())

    def round_failed(self, s: Session, reason: str) -> list[Action]:
        """This node's aggregation of the round failed: publish RoundFailed."""
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
            return self.round_failed(s, f"aggregation failed: {error}")
        params = np.ascontiguousarray(result.params, dtype=np.float32)
        if not np.isfinite(params).all():
            return self.round_failed(s, "aggregation produced NaN or Inf")
        ar.state = AggregatorState.DONE
        mh = params_hash(params)
        s.keep_model(mh, ModelBundle(params, _portable_state(strategy_state or {})))
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


def _evidence(sid: bytes, round_no: int, try_no: int, peer: str, reason: str) -> bytes:
    return digest(sid + f"/{round_no}/{try_no}/{peer}/{reason}".encode())


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
