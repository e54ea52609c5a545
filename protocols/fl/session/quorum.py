"""Who may take a session over, and how a node that was away learns how it went on: `Quorum`,
a collaborator of FlCore (sans-IO, time is an argument).

Silence: every member of a running session (a node that joined it, is not its acting
coordinator and has its task loaded) keeps when it last heard the acting coordinator make
progress (`Session.heard_at`: a plan, new or republished, the current plan's result or
failure, the starter's announcement while it collects opt-ins) and until when the round it
planned last may still run (`Session.open_until`). Once both passed by a takeover unit
(standby.takeover_unit), the member publishes `CoordinatorSilent(rank, rounds_done)`:
its vote that the coordinator of `rank` fell silent, again every republish interval and then
less often (doubling, at most every half unit) while the silence lasts.

Takeover needs a quorum: a fallback coordinator whose turn came (failover.py) takes over
only while it holds fresh votes (at most one takeover unit old) about the acting rank from a
majority of the session's membership: the participants of the last plan it accepted, or,
before any plan, the starter and every peer it saw opt in (`membership`, `has_quorum`); its
own vote counts. A member votes only while it hears nothing from the acting coordinator, so
in a network split only the side holding a majority of the membership can replace it, and a
fallback cut off with a minority stays a fallback: it never plans rounds of its own, so no
rounds are trained, adopted or paid on the minority side of a split that the majority side's
history does not explain (on heal the minority simply hears the majority's coordinator again).

Answers on demand: a vote is also a question. The acting coordinator that hears a vote about
itself (or a coordinator it superseded) republishes its plan at once (it is alive; the voter
was cut off, or missed the takeover), and the coordinator
that ended the session answers any message of the session (a vote, a stale plan, an opt-in)
with its SessionEnded, at most once per republish interval, so a node that missed the three
republishes of the end (session/ending.py) learns it as soon as it can be heard again.

Invariants (tested in tests/fl/test_partition.py, against real daemons in
tests/faults/test_fl_partition.py):
  Q1  a fallback of rank k becomes acting coordinator only with votes about rank k-1 or lower
      (the rank it follows) from a majority of the membership it knows;
  Q2  a member's vote is published only while it has not heard the acting coordinator for a
      takeover unit and the open round had its time, so a member that hears the coordinator
      never helps replace it;
  Q3  a node whose session is still running and that hears nothing keeps asking (voting) for
      as long as the silence lasts, and the ending coordinator answers every asker, so every
      member that can reach it eventually learns the end.
"""
from __future__ import annotations

from fognode.protocols.fl.actions import Action, Publish
from fognode.protocols.fl.messages import CoordinatorSilent, SessionEnded
from fognode.protocols.fl.session.coordinator import Phase, SessionState
from fognode.protocols.fl.session.standby import takeover_unit
from fognode.protocols.fl.session.state import Session

MAX_VOTES = 256          # votes kept per session (members beyond it are not counted)


def membership(s: Session) -> tuple[str, ...]:
    """The peers whose majority a takeover needs: the last accepted plan's participants, or,
    before any plan, the starter and the peers this node saw opt in."""
    if s.plan is not None:
        return s.plan.peers
    seen = set(s.standby.candidates) if s.standby is not None else set()
    return tuple(sorted(seen | {s.ann.starter}))


def majority(n: int) -> int:
    return n // 2 + 1


class Quorum:
    """Members' silence votes, the fallback's quorum check and the ended coordinator's answers
    (see the module docstring)."""

    def __init__(self, *, me: str, interval: float) -> None:
        self.me = me
        self.interval = interval

    # -- hearing the acting coordinator -----------------------------------------------------

    def heard(self, s: Session, now: float, *, open_for: float | None = None) -> None:
        """The acting coordinator made progress (`open_for`: a new plan whose round may run
        that long; 0: its round ended)."""
        s.heard_at = max(s.heard_at, now)
        if s.standby is not None:
            s.standby.heard = max(s.standby.heard, now)
        if open_for is not None:
            s.open_until = now + open_for
        s.next_vote, s.vote_gap = 0.0, 0.0

    def silent(self, s: Session, now: float) -> bool:
        unit = takeover_unit(s.spec, self.interval)
        return now >= max(s.heard_at + unit, s.open_until)

    # -- votes ------------------------------------------------------------------------------

    def tick(self, s: Session, now: float) -> list[Action]:
        """A member's vote, when its silence lasted a unit and the next vote is due."""
        if s.state.ended or s.coordinator is not None or s.prepared is None \
                or s.state not in (SessionState.WAITING, SessionState.RUNNING) \
                or not self.silent(s, now) or now < s.next_vote:
            return []
        half = takeover_unit(s.spec, self.interval) / 2.0
        s.vote_gap = self.interval if s.vote_gap <= 0 else min(2.0 * s.vote_gap, max(half, self.interval))
        s.next_vote = now + s.vote_gap
        self._record(s, self.me, s.acting, now)
        return [Publish(CoordinatorSilent(s.sid, s.acting, s.rounds_done))]

    def receive(self, s: Session, peer: str, msg: CoordinatorSilent, now: float) -> list[Action]:
        """A member's vote (or question): record it, and answer it when this node can."""
        if s.state.ended:
            return self.answer_end(s, now)
        self._record(s, peer, msg.rank, now)
        c = s.coordinator
        if c is None or msg.rank > c.rank or now - c.last_publish < self.interval / 2.0:
            return []
        if c.plan is not None and c.phase in (Phase.PLANNED, Phase.FETCHING, Phase.OPT_IN):
            c.last_publish = now
            return [Publish(c.plan)]
        if c.plan is None and c.rank == 0 and c.phase == Phase.OPT_IN:
            c.last_publish = now
            return [Publish(s.ann)]
        return []

    def _record(self, s: Session, peer: str, rank: int, now: float) -> None:
        if peer in s.votes or len(s.votes) < MAX_VOTES:
            s.votes[peer] = (rank, now)

    def votes_for_takeover(self, s: Session, now: float) -> tuple[int, int]:
        """(fresh votes about the acting rank from members, membership size)."""
        members = membership(s)
        unit = takeover_unit(s.spec, self.interval)
        fresh = sum(1 for p in set(members)
                    if (v := s.votes.get(p)) is not None and v[0] >= s.acting and now - v[1] <= unit)
        return fresh, len(set(members))

    def has_quorum(self, s: Session, now: float) -> bool:
        """Whether a majority of the membership voted that the acting coordinator is silent."""
        fresh, n = self.votes_for_takeover(s, now)
        return n > 0 and fresh >= majority(n)

    # -- an ended session -------------------------------------------------------------------

    def answer_end(self, s: Session, now: float) -> list[Action]:
        """This node ended the session: its SessionEnded again for a node that asked (at most
        once per republish interval)."""
        end: SessionEnded | None = s.end
        if end is None or now - s.end_answered < self.interval:
            return []
        s.end_answered = now
        return [Publish(end)]
