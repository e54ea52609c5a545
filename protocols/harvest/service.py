"""The harvest role's engine, shared by its loop (protocol.py), its RPC methods (rpc.py) and
the typed facade other roles use (api.py): the policy's latest decision, harvest sessions and
their meters, receipts, the work this device runs (executor jobs and adopted workers), and the
state it announces in its device record.

Time: wall-clock seconds (`clock`, the node's) stamp sessions and receipts; the executor, the
adopted workers' meters and the policy's dwell run on trio's monotonic clock. Methods never
block except `adopt` (a /proc read in a worker thread), `run_job` and `run_wasm` (the job).
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Mapping

import trio

from fognode.node.events import EventBus
from fognode.protocols.harvest.contribution import (Contribution, ContributionLedger,
                                                    HarvestSession, SessionState)
from fognode.protocols.harvest.events import (HarvestContribution, HarvestCredited,
                                              HarvestSessionStarted)
from fognode.protocols.harvest.executor import Executor, JobResult, JobSpec
from fognode.protocols.harvest.meter import Usage
from fognode.protocols.harvest.metrics import HarvestMetrics
from fognode.protocols.harvest.policy import HarvestPolicy, apply_changes
from fognode.protocols.harvest.policy_core import Decision, HarvestState, PolicyCore
from fognode.protocols.harvest.procstat import sample_tree
from fognode.protocols.harvest.receipts import Credit, ReceiptRefused
from fognode.protocols.harvest.sensors import Readings
from fognode.protocols.harvest.wasm import WasmJob, WasmResult, run_wasm
from fognode.protocols.harvest.workers import AdoptedWorkers, PidOf
from fognode.protocols.registry.record import HarvestInfo

log = logging.getLogger("fognode.harvest")

MAX_REASON = 64     # the record's limit on the announced reason


@dataclass(frozen=True)
class ContributionReport:
    """What `stop_session` returns: the session as it ended and the device's totals."""

    session: HarvestSession
    totals: Contribution

    def to_json(self) -> dict[str, Any]:
        return {"session": self.session.to_json(), "totals": self.totals.to_json()}


def announced(decision: Decision | None, readings: Readings | None) -> HarvestInfo | None:
    """The harvest state a device record carries for `decision` (None before the first one):
    running -> available with the allowance's cores and the smaller of its memory budget and
    the memory available now; suspended -> the reasons (comma-separated, cut to 64 chars)."""
    if decision is None:
        return None
    if decision.state is HarvestState.SUSPENDED:
        why = ",".join(r.value for r in decision.reasons) or "suspended"
        return HarvestInfo(False, why[:MAX_REASON], 0, 0)
    mem = decision.allowance.memory_bytes
    avail = readings.memory_available_bytes if readings is not None else None
    free = min(x for x in (mem, avail) if x is not None) if (mem, avail) != (None, None) else 0
    return HarvestInfo(True, "", max(0, decision.allowance.cores), max(0, int(free)))


class HarvestService:
    """See the module docstring. Built by the role; one per running role instance."""

    def __init__(self, *, peer_id: str, ledger: ContributionLedger, executor: Executor,
                 workers: AdoptedWorkers, core: PolicyCore, metrics: HarvestMetrics,
                 events: EventBus, clock: Callable[[], float], base_policy: HarvestPolicy,
                 overrides: Mapping[str, Any],
                 save_overrides: Callable[[dict[str, Any]], None]) -> None:
        self.peer_id = peer_id
        self.ledger = ledger
        self.executor = executor
        self.workers = workers
        self.core = core
        self.metrics = metrics
        self.events = events
        self.clock = clock
        self.base_policy = base_policy
        self.overrides: dict[str, Any] = dict(overrides)
        self._save_overrides = save_overrides
        self.decision: Decision | None = None
        self.readings: Readings | None = None
        self._done: dict[bytes, Usage] = {}     # finished work of each running session

    # -- state ----------------------------------------------------------------------------

    def info(self) -> HarvestInfo | None:
        """What this device's record announces now (None before the first decision)."""
        return announced(self.decision, self.readings)

    def suspension(self) -> str | None:
        """Why work may not run now ("on_battery,too_hot"...), or None when it may (or
        before the policy's first decision)."""
        info = self.info()
        return None if info is None or info.available else info.reason

    # -- policy -----------------------------------------------------------------------------

    @property
    def policy(self) -> HarvestPolicy:
        return self.core.policy

    def set_policy(self, changes: Mapping[str, Any]) -> HarvestPolicy:
        """Apply `harvest.set_policy`'s partial update (a null value drops the override back
        to node.toml's value), persist the overrides, then use the new policy from the next
        tick. PolicyError naming the knob, PolicyStoreError when it cannot be saved; either
        way the policy in force is unchanged."""
        policy, overrides = apply_changes(self.base_policy, self.overrides, changes)
        self._save_overrides(overrides)
        self.overrides = overrides
        self.core.set_policy(policy)
        return policy

    # -- sessions ------------------------------------------------------------------------------

    def start_session(self, kind: str, ref: str) -> HarvestSession:
        """A new RUNNING harvest session (LocalProtocolError for a bad kind or ref)."""
        s = self.ledger.start(kind, ref, self.clock())
        self._done[s.session_id] = s.usage
        self.events.publish(HarvestSessionStarted(s.session_id.hex(), kind, ref))
        return s

    def running_session(self, kind: str, ref: str) -> HarvestSession:
        """The running session of `kind` for `ref`, started if there is none."""
        got = self.ledger.running(kind, ref)
        return got[-1] if got else self.start_session(kind, ref)

    def live_usage(self, session_id: bytes) -> Usage:
        """A session's finished work plus its adopted workers' work so far."""
        s = self.ledger.get(session_id)
        if s is None:
            return Usage(jobs=0)
        total = self._done.get(session_id, s.usage)
        now = trio.current_time()
        for a in self.workers.all():
            if a.session_id == session_id:
                total = total + a.meter.usage(now)
        return total

    def stop_session(self, session_id: bytes, *, completed: bool, reason: str = "") -> ContributionReport:
        """End a session COMPLETED (or ABANDONED with `reason`); emits HarvestContribution.
        LookupError if unknown; a session that already ended is reported as it ended."""
        s = self.ledger.get(session_id)
        if s is None:
            raise LookupError(session_id.hex())
        if s.state is SessionState.RUNNING:
            usage = self.live_usage(session_id)
            state = SessionState.COMPLETED if completed else SessionState.ABANDONED
            s = self.ledger.stop(session_id, state, self.clock(), "" if completed else reason, usage)
            self._done.pop(session_id, None)
            self.metrics.sessions.labels(s.kind, s.state.value).inc()
            u = s.usage
            self.events.publish(HarvestContribution(
                s.session_id.hex(), s.kind, s.ref, s.state.value, s.reason, u.cpu_s, u.wall_s,
                u.mem_mb_hours, u.fuel, s.validated, s.rejected, s.tokens))
        return ContributionReport(s, self.ledger.totals())

    def _add_usage(self, session_id: bytes, usage: Usage) -> None:
        s = self.ledger.get(session_id)
        self.metrics.cpu_seconds.inc(usage.cpu_s)
        self.metrics.fuel.inc(usage.fuel)
        if s is None or s.state is not SessionState.RUNNING:
            return
        self._done[session_id] = self._done.get(session_id, s.usage) + usage
        self.ledger.meter(session_id, self._done[session_id])

    def checkpoint(self) -> None:
        """Write every running session's usage so far (each tick; unsynced writes)."""
        for s in self.ledger.running():
            self.ledger.meter(s.session_id, self.live_usage(s.session_id))

    # -- receipts ------------------------------------------------------------------------------

    def credit(self, kind: str, data: bytes, *, peer: str | None = None) -> Credit:
        """Credit a receipt signed by the receiver of this device's work (contribution.py
        `credit`); ReceiptRefused says why not (counted by reason)."""
        try:
            c = self.ledger.credit(kind, data, self.clock(), peer=peer)
        except ReceiptRefused as e:
            self.metrics.refused.labels(e.reason.value).inc()
            raise
        self.metrics.credits.labels(c.kind, c.outcome.value).inc()
        self.metrics.tokens.inc(c.tokens)
        self.events.publish(HarvestCredited(c.kind, c.receipt_id.hex(), c.issuer, c.ref,
                                            c.outcome.value, c.tokens))
        return c

    # -- work -------------------------------------------------------------------------------------

    @asynccontextmanager
    async def adopt(self, kind: str, ref: str, name: str, pid_of: PidOf) -> AsyncIterator[HarvestSession]:
        """Lend another role's process to the running harvest session of (`kind`, `ref`)
        (started if none) for the body of the `async with`: it is stopped while work is
        suspended, continued when handed back, and metered into the session."""
        s = self.running_session(kind, ref)
        a = self.workers.adopt(s.session_id, name, pid_of, trio.current_time())
        await self.sample(a.handle)
        try:
            yield s
        finally:
            with trio.CancelScope(shield=True):
                await self.sample(a.handle)
                got = self.workers.release(a.handle, trio.current_time())
            if got is not None:
                self._add_usage(*got)

    async def sample(self, handle: int | None = None) -> None:
        """Read the adopted workers' processes (one, or all) in a worker thread."""
        for h, pid in self.workers.live_pids():
            if handle is not None and h != handle:
                continue
            try:
                s, _ = await trio.to_thread.run_sync(sample_tree, pid)
            except (OSError, ValueError) as e:    # psutil errors are OSErrors
                log.debug("harvest: cannot sample worker pid %d: %s", pid, e)
                continue
            self.workers.record(h, pid, s, trio.current_time())

    async def run_job(self, session_id: bytes, spec: JobSpec) -> JobResult:
        """Run `spec` under the executor (niced, limited, stopped while suspended) and meter
        it into harvest session `session_id` (LookupError if not running)."""
        self._running(session_id)
        result = await self.executor.run(spec)
        self._add_usage(session_id, result.usage)
        return result

    async def run_wasm(self, session_id: bytes, job: WasmJob) -> WasmResult:
        """Run a WASM job (wasm.py: fuel-metered, deterministic) metered into the session."""
        self._running(session_id)
        result = await run_wasm(self.executor, job)
        self._add_usage(session_id, result.usage)
        return result

    def _running(self, session_id: bytes) -> HarvestSession:
        s = self.ledger.get(session_id)
        if s is None or s.state is not SessionState.RUNNING:
            raise LookupError(f"no running harvest session {session_id.hex()}")
        return s

    def current_work(self) -> list[dict[str, Any]]:
        """What runs now: executor jobs and adopted workers."""
        out: list[dict[str, Any]] = []
        for j in self.executor.status():
            out.append({"kind": "job", "id": j.job_id, "name": j.name, "pid": j.pid,
                        "stopped": j.stopped.value, "cpu_seconds": round(j.usage.cpu_s, 3),
                        "memory_limit": j.memory_limit})
        now = trio.current_time()
        for a in self.workers.all():
            u = a.meter.usage(now)
            out.append({"kind": "adopted", "id": a.handle, "name": a.name, "pid": a.pid_of(),
                        "session_id": a.session_id.hex(), "stopped": bool(a.stopped),
                        "cpu_seconds": round(u.cpu_s, 3)})
        return out

    def close(self, reason: str) -> None:
        """The role stops: hand adopted workers back (continued), abandon running sessions."""
        for sid, usage in self.workers.release_all(trio.current_time()):
            self._add_usage(sid, usage)
        for s in self.ledger.running():
            self.stop_session(s.session_id, completed=False, reason=reason)
        self.ledger.close()

