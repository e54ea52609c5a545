"""Hierarchical rounds (`SessionSpec.hierarchical`): regional aggregators, then a global one.

Design (`Hierarchy`, a collaborator of FlCore; sans-IO, time is an argument):

- The round plan carries each participant's region (the registry's region fact the
  coordinator's selection saw). Per region an aggregator order is elected exactly like the
  flat one, restricted to that region's participants, with the seed BLAKE2b(seed || region)
  (`election.regional_orders`). The global aggregator order is the flat election over all
  participants, unchanged (so a result is accepted from the same peers as in a flat round).
- Participants send their update to their region's aggregator, with the same slot timing and
  fallbacks as a flat round (rounds.py): slot k of the regional order is [t0 + kD, t0 + (k+1)D).
- A regional aggregator collects its region's updates until every region member answered or
  its slot ends; it then combines them with the session strategy's mean-based combination:
  each update becomes `strategy.client_contribution(delta, samples)` = (vector, weight) (for
  FedAvg: samples x delta, samples), and the regional update is the weighted mean vector
  sum(vectors) / sum(weights) carrying the total weight and every member's sample count and
  quality figures. It forwards that to the global aggregator order, whose slots start after
  the regional ones: slot k of the global order is [t1 + kD, t1 + (k+1)D), t1 = t0 +
  (1 + fallbacks) D. A forward that cannot be delivered goes to the next global aggregator.
- The global aggregator rebuilds each region's sum (mean x weight, in float64), adds them and
  runs `strategy.aggregate_sum` on the total (the path secure aggregation uses): the server
  step sees exactly the flat weighted sum, so FedAvg, FedProx, FedAdam/Yogi/Adagrad, norm
  clipping and central DP give the flat result (to float32 rounding). It aggregates once every
  planned participant is covered, or at its slot end with at least `min_participants`
  covered (or once every region has forwarded); a region that produced nothing is dropped,
  the round goes on with the others. It signs the receipt listing every accepted participant
  with its sample-count weight. Participants whose update their regional aggregator refused
  (malformed: reported to reputation there) or never received appear as dropped.
- As in flat rounds, a participant with no round result at its slot end resends to its
  region's next aggregator; a second forward of an already covered region is refused by the
  global aggregator as a duplicate (not blamed).
- Robust strategies (median, trimmed mean, Krum, Multi-Krum, Bulyan) are refused in
  hierarchical sessions: a robust rule over regional means would not be the rule the session
  asked for (an attacker's outlier is averaged into its region's mean before anyone looks).
  Secure aggregation is refused too: regional aggregators would need the plain updates.
- Trust: the global aggregator believes a regional aggregator's member list and sample
  counts as a flat aggregator believes each participant's count; it checks that the members
  are planned participants of the sender's region and counts nobody twice.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from fognode.protocols.fl.actions import Action, AggregateSum, SendUpdate
from fognode.protocols.fl.messages import MemberMeta, RoundPlan, UpdateHeader
from fognode.protocols.fl.session.election import regional_orders
from fognode.protocols.fl.session.rounds import (
    SLOT_SETTLED, AggregatorRound, AggregatorState, ParticipantRound, ParticipantState, UpdateMeta)
from fognode.protocols.fl.session.state import HierRound, Session
from fognode.protocols.fl.strategies.base import ClientUpdate, StrategyError
from fognode.protocols.fl.strategies.registry import build_strategy

class Hierarchy:
    """The core's hierarchical-round collaborator (see the module docstring): handed each
    `Session` it acts on, and the core's `round_failed` step."""

    def __init__(self, *, me: str, round_failed: Callable[[Session, str], list[Action]]) -> None:
        self.me = me
        self._round_failed = round_failed

    # -- planning --------------------------------------------------------------------------

    def plan(self, s: Session, plan: RoundPlan, now: float) -> None:
        """Set up this node's regional roles for `plan` (s.order is the global order)."""
        count = 1 + s.spec.fallbacks
        orders = regional_orders(plan.seed, plan.participants, plan.regions, count)
        region = plan.region_of(self.me) if self.me in plan.peers else ""
        h = HierRound(region, orders.get(region, ()))
        s.hier = h
        if self.me in h.region_order:
            sub = dataclasses.replace(plan, participants=tuple(
                pr for pr, r in zip(plan.participants, plan.regions) if r == region))
            h.regional = AggregatorRound(sub, h.region_order, h.region_order.index(self.me), now,
                                         s.spec.deadline, 1)
        if s.aggregator is not None:
            # the global aggregator's slots follow the regional ones
            s.aggregator = AggregatorRound(plan, s.order, s.aggregator.slot,
                                           now + count * s.spec.deadline, s.spec.deadline,
                                           s.spec.min_participants)
            s.aggregator.contributors = ()

    def close(self, s: Session) -> None:
        h = s.hier
        if h is None:
            return
        if h.regional is not None:
            h.regional.state = AggregatorState.DONE
        if h.forward is not None:
            h.forward.state = ParticipantState.DONE

    # -- receiving updates -----------------------------------------------------------------

    def admit(self, s: Session, fallback: int) -> str | None:
        """admit_update for a hierarchical session: the update is for this node's regional
        slot or its global slot (which one is known from the header's member list)."""
        h = s.hier
        slots = []
        if h is not None and h.regional is not None:
            slots.append(h.regional)
        if s.aggregator is not None:
            slots.append(s.aggregator)
        mine = [a for a in slots if a.slot == fallback]
        if not mine:
            return "not the aggregator"
        if all(a.state != AggregatorState.COLLECTING for a in mine):
            return "round closed"
        return None

    def receive(self, s: Session, peer: str, header: UpdateHeader, delta: np.ndarray,
                      now: float) -> str | None | list[Action]:
        """A checked update (dtype, shape, finiteness) in a hierarchical session: a refusal
        reason, or the actions."""
        h = s.hier
        assert h is not None and s.plan is not None
        if header.members:
            ar = s.aggregator
            if ar is None or ar.slot != header.fallback:
                return "not the aggregator"
            if ar.state != AggregatorState.COLLECTING:
                return "round closed"
            region = s.plan.region_of(peer)
            if any(m.peer not in s.plan.peers or s.plan.region_of(m.peer) != region
                   for m in header.members):
                return "not a participant"
            covered = set(ar.contributors or ())
            if peer in h.sums or covered & {m.peer for m in header.members}:
                return "duplicate update"
            h.sums[peer] = (delta, header.weight)
            ar.contributors = tuple(covered | {m.peer for m in header.members})
            for m in header.members:
                ar.meta[m.peer] = UpdateMeta(m.num_samples, m.base_loss, m.base_accuracy, m.train_loss)
            return self.maybe_global(s, now)
        ra = h.regional
        if ra is None or ra.slot != header.fallback:
            return "not the aggregator"
        if ra.state != AggregatorState.COLLECTING:
            return "round closed"
        if peer not in ra.plan.peers:
            return "not a participant"
        if peer in ra.answered:
            return "duplicate update"
        ra.updates[peer] = ClientUpdate(peer, delta, header.num_samples)
        ra.meta[peer] = UpdateMeta(header.num_samples, header.base_loss, header.base_accuracy,
                                   header.train_loss)
        return self.maybe_regional(s, now)

    # -- regional aggregation --------------------------------------------------------------

    def maybe_regional(self, s: Session, now: float, *, closing: bool = False) -> list[Action]:
        h = s.hier
        ra = h.regional if h is not None else None
        if h is None or ra is None or ra.state != AggregatorState.COLLECTING:
            return []
        if not (ra.everyone_answered() or closing):
            return []
        ra.state = AggregatorState.DONE
        if not ra.updates:
            return []       # nothing reached this slot: the region's next aggregator, or none
        strategy = build_strategy(s.spec)
        total = np.zeros_like(next(iter(ra.updates.values())).delta, dtype=np.float64)
        weight = 0.0
        members: list[MemberMeta] = []
        for p, u in ra.updates.items():
            try:
                vec, w = strategy.client_contribution(u.delta, u.num_samples)
            except StrategyError:
                continue
            total += np.asarray(vec, dtype=np.float64)
            weight += float(w)
            m = ra.meta[p]
            members.append(MemberMeta(p, m.num_samples, m.base_loss, m.base_accuracy, m.train_loss))
        if not members or not weight > 0:
            return []
        mean = (total / weight).astype(np.float32)
        if not np.isfinite(mean).all():
            return []
        h.members = tuple(members)
        h.weight = weight
        fw = ParticipantRound(ra.plan, s.order, ra.t0 + (1 + s.spec.fallbacks) * s.spec.deadline,
                              s.spec.deadline)
        fw.delta = mean
        n = sum(m.num_samples for m in members)
        fw.meta = UpdateMeta(n, -1.0, -1.0, -1.0)
        fw.state = ParticipantState.SENDING
        h.forward = fw
        return self.forward(s, fw.slot_at(now), now)

    def forward(self, s: Session, slot: int, now: float) -> list[Action]:
        h = s.hier
        assert h is not None and h.forward is not None
        fw = h.forward
        assert fw.delta is not None and fw.meta is not None
        fw.sending_to(slot)
        to = fw.order[slot]
        act = SendUpdate(s.sid, fw.plan.round, fw.plan.try_no, slot, to, fw.meta.num_samples,
                         -1.0, -1.0, -1.0, fw.delta, h.members, h.weight)
        if to != self.me:
            fw.in_flight = True
            return [act]
        from fognode.protocols.fl.transfer.tensors import encode_tensor

        header = act.header(encode_tensor(fw.delta, chunk_size=1 << 20)[0])
        got = self.receive(s, self.me, header, fw.delta.copy(), now)
        out = got if isinstance(got, list) else []
        return out + self.sent(s, fw, slot, not isinstance(got, str) or got in SLOT_SETTLED, now)

    def sent(self, s: Session, fw: ParticipantRound, slot: int, ok: bool,
                   now: float) -> list[Action]:
        nxt = fw.outcome(slot, ok, now)
        if nxt is None or fw.state != ParticipantState.SENDING:
            return []
        return self.forward(s, nxt, now)

    def delivered(self, s: Session, round_no: int, try_no: int, fallback: int, ok: bool,
                        reason: str, now: float) -> list[Action]:
        """Outcome of a forward; an unreachable or refusing global aggregator (other than for
        a duplicate: the region is already covered) passes it to the next one."""
        h = s.hier
        fw = h.forward if h is not None else None
        if fw is None or (fw.plan.round, fw.plan.try_no) != (round_no, try_no) \
                or fw.state != ParticipantState.SENDING or fallback != fw.sent_slot:
            return []
        return self.sent(s, fw, fallback, ok or reason in SLOT_SETTLED, now)

    def tick(self, s: Session, now: float) -> list[Action]:
        h = s.hier
        if h is None:
            return []
        out: list[Action] = []
        ra = h.regional
        if ra is not None and ra.state == AggregatorState.COLLECTING and now >= ra.closes:
            out += self.maybe_regional(s, now, closing=True)
        fw = h.forward
        if fw is not None and fw.state == ParticipantState.SENDING \
                and (slot := fw.next_send(now)) is not None:
            out += self.forward(s, slot, now)
        return out

    # -- global aggregation ----------------------------------------------------------------

    def maybe_global(self, s: Session, now: float, *, closing: bool = False) -> list[Action]:
        h = s.hier
        ar = s.aggregator
        if h is None or ar is None or ar.state != AggregatorState.COLLECTING:
            return []
        # every region has forwarded its update (its aggregator already waited for its
        # members or its slot end), or every participant is covered
        everyone = ar.everyone_answered() or set(ar.plan.regions) <= {
            ar.plan.region_of(p) for p in h.sums}
        if not (everyone or closing):
            return []
        covered = tuple(p for p in ar.plan.peers if p in set(ar.contributors or ()))
        enough = len(covered) >= ar.min_participants
        base = s.models.get(ar.plan.base_model_hash)
        if enough and base is not None:
            strategy = build_strategy(s.spec)
            try:
                strategy.load_state_arrays(base.state)
            except StrategyError as e:
                return self._round_failed(s, f"strategy state of the base model is unusable: {e}")
            total = np.zeros(base.params.shape, dtype=np.float64)
            weight = 0.0
            for mean, w in h.sums.values():
                total += np.asarray(mean, dtype=np.float64) * w
                weight += w
            ar.state = AggregatorState.AGGREGATING
            return [AggregateSum(s.sid, ar.plan.round, ar.plan.try_no, ar.slot, strategy,
                                 base.params, total, weight, covered,
                                 {p: ar.meta[p].num_samples for p in covered})]
        if enough and not closing:
            return []
        if everyone or ar.slot == len(ar.order) - 1:
            why = (f"{len(covered)} participants covered by regional updates, of the minimum "
                   f"{ar.min_participants}" if base is not None
                   else "the aggregator has no base model")
            return self._round_failed(s, why)
        ar.state = AggregatorState.DONE
        return []
