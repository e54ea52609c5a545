"""Gap tracking for reliable gossip, bounded and charged to the peers that caused it (sans-IO).

`SequenceTracker` keeps, per (topic, origin), which sequence numbers were delivered and which
are missing, says whether an arriving message is new (`accept`, `head`), hands out the pulls
that are due (`due`, `next_due`) and settles them (`pull_done`). It imports neither trio nor
libp2p; time is passed in. What it refused or gave up on is queued as events (`Lost`,
`Refused`), drained by the adapter with `take_events()` (logged, counted, charged).

Charging. Every origin's state is charged to one peer, its sponsor: the relayer whose message
made us track it, later the relayer of its latest new message when that peer has room for it.
The sponsor pays for the origin's slot, all its missing entries and its pull in flight. Caps
per peer and in total (`TrackerLimits`) bound each of the three; a message that would go over
a cap is refused (not delivered, or its gap not pulled) and a `Refused` event names the peer.

Bounds. Each origin has a window (gossip_window.py) of `window` seqs beyond its settled
prefix, so it costs O(window / 8) bytes however many messages it sends. A jump past the window is a resync from the new head: the seqs jumped
over are skipped (counted, never pulled) and only `backfill` seqs before the head are pulled,
best effort. Pulls are scheduled per origin (one in flight at a time, asking for all its
missing seqs) on a heap keyed by due time with lazily invalidated entries, so `due` and
`next_due` cost O(log n) per pull, never a scan. An origin whose pulls fail `max_attempts`
times in a row is dropped: its missing entries are freed (reported lost) and it stays quiet
(gaps skipped, nothing pulled) for `drop_backoff` seconds, doubling per drop. Back-fill that
nobody can supply is given up after `OPTIONAL_ATTEMPTS` failed pulls without a drop.

Invariants (`check()`, called by the property tests after every step): each window keeps
its own (gossip_window.py) and the charges theirs, within the caps (gossip_charges.py); a
peer's account holds exactly the origins it sponsors, the sum of their missing seqs and the
pulls in flight charged to it; an origin SCHEDULED has a live heap entry, one PARKED a live
parked entry, one IN_FLIGHT a ticket; the heap holds at most 2 x origins + 64 entries.
"""
from __future__ import annotations

import enum
import heapq
import math
from collections import deque
from dataclasses import dataclass, field

from fognode.node.gossip_charges import Charges
from fognode.node.gossip_tracking import (MAX_PULL_SEQS, Lost, PullRequest, Refusal, Refused,
                                          TrackerEvent, TrackerLimits)
from fognode.node.gossip_window import SeqWindow

__all__ = ["MAX_PULL_SEQS", "OPTIONAL_ATTEMPTS", "Lost", "PullRequest", "Refusal", "Refused",
           "SequenceTracker", "TrackerEvent", "TrackerLimits"]

OPTIONAL_ATTEMPTS = 5      # failed pulls after which back-fill is given up (no drop)
MAX_DROP_DOUBLINGS = 5     # drop_backoff doubles per drop of the same origin, up to 32x

Key = tuple[str, bytes]    # (topic, origin public key)


class _Sched(enum.Enum):
    IDLE = 0        # nothing to pull, or waiting for the next message
    SCHEDULED = 1   # on the heap
    PARKED = 2      # due, waiting for a pull slot
    IN_FLIGHT = 3   # a pull is running


@dataclass(eq=False)
class _Origin:
    key: Key
    epoch: int
    sponsor: str
    win: SeqWindow
    charged: int = 0           # missing seqs charged to the sponsor (== win.count())
    sources: list[str] = field(default_factory=list)
    last_seen: float = 0.0
    due: float = math.inf
    gen: int = 0               # bumped whenever heap or parked entries must go stale
    sched: _Sched = _Sched.IDLE
    ticket: int = 0
    failures: int = 0
    drops: int = 0
    quiet_until: float = -math.inf


class SequenceTracker:
    """The gap tracker of one node (all topics). See the module docstring."""

    def __init__(self, limits: TrackerLimits = TrackerLimits()) -> None:
        if limits.problem():
            raise ValueError(f"tracker limits: {limits.problem()}")
        self.limits = limits
        self.charges = Charges(limits.caps())
        self._origins: dict[Key, _Origin] = {}
        self._inflight: dict[int, tuple[Key, str]] = {}   # ticket -> (origin, charged peer)
        self._heap: list[tuple[float, int, Key, int]] = []
        self._parked: dict[str, deque[tuple[Key, int]]] = {}   # peer ("" = total) -> due
        self._counter = 0
        self._events: list[TrackerEvent] = []

    # -- inputs -----------------------------------------------------------------------------

    def accept(self, topic: str, origin: bytes, epoch: int, seq: int, relayer: str,
               now: float, *, via_pull: bool = False) -> bool:
        """A message arrived through gossip (relayed by `relayer`) or a pull (`via_pull`,
        from the peer that answered). True when it is new and must be delivered."""
        o = self._origin(topic, origin, epoch, seq, relayer, now, head=False)
        if o is None or o.win.seen(seq):
            return False
        if not via_pull:
            self._sponsor(o, relayer, now)
        if not o.win.fits(seq):
            self._resync(o, seq - 1, now)
        elif seq - 1 > o.win.highest:
            self._gap(o, seq - 1, now)
        o.win.deliver(seq)
        self._recharge(o)
        return True

    def head(self, topic: str, origin: bytes, epoch: int, seq: int, relayer: str,
             now: float) -> None:
        """The origin announced its latest seq: whatever we lack up to it becomes missing."""
        o = self._origin(topic, origin, epoch, seq, relayer, now, head=True)
        if o is None or seq <= o.win.highest:
            return
        self._sponsor(o, relayer, now)
        if not o.win.fits(seq):
            self._resync(o, seq, now)
        else:
            self._gap(o, seq, now)

    def admits(self, topic: str, origin: bytes, relayer: str, now: float) -> bool:
        """Before any work on a message (its signature not checked yet): False when it is of
        an origin we do not track and `relayer` may sponsor no more origins (its cap reached,
        none of its origins idle long enough to evict). Refusing records the same `Refused`
        event `accept` would; True promises nothing (`accept` decides)."""
        if (topic, origin) in self._origins or self.charges.origin_room(relayer)[0]:
            return True
        key = self.charges.lru_origin(relayer)
        o = self._origins.get(key) if key is not None else None
        if o is not None and now - o.last_seen >= self.limits.idle_evict:
            return True                       # `accept` will evict it to make room
        self._refuse(topic, relayer, Refusal.ORIGINS_PER_PEER)
        return False

    def due(self, now: float) -> list[PullRequest]:
        """The pulls to start now. Each must be settled with exactly one `pull_done`."""
        out: list[PullRequest] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, key, gen = heapq.heappop(self._heap)
            o = self._origins.get(key)
            if o is None or o.gen != gen or o.sched is not _Sched.SCHEDULED:
                continue
            o.sched = _Sched.IDLE
            if o.win.missing:
                self._issue_or_park(o, out)
        return out

    def next_due(self) -> float:
        """When `due` will next return something (math.inf if nothing is scheduled)."""
        while self._heap:
            _, _, key, gen = self._heap[0]
            o = self._origins.get(key)
            if o is not None and o.gen == gen and o.sched is _Sched.SCHEDULED:
                return self._heap[0][0]
            heapq.heappop(self._heap)
        return math.inf

    def pull_done(self, req: PullRequest, *, gone: tuple[int, ...] = (), now: float) -> None:
        """A pull ended. Seqs it fetched were already given to `accept(via_pull=True)`;
        `gone` are the seqs the origin said it no longer has; the rest failed."""
        entry = self._inflight.pop(req.ticket, None)
        if entry is None:
            return
        key, peer = entry
        self.charges.add_pull(peer, -1)
        self._unpark(peer, now)
        o = self._origins.get(key)
        if o is None or o.ticket != req.ticket or o.sched is not _Sched.IN_FLIGHT:
            return
        o.sched = _Sched.IDLE
        self._lost(o, o.win.settle(gone), "gone")
        if any(not o.win.is_missing(s) for s in req.seqs):
            o.failures = 0                 # progress: something came, or the origin answered
        else:
            o.failures += 1
            if o.failures >= OPTIONAL_ATTEMPTS:
                o.win.drop_optional()      # back-fill nobody has: give it up, no loss
            if o.failures >= self.limits.max_attempts and o.win.missing:
                self._drop(o, now)
        self._recharge(o)
        if o.win.missing:
            wait = (self.limits.retry * 2 ** (o.failures - 1) if o.failures
                    else self.limits.pull_delay)
            self._schedule(o, now + wait)

    def take_events(self) -> list[TrackerEvent]:
        """The Lost and Refused events since the last call, oldest first."""
        out, self._events = self._events, []
        return out

    # -- origin slots and sponsors ----------------------------------------------------------

    def _origin(self, topic: str, origin: bytes, epoch: int, seq: int, relayer: str,
                now: float, *, head: bool) -> _Origin | None:
        key = (topic, origin)
        o = self._origins.get(key)
        if o is not None:
            if epoch < o.epoch:
                return None                   # from before the publisher restarted: stale
            if epoch > o.epoch:               # the publisher restarted: start over
                o.epoch, o.failures, o.ticket = epoch, 0, 0   # a pull in flight settles nothing
                o.sched = _Sched.IDLE
                o.gen += 1
                self._backfill(o, seq if head else seq - 1, now)
            o.last_seen = now
            self.charges.touch(o.sponsor, key)
            return o
        peer_room, total_room = self.charges.origin_room(relayer)
        if not peer_room and not self._evict_idle(relayer, now):
            self._refuse(topic, relayer, Refusal.ORIGINS_PER_PEER)
            return None
        if not total_room and not self._evict_for(relayer, now):
            self._refuse(topic, relayer, Refusal.ORIGINS_TOTAL)
            return None
        o = _Origin(key=key, epoch=epoch, sponsor=relayer, win=SeqWindow(self.limits.window),
                    last_seen=now)
        self._origins[key] = o
        self.charges.add_origin(relayer, key)
        self._backfill(o, seq if head else seq - 1, now)
        return o

    def _evict_idle(self, peer: str, now: float) -> bool:
        """Evict `peer`'s least recently active origin if it has been idle `idle_evict` s."""
        key = self.charges.lru_origin(peer)
        o = self._origins.get(key) if key is not None else None
        if (o is not None and now - o.last_seen >= self.limits.idle_evict
                and o.sched is not _Sched.IN_FLIGHT):
            self._evict(o)
            return True
        return False

    def _evict_for(self, peer: str, now: float) -> bool:
        """The tracker is full: evict the least recently active origin of the peer charged
        with the most origins if that peer holds more than `peer` (so a Sybil crowd evicts its
        own state first), else an idle origin of `peer` itself."""
        top = self.charges.largest()
        if top is not None and top != peer and (len(self.charges.get(top).origins) >
                                                len(self.charges.get(peer).origins) + 1):
            self._evict(self._origins[self.charges.lru_origin(top)])
            return True
        return self._evict_idle(peer, now)

    def _evict(self, o: _Origin) -> None:
        o.win.reset(o.win.highest)
        self._recharge(o)
        del self._origins[o.key]
        self.charges.remove_origin(o.sponsor, o.key)
        o.gen += 1                            # its heap and parked entries are now stale

    def _sponsor(self, o: _Origin, relayer: str, now: float) -> None:
        """`relayer` brought `o` news: note it as a source, and move the charge for `o` to it
        when it has room for all of it (else the charge stays with the current sponsor)."""
        if relayer and (not o.sources or o.sources[0] != relayer):
            if relayer in o.sources:
                o.sources.remove(relayer)
            o.sources.insert(0, relayer)
            del o.sources[4:]
        flying = o.sched is _Sched.IN_FLIGHT
        if (relayer == o.sponsor or not relayer
                or not self.charges.can_take(relayer, o.charged, int(flying))):
            return
        prev, o.sponsor = o.sponsor, relayer
        self.charges.move(o.key, prev, relayer, o.charged, int(flying))
        if flying:
            self._inflight[o.ticket] = (o.key, relayer)
            self._unpark(prev, now)           # a pull slot of the old sponsor came free
        if o.sched is _Sched.PARKED:          # park it again, under its new sponsor
            o.sched = _Sched.IDLE
            self._schedule(o, -math.inf)

    # -- missing entries --------------------------------------------------------------------

    def _recharge(self, o: _Origin) -> None:
        """Charge the sponsor for what the window now holds missing."""
        n = o.win.count()
        if n != o.charged:
            self.charges.add_missing(o.sponsor, n - o.charged)
            o.charged = n

    def _gap(self, o: _Origin, hi: int, now: float, *, optional: bool = False) -> None:
        """Seqs from highest + 1 to `hi` (inside the window) are missing: track the newest
        ones the budgets allow, skip the others."""
        want = hi - o.win.highest
        if want <= 0:
            return
        topic = o.key[0]
        if now < o.quiet_until:
            o.win.extend(hi, 0, optional=optional)
            self._refuse(topic, o.sponsor, Refusal.ORIGIN_BACKOFF, skipped=want)
            return
        room_peer, room_total = self.charges.missing_room(o.sponsor)
        n = max(0, min(want, room_peer, room_total))
        if n < want:
            why = Refusal.MISSING_PER_PEER if room_peer <= room_total else Refusal.MISSING_TOTAL
            self._refuse(topic, o.sponsor, why, skipped=want - n)
        o.win.extend(hi, n, optional=optional)
        self._recharge(o)
        if n:
            self._schedule(o, now + self.limits.pull_delay)

    def _backfill(self, o: _Origin, top: int, now: float, *, floor: int = 0) -> None:
        """Start over at `top` and pull (best effort) up to `backfill` seqs up to it, none at
        or below `floor` (the highest seq already delivered in this epoch: a resync must not
        forget it was delivered, or a pull could deliver it twice)."""
        o.win.reset(max(floor, top - min(self.limits.backfill, top)))
        self._recharge(o)
        self._gap(o, top, now, optional=True)

    def _resync(self, o: _Origin, top: int, now: float) -> None:
        """A jump past the window: give up what is open, skip to `top`, back-fill before it."""
        self._lost(o, o.win.missing_seqs(required_only=True), "window")
        skipped = max(0, top - min(self.limits.backfill, top) - o.win.highest)
        self._refuse(o.key[0], o.sponsor, Refusal.WINDOW, skipped=skipped)
        self._backfill(o, top, now, floor=min(o.win.highest, top))

    def _drop(self, o: _Origin, now: float) -> None:
        """Pulls keep failing: free the missing entries and keep quiet for a while."""
        lost = o.win.missing_seqs()
        self._lost(o, lost, "unreachable")
        o.win.settle(lost)
        o.quiet_until = now + self.limits.drop_backoff * 2 ** min(o.drops, MAX_DROP_DOUBLINGS)
        o.drops += 1
        o.failures = 0
        self._refuse(o.key[0], o.sponsor, Refusal.PULL_FAILURES, skipped=len(lost))

    # -- pull scheduling --------------------------------------------------------------------

    def _schedule(self, o: _Origin, at: float) -> None:
        if o.sched in (_Sched.IN_FLIGHT, _Sched.PARKED):
            return                            # pull_done / _unpark reschedule it
        if o.sched is _Sched.SCHEDULED and o.due <= at:
            return
        o.gen += 1
        o.due = at
        o.sched = _Sched.SCHEDULED
        self._counter += 1
        heapq.heappush(self._heap, (at, self._counter, o.key, o.gen))
        if len(self._heap) > 2 * len(self._origins) + 64:    # drop stale entries
            self._heap = [(x.due, i, x.key, x.gen) for i, x in enumerate(self._origins.values())
                          if x.sched is _Sched.SCHEDULED]
            heapq.heapify(self._heap)

    def _issue_or_park(self, o: _Origin, out: list[PullRequest]) -> None:
        peer_room, total_room = self.charges.pull_room(o.sponsor)
        if not peer_room or not total_room:
            self._park(o, o.sponsor if not peer_room else "")
            self._refuse(o.key[0], o.sponsor,
                         Refusal.PULLS_PER_PEER if not peer_room else Refusal.PULLS_TOTAL)
            return
        self._counter += 1
        o.ticket = self._counter
        o.sched = _Sched.IN_FLIGHT
        self.charges.add_pull(o.sponsor, 1)
        self._inflight[o.ticket] = (o.key, o.sponsor)
        out.append(PullRequest(o.key[0], o.key[1], o.epoch, tuple(o.win.missing_seqs()),
                               tuple(o.sources), o.ticket))

    def _park(self, o: _Origin, queue_of: str) -> None:
        """Wait for a pull slot of `queue_of` ("" = any slot)."""
        o.gen += 1
        o.sched = _Sched.PARKED
        queue = self._parked.setdefault(queue_of, deque())
        queue.append((o.key, o.gen))
        if len(queue) > 2 * len(self._origins) + 16:      # drop stale entries
            keep = [(k, g) for k, g in queue if self._parked_live(k, g)]
            queue.clear()
            queue.extend(keep)

    def _parked_live(self, key: Key, gen: int) -> bool:
        o = self._origins.get(key)
        return o is not None and o.gen == gen and o.sched is _Sched.PARKED

    def _unpark(self, peer: str, now: float) -> None:
        """A pull slot of `peer` (and one in total) came free: reschedule the first live
        parked origin of `peer`'s queue and of the total queue."""
        for queue_of in (peer, ""):
            queue = self._parked.get(queue_of)
            while queue:
                key, gen = queue.popleft()
                if self._parked_live(key, gen):
                    o = self._origins[key]
                    o.sched = _Sched.IDLE
                    self._schedule(o, now)
                    break
            if queue is not None and not queue:
                del self._parked[queue_of]

    # -- events -----------------------------------------------------------------------------

    def _refuse(self, topic: str, peer: str, why: Refusal, skipped: int = 0) -> None:
        self._events.append(Refused(topic, peer, why, skipped))

    def _lost(self, o: _Origin, seqs: list[int], reason: str) -> None:
        if seqs:
            self._events.append(Lost(o.key[0], o.key[1], o.epoch, len(seqs),
                                     tuple(sorted(seqs)[:8]), reason))

    def check(self) -> None:
        """Assert every invariant of the module docstring (for tests; O(state))."""
        self.charges.check()
        heap = {(k, d, g) for d, _, k, g in self._heap}
        parked = set().union(*self._parked.values())
        sponsored: dict[str, set[Key]] = {}
        missing_of: dict[str, int] = {}
        for key, o in self._origins.items():
            o.win.check()
            assert o.key == key and o.charged == o.win.count()
            sponsored.setdefault(o.sponsor, set()).add(key)
            missing_of[o.sponsor] = missing_of.get(o.sponsor, 0) + o.charged
            assert o.sched is not _Sched.SCHEDULED or (key, o.due, o.gen) in heap
            assert o.sched is not _Sched.PARKED or (key, o.gen) in parked
            assert (o.sched is not _Sched.IN_FLIGHT
                    or self._inflight.get(o.ticket) == (key, o.sponsor))
        pulls_of: dict[str, int] = {}
        for _, peer in self._inflight.values():
            pulls_of[peer] = pulls_of.get(peer, 0) + 1
        for peer, a in self.charges.accounts.items():
            assert set(a.origins) == sponsored.get(peer, set()), peer
            assert a.missing == missing_of.get(peer, 0) and a.pulls == pulls_of.get(peer, 0)
        assert set(sponsored) | set(pulls_of) <= set(self.charges.accounts)
        assert len(self._heap) <= 2 * len(self._origins) + 64
