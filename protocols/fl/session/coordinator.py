"""The acting coordinator of one session (sans-IO): the starter, or a fallback coordinator
that took the session over (session/failover.py).

It collects opt-ins, plans each round (participants selected from the candidates by the
round seed, with the reputations used for the election, and the round header it signs:
rewards/round_header.py, the reward evidence), republishes the current plan until
the next one (gossip may drop it; the republished plan is also the coordinator's heartbeat),
accepts the first valid round result from an aggregator of the plan's election order (or of
an earlier try of the same round: a result that arrives after its try was given up on, as
plans travel slowly in a network split, still completes the round), fetches
the new model (so it can serve it and save the final one), and then plans the next round. A
round that fails (too few updates, no result before the last fallback slot ends, the new model
cannot be fetched) is retried with a new seed from the last completed model, up to
`max_retries` times; then the session fails.

Too few eligible candidates is not a failed try: no plan went out, so the round has not been
tried and its try number (the seed participants derive) is kept for the plan that does go out.
The coordinator plans as soon as enough candidates are eligible (round 1: from the end of the
opt-in window; later rounds and tries: from when a plan could not be made) and fails the
session when there are still too few after `candidate_wait(spec)`, `deadline * (1 +
max_retries)`: the bound round 1 had when each wait used up a try (like a Flower server
waiting for `min_available_clients` with a timeout).

The coordinator is not a single point of failure: the signed announcement names fallback
coordinators (`coordinators_of`); the first of them that hears nothing from the acting one
for its timeout takes over from the last completed round with a higher `rank`, carried by
its plans and session end, and participants follow the highest rank (session/failover.py).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable

from nacl.signing import SigningKey

from fognode.protocols.fl.messages import (
    DeviceFacts,
    RoundFailed,
    RoundPlan,
    RoundResult,
    SessionAnnouncement,
    SessionSpec,
)
from fognode.protocols.fl.session.election import aggregator_order
from fognode.protocols.fl.session.selection import DeviceCandidate, round_seed, select_participants

CandidateView = Callable[[str, DeviceFacts], DeviceCandidate]


def candidate_wait(spec: SessionSpec) -> float:
    """How long the coordinator waits for enough eligible candidates before the session fails."""
    return spec.deadline * (1 + spec.max_retries)


class SessionState(enum.Enum):
    PREPARING = "preparing"     # task loading on this node
    WAITING = "waiting"         # collecting opt-ins / waiting for enough candidates
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def ended(self) -> bool:
        return self in (SessionState.COMPLETED, SessionState.FAILED, SessionState.STOPPED)


class Phase(enum.Enum):
    OPT_IN = "opt-in"
    PLANNED = "planned"         # a plan is out, waiting for a result
    FETCHING = "fetching"       # a result is in, fetching its model
    RESUMING = "resuming"       # taking over: fetching the last completed round's model
    IDLE = "idle"               # ended


@dataclass
class RoundRecord:
    """One completed round in the coordinator's history."""

    round: int
    tries: int
    aggregator: str
    participants: tuple[str, ...]
    accepted: tuple[str, ...]
    weights: dict[str, float]
    dropped: tuple[str, ...]
    rejected: dict[str, str]
    loss: float
    accuracy: float
    train_loss: float
    model_hash: bytes
    started_at: float
    duration: float
    failures: list[str] = field(default_factory=list)

    def to_status(self) -> dict[str, Any]:
        return {"round": self.round, "tries": self.tries, "aggregator": self.aggregator,
                "participants": list(self.participants), "accepted": list(self.accepted),
                "weights": dict(self.weights), "dropped": list(self.dropped),
                "rejected": dict(self.rejected), "loss": _num(self.loss),
                "accuracy": _num(self.accuracy), "train_loss": _num(self.train_loss),
                "model_hash": self.model_hash.hex(), "duration": round(self.duration, 3),
                "started_at": round(self.started_at, 3), "failures": list(self.failures)}


def _num(x: float) -> float | None:
    return None if x != x or x < 0 else round(x, 6)


class Coordinator:
    def __init__(self, ann: SessionAnnouncement, me: str, candidate_view: CandidateView,
                 now: float, republish_interval: float, *, key: SigningKey, rank: int = 0) -> None:
        self.ann = ann
        self.key = key                  # signs each plan's round header (reward evidence)
        self.rank = rank                # index in coordinators_of(ann); 0 = the starter
        self.spec = ann.spec
        self.sid = ann.session_id
        self.me = me
        self.view = candidate_view
        self.interval = republish_interval
        self.phase = Phase.OPT_IN
        self.wait_from = now + self.spec.optin_seconds   # plans from here; waits candidate_wait
        self.clock = now        # the latest tick's time (a retry of this node's own RoundFailed
                                # is handed the plan's time: the wait must not start back then)
        self.last_publish = now
        self.candidates: dict[str, DeviceFacts] = {}
        self.round_no = 1
        self.try_no = 0
        self.first_try = 0              # retries count from here (a takeover starts later)
        self.seen_tries: dict[int, int] = {}   # a takeover: highest try seen of each round
        self.failures: list[str] = []
        self.plan: RoundPlan | None = None
        self.order: tuple[str, ...] = ()
        # every try of the current round planned so far: try -> (plan, aggregator order); a
        # result of an earlier try that arrives late still completes the round
        self.tries: dict[int, tuple[RoundPlan, tuple[str, ...]]] = {}
        self.plan_at = now
        self.round_started_at = now
        self.base_hash = ann.initial_model_hash
        self.base_round = 0
        self.base_sources: tuple[str, ...] = (me,)
        self.pending: RoundResult | None = None
        self.history: list[RoundRecord] = []
        self.end_reason = ""

    # -- inputs -------------------------------------------------------------------------

    def on_optin(self, peer: str, facts: DeviceFacts) -> None:
        self.candidates[peer] = facts

    def plan_timeout(self) -> float:
        slots = max(len(self.order), 1)
        if self.spec.hierarchical:
            # the regional aggregators' slots come first (hier.py)
            slots += 1 + self.spec.fallbacks
        return self.plan_at + slots * self.spec.deadline + min(self.spec.deadline, 5.0)

    def tick(self, now: float) -> tuple[list[Any], str | None]:
        """(gossip messages to publish, failure reason or None): in Phase.PLANNED the reason to
        retry the round with; in Phase.OPT_IN the session's (too few candidates after the wait)."""
        out: list[Any] = []
        self.clock = max(self.clock, now)
        if self.phase == Phase.OPT_IN:
            if now >= self.wait_from:
                plan = self.make_plan(now)
                if plan is not None:
                    return [plan], None
                if now >= self.wait_from + candidate_wait(self.spec):
                    return [], (f"round {self.round_no}: only {len(self._eligible(self.round_seed()))} "
                                f"eligible candidates after waiting {now - self.wait_from:.0f}s for more, "
                                f"fewer than the minimum {self.spec.min_participants}")
            if now - self.last_publish >= self.interval:
                # the heartbeat: the starter's announcement while no plan is out (only the
                # starter's copy is accepted), else the last plan (ignored as not newer)
                if self.plan is not None:
                    self.last_publish = now
                    out.append(self.plan)
                elif self.rank == 0:
                    self.last_publish = now
                    out.append(self.ann)
            return out, None
        if self.phase in (Phase.PLANNED, Phase.FETCHING) and self.plan is not None:
            if self.phase == Phase.PLANNED and now >= self.plan_timeout():
                return [], f"no round result before the last aggregator's deadline (try {self.try_no})"
            if now - self.last_publish >= self.interval:
                self.last_publish = now
                out.append(self.plan)
        return out, None

    def round_seed(self) -> bytes:
        return round_seed(self.sid, self.round_no, self.try_no)

    def _eligible(self, seed: bytes) -> tuple[DeviceCandidate, ...]:
        cands = [self.view(p, f) for p, f in sorted(self.candidates.items())]
        return select_participants(cands, self.spec.criteria, self.spec.participants, seed)

    def make_plan(self, now: float) -> RoundPlan | None:
        """A plan for the current round/try, or None with too few eligible candidates (the
        coordinator then waits for more: the wait starts now unless it is already waiting)."""
        seed = self.round_seed()
        chosen = self._eligible(seed)
        if len(chosen) < self.spec.min_participants:
            if self.phase != Phase.OPT_IN:
                self.wait_from = max(now, self.clock)
            self.phase = Phase.OPT_IN
            return None
        parts = tuple((c.peer, min(max(c.reputation, 0.0), 1.0)) for c in chosen)
        sources = tuple(dict.fromkeys(self.base_sources + (self.me,)))[:16]
        regions = tuple(c.region for c in chosen) if self.spec.hierarchical else ()
        wallets = tuple(self.candidates[c.peer].wallet if c.peer in self.candidates else b""
                        for c in chosen)
        self.plan = RoundPlan(self.sid, self.round_no, self.try_no, seed, parts, self.base_hash,
                              self.base_round, sources, regions,
                              wallets if any(wallets) else (), rank=self.rank).with_header(
            self.key, self.me, 1 + self.spec.fallbacks)
        self.order = aggregator_order(seed, parts, 1 + self.spec.fallbacks)
        self.tries = {t: po for t, po in self.tries.items() if po[0].round == self.round_no}
        self.tries[self.try_no] = (self.plan, self.order)
        self.plan_at = now
        self.last_publish = now
        if self.try_no == self.first_try:
            self.round_started_at = now
        self.phase = Phase.PLANNED
        return self.plan

    def accepts_result(self, peer: str, result: RoundResult) -> bool:
        """The first result of any try of the current round from an aggregator of that try's
        order, built on its base (a try given up on that completes late still completes the
        round: its aggregator pays it once the next plan builds on it, ending.adopted_rewards)."""
        r = result.receipt
        got = self.tries.get(r.try_no)
        return (self.phase == Phase.PLANNED and got is not None and got[0].round == r.round == self.round_no
                and r.aggregator in got[1] and peer == r.aggregator
                and r.base_model_hash == got[0].base_model_hash)

    def on_result(self, result: RoundResult) -> None:
        self.pending = result
        self.phase = Phase.FETCHING

    def accepts_failure(self, peer: str, msg: RoundFailed) -> bool:
        return (self.phase == Phase.PLANNED and self.plan is not None
                and msg.round == self.plan.round and msg.try_no == self.plan.try_no
                and peer in self.order)

    def retry(self, reason: str, now: float) -> RoundPlan | None | str:
        """Plan the next try of the current round from the last completed model; a string
        (the session's failure reason) when the retries are used up."""
        self.failures.append(f"round {self.round_no} try {self.try_no}: {reason}")
        self.pending = None
        self.try_no += 1
        if self.try_no - self.first_try > self.spec.max_retries:
            return f"round {self.round_no} failed {self.try_no} times; last: {reason}"
        return self.make_plan(now)      # None: too few candidates, waiting for more from now

    def model_arrived(self, now: float) -> RoundRecord:
        """The pending result's model is here: record the round and move the base on."""
        assert self.pending is not None and self.plan is not None
        res, r = self.pending, self.pending.receipt
        plan = self.tries.get(r.try_no, (self.plan, ()))[0]
        rec = RoundRecord(
            round=self.round_no, tries=self.try_no - self.first_try + 1, aggregator=r.aggregator,
            participants=plan.peers, accepted=tuple(a.peer for a in r.accepted),
            weights={a.peer: a.weight for a in r.accepted}, dropped=res.dropped,
            rejected=dict(res.rejected), loss=res.loss, accuracy=res.accuracy,
            train_loss=res.train_loss, model_hash=r.model_hash, started_at=self.round_started_at,
            duration=now - self.round_started_at, failures=list(self.failures))
        self.history.append(rec)
        self.failures = []
        self.base_hash = r.model_hash
        self.base_round = self.round_no
        self.base_sources = (self.me, r.aggregator)
        self.pending = None
        self.round_no += 1
        self.try_no = 0
        self.first_try = 0
        return rec

    @property
    def finished_all_rounds(self) -> bool:
        return self.round_no > self.spec.rounds
