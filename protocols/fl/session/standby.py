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

MAX_SOURCES = 16


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
    """What a fallback coordinator keeps while another coordinator acts."""

    rank: int                               # this node's index in coordinators_of
    heard: float                            # last progress of the acting coordinator
    candidates: dict[str, DeviceFacts] = field(default_factory=dict)
    history: list[RoundRecord] = field(default_factory=list)
    round_started: dict[int, float] = field(default_factory=dict)
    max_try: dict[int, int] = field(default_factory=dict)
    failures: dict[int, list[str]] = field(default_factory=dict)
    last_result: RoundResult | None = None
    holders: tuple[str, ...] = ()           # peers that hold the last completed model
    open_until: float = 0.0                 # the last aggregator slot of the open plan ends

    def due(self, now: float, acting: int, unit: float, slack: float = 0.0) -> bool:
        """Whether this fallback's turn came: k = rank - acting units of silence, and the open
        round had its time plus k - 1 units; each rank further down waits `slack` more per
        rank (the time the votes of a takeover take: the previous fallback may have taken
        over that much after its own turn, quorum.py)."""
        k = self.rank - acting
        extra = (k - 1) * slack
        return k > 0 and now >= max(self.heard + k * unit + extra, self.open_until + (k - 1) * unit + extra)

    def on_plan(self, plan: RoundPlan, now: float, span: float) -> None:
        """A new plan of the acting coordinator; its round may take `span` seconds."""
        self.heard = now
        self.open_until = now + span
        self.round_started.setdefault(plan.round, now)
        self.max_try[plan.round] = max(self.max_try.get(plan.round, -1), plan.try_no)
        for p in plan.peers:
            self.candidates.setdefault(p, DeviceFacts(region=plan.region_of(p)))
        last = self.last_result
        if last is not None and plan.base_model_hash == last.receipt.model_hash:
            # the plan's sources serve that model and its participants fetch it to train
            self.holders = uniq(self.holders + plan.sources + plan.peers)

    def on_result(self, plan: RoundPlan, res: RoundResult, now: float) -> None:
        self.heard = now
        self.open_until = 0.0
        r = res.receipt
        if any(h.round == r.round for h in self.history):
            return
        started = self.round_started.get(r.round, now)
        self.history.append(RoundRecord(
            round=r.round, tries=r.try_no + 1, aggregator=r.aggregator, participants=plan.peers,
            accepted=tuple(a.peer for a in r.accepted),
            weights={a.peer: a.weight for a in r.accepted}, dropped=res.dropped,
            rejected=dict(res.rejected), loss=res.loss, accuracy=res.accuracy,
            train_loss=res.train_loss, model_hash=r.model_hash, started_at=started,
            duration=now - started, failures=list(self.failures.get(r.round, []))))
        self.last_result = res
        self.holders = (r.aggregator,)

    def on_failed(self, peer: str, msg: RoundFailed, now: float) -> None:
        self.heard = now
        self.open_until = 0.0
        self.failures.setdefault(msg.round, []).append(
            f"round {msg.round} try {msg.try_no}: aggregator {peer}: {msg.reason}")
