"""A fallback coordinator's standby state and the pure rules of coordinator failover: who the
fallbacks are (`choose_fallbacks`), how long silence lasts before one takes over
(`takeover_unit`), how long a round may run (`plan_span`). failover.py holds the core's side."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from fognode.node.wire import digest
from fognode.protocols.fl.messages import (
    MAX_COORDINATORS, DeviceFacts, RoundFailed, RoundPlan, RoundResult, SessionSpec)
from fognode.protocols.fl.session.coordinator import RoundRecord
from fognode.protocols.fl.session.election import aggregator_order

MAX_SOURCES = 16
MAX_UNPLANNED = 8      # results kept aside until a plan builds on one (Standby)


def choose_fallbacks(nonce: bytes, starter: str, pool: Iterable[str], count: int) -> tuple[str, ...]:
    """The fallback coordinators of a session: the first `count` peers of `pool` (the starter
    left out) ordered by BLAKE2b("fl-coordinator" || nonce || peer)."""
    peers = sorted({p for p in pool if p != starter},
                   key=lambda p: (digest(b"fl-coordinator" + nonce + p.encode()), p))
    return tuple(peers[:max(0, min(count, MAX_COORDINATORS))])


def takeover_unit(spec: SessionSpec, republish_interval: float) -> float:
    """Silence after which the next fallback takes over; fallback k waits k units."""
    return spec.deadline + 2.0 * republish_interval


def plan_span(spec: SessionSpec, plan: RoundPlan) -> float:
    """How long a round of `plan` may run before its last aggregator slot ends (as the
    coordinator's own `plan_timeout` counts it)."""
    slots = min(len(plan.participants), 1 + spec.fallbacks)
    if spec.hierarchical:
        slots += 1 + spec.fallbacks
    return slots * spec.deadline + min(spec.deadline, 5.0)


def uniq(peers: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(peers))[:MAX_SOURCES]


@dataclass
class Standby:
    """What a fallback coordinator keeps while another coordinator acts.

    Its history records a completed round from the round's result however that result reached
    it: checked against the plan of its try when this node saw that plan (any try of the
    round, its task loaded or not: a result of a try the coordinator gave up on may still be
    adopted), or else kept aside (`unplanned`, a few) until a plan of the acting coordinator
    builds on its model, which is the coordinator's word that it adopted that result; a plan
    that builds on another result of a recorded round replaces the record.

    Its base, where a takeover goes on from, is the newest completed round it knows of: the
    base of the acting coordinator's last plan (what it adopted, even when this node never
    received that round's result), or a newer round's result (a round may complete after its
    coordinator fell silent), with the peers that hold that model (`holders`)."""

    rank: int                               # this node's index in coordinators_of
    heard: float                            # last progress of the acting coordinator
    candidates: dict[str, DeviceFacts] = field(default_factory=dict)
    history: list[RoundRecord] = field(default_factory=list)
    round_started: dict[int, float] = field(default_factory=dict)
    max_try: dict[int, int] = field(default_factory=dict)
    failures: dict[int, list[str]] = field(default_factory=dict)
    base_round: int = 0                     # the base: 0 and b"" for the initial model
    base_hash: bytes = b""
    holders: tuple[str, ...] = ()           # peers that hold the base model
    open_until: float = 0.0                 # the last aggregator slot of the open plan ends
    # the plans seen of the last two rounds: (round, try) -> (plan, aggregator order)
    plans: dict[tuple[int, int], tuple[RoundPlan, tuple[str, ...]]] = field(default_factory=dict)
    # results from their aggregators whose plan this node did not see, by model hash
    unplanned: dict[bytes, tuple[RoundResult, float]] = field(default_factory=dict)

    def due(self, now: float, acting: int, unit: float, slack: float = 0.0) -> bool:
        """Whether this fallback's turn came: k = rank - acting units of silence, and the open
        round had its time plus k - 1 units; each rank further down waits `slack` more per
        rank (the time the votes of a takeover take: the previous fallback may have taken
        over that much after its own turn, quorum.py)."""
        k = self.rank - acting
        extra = (k - 1) * slack
        return k > 0 and now >= max(self.heard + k * unit + extra, self.open_until + (k - 1) * unit + extra)

    def on_plan(self, plan: RoundPlan, now: float, spec: SessionSpec) -> None:
        """A new plan of the acting coordinator (of session `spec`)."""
        self.heard = now
        self.open_until = now + plan_span(spec, plan)
        self.round_started.setdefault(plan.round, now)
        self.max_try[plan.round] = max(self.max_try.get(plan.round, -1), plan.try_no)
        self.plans[(plan.round, plan.try_no)] = (
            plan, aggregator_order(plan.seed, plan.participants, 1 + spec.fallbacks))
        for key in [k for k in self.plans if k[0] < plan.round - 1]:
            del self.plans[key]
        for p in plan.peers:
            self.candidates.setdefault(p, DeviceFacts(region=plan.region_of(p)))
        kept = self.unplanned.pop(plan.base_model_hash, None)
        if kept is not None and kept[0].receipt.round == plan.base_round:
            self._record(kept[0], None, kept[1], adopted=True)
        if plan.base_round >= 1:
            # the plan's sources serve that model and its participants fetch it to train
            self._move_base(plan.base_round, plan.base_model_hash, plan.sources + plan.peers,
                            adopted=True)

    def on_result(self, res: RoundResult, now: float) -> None:
        """A round result from its aggregator (the authenticated sender), any round or try."""
        r = res.receipt
        got = self.plans.get((r.round, r.try_no))
        if got is None:
            newest = max((k[0] for k in self.plans), default=0)
            if self.base_round < r.round <= newest + 1:
                self.unplanned[r.model_hash] = (res, now)
                while len(self.unplanned) > MAX_UNPLANNED:
                    del self.unplanned[next(iter(self.unplanned))]
            return
        plan, order = got
        if r.aggregator not in order or r.base_model_hash != plan.base_model_hash:
            return
        if (r.round, r.try_no) == max(self.plans):
            self.heard = now                # the open plan's result: progress
            self.open_until = 0.0
        self._record(res, plan, now, adopted=False)

    def _record(self, res: RoundResult, plan: RoundPlan | None, now: float, *, adopted: bool) -> None:
        r = res.receipt
        old = next((h for h in self.history if h.round == r.round), None)
        if old is not None and (not adopted or old.model_hash == r.model_hash):
            return
        if old is not None:
            self.history.remove(old)        # the coordinator built on another try's result
        peers = plan.peers if plan is not None else tuple(dict.fromkeys(
            [a.peer for a in r.accepted] + list(res.dropped) + list(res.rejected)))
        started = self.round_started.get(r.round, now)
        self.history.append(RoundRecord(
            round=r.round, tries=r.try_no + 1, aggregator=r.aggregator, participants=peers,
            accepted=tuple(a.peer for a in r.accepted),
            weights={a.peer: a.weight for a in r.accepted}, dropped=res.dropped,
            rejected=dict(res.rejected), loss=res.loss, accuracy=res.accuracy,
            train_loss=res.train_loss, model_hash=r.model_hash, started_at=started,
            duration=now - started, failures=list(self.failures.get(r.round, []))))
        self.history.sort(key=lambda h: h.round)
        self._move_base(r.round, r.model_hash, (r.aggregator,), adopted=adopted)

    def _move_base(self, rnd: int, h: bytes, holders: tuple[str, ...], *, adopted: bool) -> None:
        """A completed round `rnd` with model `h`: the new base when it is newer (or, adopted
        by the acting coordinator, another model of the base's round); else more holders."""
        if (rnd, h) == (self.base_round, self.base_hash):
            self.holders = uniq(self.holders + holders)
        elif rnd > self.base_round or (adopted and rnd == self.base_round):
            self.base_round, self.base_hash, self.holders = rnd, h, uniq(holders)

    def on_failed(self, peer: str, msg: RoundFailed, now: float) -> None:
        self.heard = now
        self.open_until = 0.0
        self.failures.setdefault(msg.round, []).append(
            f"round {msg.round} try {msg.try_no}: aggregator {peer}: {msg.reason}")
