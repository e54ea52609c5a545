"""The contribution ledger: this device's harvest sessions, what they used, what they earned.

A *harvest session* is one stretch of work this device volunteered for one consumer: an FL
session it trains for, a market job, or work an operator started by hand. It starts
(`start`), its meters are updated while it runs (`meter`: the executor's `Usage`, meter.py:
CPU seconds, wall, suspended and throttled time, peak and integrated memory, WASM fuel) and it ends COMPLETED (the work was handed over) or ABANDONED
(cut short: stopped, failed, suspended past its deadline, the daemon went down). Sessions still
RUNNING when the ledger is loaded were cut short by a crash and are closed as ABANDONED.

*Credits* come only from receipts signed by the party that received the work (receipts.py):
validated or rejected, with the tokens they entitle the device to. An FL receipt is accepted
only for an FL session this device has a harvest session for (it did work there); a market
receipt must name this device and a job (agreement) it has a market harvest session for, and
is credited once per job (a second receipt for the same job, even newly signed, is a
duplicate). The ledger keeps each receipt once.

Totals and the reliability score (`Contribution`):
- completed / abandoned sessions, validated / rejected results, `consecutive_valid` (BOINC's
  count of valid results since the last invalid one, reset to 0 by a rejection);
- reliability = (completed + 1) / (completed + abandoned + 2) x (validated + 1) /
  (validated + rejected + 2): the product of the Laplace-smoothed completion and validation
  rates, in (0, 1); a new device starts at 0.25 and each kind of failure pulls it down.
- tokens earned (by receipt kind; FL from round receipts, market from customers' payments).

Everything is persisted through `ContributionStore` (contribution_store.py) and survives
restarts; kept credits are re-verified when loaded, so an edited data dir cannot add any.
The history is bounded: past `keep` finished sessions the oldest work items (a kind and ref:
its sessions and their credits) are folded into per-day totals (history.py), which the totals
and the reliability score include, so they do not change; `sessions()` and `credits()` list
what is kept.
Synchronous and clock-free: time comes in as `now`. Its synced writes are submitted to the
store's group commit (contribution_store.py): a change is in memory at once and durable at
the next `store.barrier()` (or `store.flush()`); the caller acknowledges nothing before that.
"""
from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any

from fognode.node.errors import LocalProtocolError, RemoteProtocolError
from fognode.node.wire import Fields
from fognode.protocols.harvest.contribution_store import ContributionStore
from fognode.protocols.harvest.history import DayTotals, day_of
from fognode.protocols.harvest.meter import Usage
from fognode.protocols.harvest.receipts import (FL_ROUND, KINDS, MARKET_JOB, Credit, Outcome,
                                                ReceiptRefused, RefuseReason, verify_evidence)

log = logging.getLogger("fognode.harvest")

SESSION_KINDS = ("fl", "market", "manual")
DEFAULT_KEEP = 1000          # finished sessions kept in full (config: history_sessions)
MAX_REF = 128
SESSION_ID_LEN = 16


class SessionState(enum.Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    ABANDONED = "abandoned"


@dataclass(frozen=True)
class HarvestSession:
    session_id: bytes
    kind: str                  # "fl", "market", "manual"
    ref: str                   # what it works for: FL session id, job id, operator's note
    started: float
    state: SessionState = SessionState.RUNNING
    ended: float | None = None
    reason: str = ""           # why it was abandoned
    usage: Usage = field(default_factory=lambda: Usage(jobs=0))
    validated: int = 0
    rejected: int = 0
    tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"session_id": self.session_id.hex(), "kind": self.kind, "ref": self.ref,
                "state": self.state.value, "started": self.started, "ended": self.ended,
                "reason": self.reason, "usage": usage_json(self.usage), "validated": self.validated,
                "rejected": self.rejected, "tokens": self.tokens}


def usage_json(u: Usage) -> dict[str, Any]:
    """A Usage as RPC shows it (seconds, bytes, MB-hours, fuel)."""
    return {"cpu_seconds": round(u.cpu_s, 3), "wall_seconds": round(u.wall_s, 3),
            "suspended_seconds": round(u.suspended_s, 3),
            "throttled_seconds": round(u.throttled_s, 3), "peak_memory_bytes": u.peak_rss_bytes,
            "memory_mb_hours": round(u.mem_mb_hours, 6), "fuel": u.fuel, "jobs": u.jobs}


def session_to_wire(s: HarvestSession) -> dict[str, Any]:
    return {"v": 1, "kind": s.kind, "ref": s.ref, "started": float(s.started),
            "state": s.state.value, "ended": None if s.ended is None else float(s.ended),
            "reason": s.reason, "usage": s.usage.to_dict()}


def session_from_wire(sid: bytes, raw: Any) -> HarvestSession:
    """A stored session record (RemoteProtocolError naming the field if it is damaged)."""
    f = Fields(raw, f"stored harvest session {sid.hex()}", versions={1})
    kind = f.str("kind", max_len=16)
    ref = f.str("ref", max_len=MAX_REF)
    started = f.float("started", lo=0.0)
    state = f.str("state", max_len=16)
    ended = f.float("ended", lo=0.0, optional=True)
    reason = f.str("reason", max_len=256)
    usage = Usage.from_dict(f.map("usage", max_len=16), f"stored harvest session {sid.hex()} usage")
    f.done()
    if kind not in SESSION_KINDS or state not in {s.value for s in SessionState}:
        f._fail(f"unknown kind {kind!r} or state {state!r}")
    return HarvestSession(sid, kind, ref, started, SessionState(state), ended, reason, usage)


@dataclass(frozen=True)
class Contribution:
    """One device's totals (`ContributionLedger.totals`)."""

    worker: str
    sessions: int
    running: int
    completed: int
    abandoned: int
    validated: int
    rejected: int
    consecutive_valid: int
    tokens: int
    tokens_by_kind: dict[str, int]
    cpu_seconds: float
    wall_seconds: float
    memory_mb_hours: float
    fuel: int
    reliability: float

    def to_json(self) -> dict[str, Any]:
        return {"worker": self.worker, "sessions": self.sessions, "running": self.running,
                "completed": self.completed, "abandoned": self.abandoned,
                "validated": self.validated, "rejected": self.rejected,
                "consecutive_valid": self.consecutive_valid, "tokens": self.tokens,
                "tokens_by_kind": dict(self.tokens_by_kind),
                "cpu_seconds": round(self.cpu_seconds, 3),
                "wall_seconds": round(self.wall_seconds, 3),
                "memory_mb_hours": round(self.memory_mb_hours, 6), "fuel": self.fuel,
                "reliability": round(self.reliability, 6)}


def reliability_of(completed: int, abandoned: int, validated: int, rejected: int) -> float:
    """The module docstring's score, in (0, 1)."""
    return (completed + 1) / (completed + abandoned + 2) * (validated + 1) / (validated + rejected + 2)


class ContributionLedger:
    """This device's (`worker`'s) sessions and credits over `store` (see the module docstring).

    Loading (the constructor) closes sessions a crash left RUNNING as ABANDONED at `now` and
    re-verifies every stored credit (one that no longer verifies is skipped with a WARNING),
    and writes what that changed before returning. Raises HarvestStorageFailed once a write
    failed (the store's group commit: see the module docstring)."""

    def __init__(self, store: ContributionStore, worker: str, now: float, *,
                 keep: int = DEFAULT_KEEP) -> None:
        if keep < 1:
            raise LocalProtocolError(f"the contribution ledger must keep at least 1 session, not {keep}")
        self.store = store
        self.worker = worker
        self.keep = keep
        self._days: dict[str, DayTotals] = {}
        self._seq_of: dict[bytes, int] = {}          # receipt id -> its record's sequence
        self._sessions: dict[bytes, HarvestSession] = {}   # written only through _put / _drop
        self._running = 0                                  # how many of them are RUNNING
        self._credits: dict[bytes, Credit] = {}      # receipt id -> credit, in arrival order
        self._by_ref: dict[tuple[str, str], bytes] = {}   # (kind, ref) -> latest session id
        self._seq = 0
        self._consecutive = 0
        self._load(now)

    # -- loading -----------------------------------------------------------------------------------

    def _load(self, now: float) -> None:
        for sid, raw in self.store.sessions():
            try:
                s = session_from_wire(sid, raw)
            except RemoteProtocolError as e:
                log.warning("harvest: skipping a damaged session record: %s", e)
                continue
            if s.state is SessionState.RUNNING:
                s = replace(s, state=SessionState.ABANDONED, ended=float(now),
                            reason="the daemon stopped without closing it")
                self.store.put_session(sid, session_to_wire(s), sync=True)
            self._put(sid, s)
        for s in sorted(self._sessions.values(), key=lambda s: s.started):
            self._by_ref[(s.kind, s.ref)] = s.session_id
        for day, raw in self.store.days():
            try:
                self._days[day] = DayTotals.from_wire(raw, f"stored day {day}")
            except RemoteProtocolError as e:
                log.warning("harvest: skipping a damaged day of folded history: %s", e)
        for seq, raw in self.store.credits():
            self._seq = max(self._seq, seq)
            try:
                f = Fields(raw, f"stored credit {seq}")
                kind, data = f.str("kind", max_len=32), f.bytes("evidence", max_len=1 << 20)
                f.float("received")
                f.done()
                c = verify_evidence(kind, data, self.worker)
            except RemoteProtocolError as e:   # ReceiptRefused is one too
                log.warning("harvest: stored credit %d no longer verifies, skipped: %s", seq, e)
                continue
            if c.receipt_id not in self._credits:
                self._seq_of[c.receipt_id] = seq
                self._count(c)
        streak = self.store.streak()
        if self._days and streak is not None:     # folded credits count in the streak too
            self._consecutive = min(streak, self._folded("validated") + sum(
                1 for c in self._credits.values() if c.outcome is Outcome.VALIDATED))
        self.prune()
        self.store.flush()

    def _folded(self, what: str) -> int:
        return sum(getattr(d, what) for d in self._days.values())
    def _count(self, c: Credit) -> None:
        self._credits[c.receipt_id] = c
        self._consecutive = self._consecutive + 1 if c.outcome is Outcome.VALIDATED else 0
        sid = self._by_ref.get(("fl" if c.kind == FL_ROUND else "market", c.ref))
        s = self._sessions.get(sid) if sid is not None else None
        if s is not None:
            ok = c.outcome is Outcome.VALIDATED
            self._put(s.session_id, replace(s, validated=s.validated + ok, rejected=s.rejected + (not ok),
                                            tokens=s.tokens + c.tokens))

    # -- sessions ------------------------------------------------------------------------------------

    def start(self, kind: str, ref: str, now: float) -> HarvestSession:
        """A new RUNNING session of `kind` for `ref` (LocalProtocolError for a bad kind/ref)."""
        if kind not in SESSION_KINDS:
            raise LocalProtocolError(f"harvest session kind must be one of {SESSION_KINDS}, got {kind!r}")
        if len(ref) > MAX_REF:
            raise LocalProtocolError(f"harvest session ref is over {MAX_REF} characters")
        s = HarvestSession(os.urandom(SESSION_ID_LEN), kind, ref, float(now))
        self.store.put_session(s.session_id, session_to_wire(s), sync=True)
        self._put(s.session_id, s)
        self._by_ref[(kind, ref)] = s.session_id
        return s

    def get(self, session_id: bytes) -> HarvestSession | None:
        return self._sessions.get(session_id)

    def running(self, kind: str | None = None, ref: str | None = None) -> list[HarvestSession]:
        return [s for s in self._sessions.values() if s.state is SessionState.RUNNING
                and (kind is None or s.kind == kind) and (ref is None or s.ref == ref)]

    def running_count(self) -> int:
        """`len(running())` in O(1): kept by `_put` / `_drop`, the only writers of the sessions."""
        return self._running

    def _put(self, sid: bytes, s: HarvestSession) -> None:
        old = self._sessions.get(sid)
        self._running += (s.state is SessionState.RUNNING) - (old is not None and old.state is SessionState.RUNNING)
        self._sessions[sid] = s

    def _drop(self, sid: bytes) -> None:
        self._running -= self._sessions.pop(sid).state is SessionState.RUNNING

    def meter(self, session_id: bytes, usage: Usage) -> None:
        """The running session's usage so far (written without sync; ignored once ended)."""
        s = self._sessions.get(session_id)
        if s is None or s.state is not SessionState.RUNNING or s.usage == usage:
            return
        s = replace(s, usage=usage)
        self._put(session_id, s)
        self.store.put_session(session_id, session_to_wire(s), sync=False)

    def stop(self, session_id: bytes, state: SessionState, now: float, reason: str = "",
             usage: Usage | None = None) -> HarvestSession:
        """End a running session COMPLETED or ABANDONED (with `reason`); returns it.
        LookupError if unknown; a session that already ended is returned unchanged."""
        s = self._sessions.get(session_id)
        if s is None:
            raise LookupError(session_id.hex())
        if s.state is not SessionState.RUNNING:
            return s
        if state is SessionState.RUNNING:
            raise LocalProtocolError("a session ends completed or abandoned")
        s = replace(s, state=state, ended=float(now), reason=reason[:256],
                    usage=usage if usage is not None else s.usage)
        self.store.put_session(session_id, session_to_wire(s), sync=True)
        self._put(session_id, s)
        self.prune()
        return s

    # -- bounded history ------------------------------------------------------------------------------

    def prune(self) -> int:
        """Fold the oldest finished work items (history.py) until at most `keep` finished
        sessions are kept in full (an item with a running session is never folded); returns
        how many sessions were folded. One group-committed batch (HarvestStorageFailed once a write failed)."""
        finished = [s for s in self._sessions.values() if s.state is not SessionState.RUNNING]
        excess = len(finished) - self.keep
        if excess <= 0:
            return 0
        busy = {(s.kind, s.ref) for s in self._sessions.values() if s.state is SessionState.RUNNING}
        items: dict[tuple[str, str], list[HarvestSession]] = {}
        for s in finished:
            items.setdefault((s.kind, s.ref), []).append(s)
        fold: list[tuple[str, str]] = []
        n = 0
        for s in sorted(finished, key=lambda s: (s.ended or s.started, s.started, s.session_id)):
            item = (s.kind, s.ref)
            if n >= excess:
                break
            if item in busy or item in fold:
                continue
            fold.append(item)
            n += len(items[item])
        if not fold:
            return 0
        days = dict(self._days)
        gone_sessions: list[bytes] = []
        for item in fold:
            for s in items[item]:
                d = day_of(s.started)
                u = s.usage
                days[d] = days.get(d, DayTotals()).add_session(
                    s.state is SessionState.COMPLETED, u.cpu_s, u.wall_s, u.mem_byte_s, u.fuel)
                gone_sessions.append(s.session_id)
        first = {item: min(s.started for s in items[item]) for item in fold}
        gone_credits: list[bytes] = []
        for c in self._credits.values():
            item = ("fl" if c.kind == FL_ROUND else "market", c.ref)
            if item in first:
                d = day_of(first[item])
                days[d] = days.get(d, DayTotals()).add_credit(
                    c.kind, c.outcome is Outcome.VALIDATED, c.tokens)
                gone_credits.append(c.receipt_id)
        changed = {d: t.to_wire() for d, t in days.items() if self._days.get(d) != t}
        self.store.fold(changed, gone_sessions,
                        [self._seq_of[r] for r in gone_credits if r in self._seq_of])
        self._days = days
        for sid in gone_sessions:
            self._drop(sid)
        for r in gone_credits:
            del self._credits[r]
            self._seq_of.pop(r, None)
        for item in fold:
            self._by_ref.pop(item, None)
        return len(gone_sessions)

    def days(self) -> dict[str, DayTotals]:
        """The folded history: per-day totals of the work no longer kept one by one."""
        return dict(self._days)

    def sessions(self, *, limit: int = 100, state: SessionState | None = None,
                 kind: str | None = None) -> list[HarvestSession]:
        """The newest `limit` sessions (optionally of one state/kind), newest first."""
        out = [s for s in self._sessions.values()
               if (state is None or s.state is state) and (kind is None or s.kind == kind)]
        out.sort(key=lambda s: (s.started, s.session_id), reverse=True)
        return out[:max(0, limit)]

    # -- credits -------------------------------------------------------------------------------------

    def credit(self, kind: str, data: bytes, now: float, *, peer: str | None = None) -> Credit:
        """Verify and keep a receipt (receipts.py) for this device; returns its credit.

        ReceiptRefused: malformed, forged, self-issued, for another worker, already held, or
        (FL) for a session this device did no work for."""
        c = verify_evidence(kind, data, self.worker, peer=peer)
        if c.receipt_id in self._credits:
            raise ReceiptRefused(RefuseReason.DUPLICATE, "this receipt is already credited",
                                 peer=peer)
        if c.kind == FL_ROUND and ("fl", c.ref) not in self._by_ref:
            raise ReceiptRefused(RefuseReason.FOREIGN, f"this device did no work for FL session "
                                                       f"{c.ref[:16]}", peer=peer)
        if c.kind == MARKET_JOB:
            if ("market", c.ref) not in self._by_ref:
                raise ReceiptRefused(RefuseReason.FOREIGN, f"this device ran no market job "
                                                           f"{c.ref[:16]}", peer=peer)
            if any(o.kind == MARKET_JOB and o.ref == c.ref for o in self._credits.values()):
                raise ReceiptRefused(RefuseReason.DUPLICATE, f"market job {c.ref[:16]} is "
                                                             "already credited", peer=peer)
        self._seq += 1
        streak = self._consecutive + 1 if c.outcome is Outcome.VALIDATED else 0
        self.store.put_credit(self._seq, {"kind": kind, "evidence": data, "received": float(now)},
                              streak)
        self._seq_of[c.receipt_id] = self._seq
        self._count(c)
        return c

    def credits(self, *, limit: int = 100) -> list[Credit]:
        """The newest `limit` credits, newest first."""
        return list(self._credits.values())[::-1][:max(0, limit)]

    # -- totals --------------------------------------------------------------------------------------

    def totals(self) -> Contribution:
        """Kept sessions and credits plus the folded days."""
        ss = self._sessions.values()
        dd = self._days.values()
        completed = sum(1 for s in ss if s.state is SessionState.COMPLETED) + self._folded("completed")
        abandoned = sum(1 for s in ss if s.state is SessionState.ABANDONED) + self._folded("abandoned")
        validated = sum(1 for c in self._credits.values() if c.outcome is Outcome.VALIDATED) \
            + self._folded("validated")
        rejected = sum(1 for c in self._credits.values() if c.outcome is Outcome.REJECTED) \
            + self._folded("rejected")
        by_kind = {k: sum(c.tokens for c in self._credits.values() if c.kind == k)
                   + sum(d.tokens.get(k, 0) for d in dd) for k in KINDS}
        return Contribution(
            worker=self.worker, sessions=len(self._sessions) + sum(d.sessions for d in dd),
            running=sum(1 for s in ss if s.state is SessionState.RUNNING),
            completed=completed, abandoned=abandoned, validated=validated, rejected=rejected,
            consecutive_valid=self._consecutive, tokens=sum(by_kind.values()),
            tokens_by_kind=by_kind,
            cpu_seconds=sum(s.usage.cpu_s for s in ss) + sum(d.cpu_s for d in dd),
            wall_seconds=sum(s.usage.wall_s for s in ss) + sum(d.wall_s for d in dd),
            memory_mb_hours=sum(s.usage.mem_mb_hours for s in ss)
            + sum(d.mem_byte_s for d in dd) / 1e6 / 3600.0,
            fuel=sum(s.usage.fuel for s in ss) + sum(d.fuel for d in dd),
            reliability=reliability_of(completed, abandoned, validated, rejected))

    def close(self) -> None:
        self.store.close()
