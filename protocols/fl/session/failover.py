"""Coordinator failover: `Failover`, a collaborator of FlCore (sans-IO, time is an argument).

Who may coordinate: the signed announcement names the coordinators in rank order
(`messages.coordinators_of`): the starter (rank 0), then up to `coordinator_fallbacks` peers
the starter knew to run the fl role and to be eligible for the session (registry records
offering "fl", peers it saw opt in to sessions), ordered by BLAKE2b("fl-coordinator" || nonce
|| peer) (`choose_fallbacks`; the nonce is part of the session id). The list is covered by the
starter's signature, so anyone holding the announcement knows it; nothing else is needed.

Following: every node follows the highest coordinator rank it has seen (`Session.acting`). A
plan or session end of rank k is accepted only from coordinator k of the announcement, and only
when k is at least that rank; anything else is refused with the reason (`MessageRefused`).

Watching: a fallback of rank k that joined the session keeps a `Standby`: the opt-ins (they are
gossiped to everyone), a record of every completed round it learns of (its history: a result
checked against its try's plan, or one the acting coordinator's next plan builds on, whether
or not this node's task was loaded then; standby.py), the highest try it saw of each round,
the last completed round and which peers hold its model, and when it last heard the
acting coordinator make progress (a plan, new or republished, the current plan's result or
failure, or the starter's announcement while it collects opt-ins; coordinators republish their
plan every `republish_interval`, so a live one is heard often).

Takeover: when nothing was heard for (k - acting) x (deadline + 2 x republish_interval), and
the round the acting coordinator planned last has had its time (every aggregator slot of its
plan ended without a result or failure; plus k - acting - 1 units), and a majority of the
session's membership voted that the acting coordinator is silent (session/quorum.py: the
members' `CoordinatorSilent` votes; its own counts), fallback k becomes the acting coordinator
with rank k. Waiting for the open round keeps work that is still going to
complete (its result becomes the new base) and means no round is planned again while its first
plan can still produce a receipt. Then, from the last completed round it saw, it
takes that round's model (fetched from the round's aggregator or another holder when it is not
here), excludes the lower-ranked coordinators from the candidates (they fell silent), plans
the next round at a try number above any it saw of that round (so a try of the old coordinator
is never repeated), and goes on to the session's end, publishing SessionEnded and saving the
final model. Fallbacks further down wait longer, so they do not race; one that hears the new
coordinator's plans restarts its clock from them.

No split brain: a fallback cut off from the majority of the membership never takes over
(quorum.py), so a network split cannot give the session two coordinators that both make
progress, and the rank of the one that did wins on heal. A lower-ranked coordinator that comes back (republishing its plan, retrying,
ending the session) is refused by every node that saw the higher rank, and steps down when it
hears a plan or session end of a higher rank (then it follows the session as a participant).
A fallback that is not in the session (task not enabled, not eligible) never takes over: the
next one does, after its longer timeout.

Failover happens only at round boundaries: a round the old coordinator planned that still
completes counts (its result is progress and becomes the new base); one that did not complete
is planned again. Flat, secure-aggregation and hierarchical plans carry everything their
rounds need (participants, reputations, regions), so failover works the same for all three.
"""
from __future__ import annotations

from typing import Callable

from nacl.signing import SigningKey

from fognode.protocols.fl.actions import Action, MessageRefused, Publish
from fognode.protocols.fl.messages import DeviceFacts, RoundPlan, coordinators_of
from fognode.protocols.fl.session.coordinator import (
    CandidateView, Coordinator, Phase, SessionState)
from fognode.protocols.fl.session.selection import ineligibility
from fognode.protocols.fl.session.standby import Standby, takeover_unit, uniq
from fognode.protocols.fl.session.state import Session


class Failover:
    """The core's coordinator-failover collaborator (see the module docstring): handed each
    `Session` it acts on, and the core's steps it needs (`on_plan`, `end`, `need_model`)."""

    def __init__(self, *, me: str, key: SigningKey, view: CandidateView, interval: float,
                 facts: Callable[[], DeviceFacts], quorum: Callable[[Session, float], bool],
                 on_plan: Callable[[Session, str, RoundPlan, float], list[Action]],
                 end: Callable[[Session, SessionState, str, float], list[Action]],
                 need_model: Callable[[Session, bytes, tuple[str, ...]], list[Action]]) -> None:
        self.me = me
        self.key = key
        self.view = view
        self.interval = interval
        self._facts = facts
        self._quorum = quorum
        self._on_plan = on_plan
        self._end = end
        self._need_model = need_model

    def join(self, s: Session, now: float) -> None:
        """A joined session names this node as a fallback coordinator: stand by."""
        coords = coordinators_of(s.ann)
        if self.me in coords[1:]:
            s.standby = Standby(coords.index(self.me), now)

    def refusal(self, s: Session, peer: str, kind: str, rank: int) -> list[Action]:
        """[MessageRefused] when a `kind` message of coordinator `rank` from `peer` must be
        refused, else []."""
        coords = coordinators_of(s.ann)
        why = ""
        if peer not in coords:
            why = (f"{peer} is not a coordinator of session {s.sid.hex()[:16]} "
                   f"(coordinators: {', '.join(coords)})")
        elif rank >= len(coords) or coords[rank] != peer:
            why = f"{peer} is coordinator rank {coords.index(peer)}, not rank {rank}"
        elif rank < s.acting:
            why = (f"coordinator {peer} (rank {rank}) was superseded by {coords[s.acting]} "
                   f"(rank {s.acting})")
        return [MessageRefused(s.sid, peer, kind, why)] if why else []

    def follow(self, s: Session, rank: int, now: float) -> None:
        """A plan or end of coordinator `rank` (>= s.acting) is accepted: follow that rank; a
        lower-ranked coordinator on this node steps down and keeps what it knew."""
        s.acting = max(s.acting, rank)
        c = s.coordinator
        if c is not None and c.rank < s.acting:
            c.phase = Phase.IDLE
            s.coordinator = None
            s.standby = Standby(c.rank, now, dict(c.candidates), list(c.history),
                                base_round=c.base_round, holders=c.base_sources,
                                base_hash=c.base_hash if c.base_round else b"")

    def tick(self, s: Session, now: float) -> list[Action]:
        sb = s.standby
        if sb is not None and s.prepared is not None \
                and s.state in (SessionState.WAITING, SessionState.RUNNING) \
                and sb.due(now, s.acting, takeover_unit(s.spec, self.interval), 2.0 * self.interval) and self._quorum(s, now):
            return self._take_over(s, sb, now)
        c = s.coordinator
        if c is None or c.phase != Phase.RESUMING:
            return []
        if now >= c.plan_at + takeover_unit(s.spec, self.interval):
            return self._rebase(s, c, now)
        if c.base_hash not in s.fetching and now - c.last_publish >= self.interval:
            c.last_publish = now
            return self._need_model(s, c.base_hash, c.base_sources)
        return []

    def _take_over(self, s: Session, sb: Standby, now: float) -> list[Action]:
        """Become the acting coordinator of `s` from the last completed round this node saw."""
        coords = coordinators_of(s.ann)
        silent = coords[s.acting]
        c = Coordinator(s.ann, self.me, self.view, now, self.interval, key=self.key, rank=sb.rank)
        c.candidates = {p: f for p, f in sb.candidates.items() if p not in coords[:sb.rank]}
        if ineligibility(self.view(self.me, self._facts()), s.spec.criteria) is None:
            c.candidates[self.me] = self._facts()
        c.history = list(sb.history)
        if sb.base_hash:
            c.base_hash, c.base_round = sb.base_hash, sb.base_round
        c.round_no = c.base_round + 1
        c.try_no = c.first_try = sb.max_try.get(c.round_no, -1) + 1
        c.failures = sb.failures.get(c.round_no, []) + [
            f"coordinator {silent} (rank {s.acting}) silent for {now - sb.heard:.1f}s: "
            f"taken over by {self.me} (rank {sb.rank}) with silence votes of a majority of the members"]
        c.base_sources = uniq((self.me,) + sb.holders)
        c.seen_tries = dict(sb.max_try)
        c.phase = Phase.RESUMING
        c.plan_at = c.last_publish = now
        s.coordinator, s.standby, s.acting = c, None, sb.rank
        s.latest_model = c.base_hash
        s.rounds_done = c.base_round
        if c.base_hash in s.models:
            return self.resumed(s, now)
        return self._need_model(s, c.base_hash, c.base_sources)

    def _rebase(self, s: Session, c: Coordinator, now: float) -> list[Action]:
        """Taking over, the last completed model could not be fetched for a whole takeover
        unit (its aggregator and every holder are gone): go on from the latest earlier
        completed model this node holds (redoing the rounds after it), or fail the session."""
        lost = (f"the model of round {c.base_round} could not be fetched from "
                f"{', '.join(c.base_sources[1:]) or 'anyone'}")
        held = [(h.round, h.model_hash) for h in reversed(c.history) if h.round < c.base_round]
        held.append((0, s.ann.initial_model_hash))
        for rnd, mh in held:
            if mh not in s.models:
                continue
            c.history = [h for h in c.history if h.round <= rnd]
            c.base_hash, c.base_round, c.base_sources = mh, rnd, (self.me,)
            c.round_no = rnd + 1
            c.try_no = c.first_try = c.seen_tries.get(c.round_no, -1) + 1
            # keep who took over and why (the takeover note) ahead of why it went back
            c.failures = [f for f in c.failures if "taken over by" in f] + [
                f"taking over, {lost}: going on from round {rnd}"]
            s.latest_model, s.rounds_done = mh, rnd
            return self.resumed(s, now)
        return self._end(s, SessionState.FAILED, f"taking over, {lost}", now)

    def resumed(self, s: Session, now: float) -> list[Action]:
        """The taking-over coordinator holds the last completed model: plan the next round
        (or end the session when that was the last one)."""
        c = s.coordinator
        assert c is not None
        c.phase = Phase.OPT_IN
        if c.finished_all_rounds:
            return self._end(s, SessionState.COMPLETED, "", now)
        plan = c.make_plan(now)
        if plan is None:
            c.wait_from = now    # wait for candidates from now on (make_plan saw OPT_IN: kept the old start)
            return []
        return [Publish(plan)] + self._on_plan(s, self.me, plan, now)
