"""The harvest role's engine, shared by its loop (protocol.py), its RPC methods (rpc.py) and
the typed facade other roles use (api.py): the policy's latest decision, harvest sessions and
their meters, receipts, the work this device runs (executor jobs and adopted workers), and the
state it announces in its device record.

Work another role owns (FL's task process) is *adopted* for a while (`adopt`): the executor
watches it (`Executor.watch`: stopped with SIGSTOP while work is suspended, continued when
handed back, killed over its memory limit, metered from the moment it is adopted) and its usage
goes to the harvest session. Executor jobs (`run_job`, `run_wasm`, and the persistent WASM runner
of `wasm_worker`: market work) go to the session named by the caller, at the nice of that
session's kind (`[protocols.harvest] market_nice` / `manual_nice`).

Time: wall-clock seconds (`clock`, the node's) stamp sessions and receipts; the executor and
the policy's dwell run on trio's monotonic clock. Methods never block except `adopt`, `run_job`
and `run_wasm` (the job). `adopt` awaits only a session it has to open: the watch begins
synchronously (`Executor.begin_watch`), so the body runs in the step that enters it, and
leaving it awaits the watcher's end. Starting or ending a session and crediting a receipt
(`open_session`, `end_session`, `record_credit`) are acknowledged (returned, counted,
published) only once durable: they wait off the event loop for the store's group commit. The
policy file is written on the event loop (a few hundred bytes, only on operator requests).
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable, Mapping

import trio

from fognode.node.events import EventBus
from fognode.protocols.harvest.contribution import (Contribution, ContributionLedger,
                                                    HarvestSession, SessionState)
from fognode.protocols.harvest.events import (HarvestContribution, HarvestCredited,
                                              HarvestSessionStarted)
from fognode.protocols.harvest.exec_errors import ExecutorError
from fognode.protocols.harvest.executor import Executor
from fognode.protocols.harvest.jobs import JobResult, JobSpec, Watch
from fognode.protocols.harvest.meter import Usage
from fognode.protocols.harvest.metrics import HarvestMetrics
from fognode.protocols.harvest.policy import HarvestPolicy
from fognode.protocols.harvest.policy_core import Decision, HarvestState, PolicyCore
from fognode.protocols.harvest.policy_store import PolicyStore, StoredPolicy
from fognode.protocols.harvest.receipts import Credit, ReceiptRefused, RefuseReason
from fognode.protocols.harvest.sensors import Readings
from fognode.protocols.harvest.wasm import WasmJob, WasmResult, run_wasm
from fognode.protocols.harvest.wasm_worker import WasmWorker, open_wasm_worker
from fognode.protocols.registry.record import HarvestInfo

log = logging.getLogger("fognode.harvest")

MAX_REASON = 64     # the record's limit on the announced reason

PidOf = Callable[[], "int | None"]


@dataclass(frozen=True)
class ContributionReport:
    """What `end_session` returns: the session as it ended and the device's totals."""

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
                 core: PolicyCore, metrics: HarvestMetrics, events: EventBus,
                 clock: Callable[[], float], base_policy: HarvestPolicy, store: PolicyStore,
                 stored: StoredPolicy, nice: Mapping[str, int] | None = None) -> None:
        """`core` runs the policy node.toml's `base_policy` with the operator's `stored`
        overrides (and pause) from `store` already applied; `nice`: executor jobs' nice by
        session kind (a kind not named: the executor's)."""
        self.peer_id = peer_id
        self.ledger = ledger
        self.executor = executor
        self.core = core
        self.metrics = metrics
        self.events = events
        self.clock = clock
        self.base_policy = base_policy
        self.store = store
        self.stored = stored
        if stored.paused:
            core.pause()
        self.decision: Decision | None = None
        self.readings: Readings | None = None
        self._done: dict[bytes, Usage] = {}        # finished work of each running session
        self._watched: dict[str, bytes] = {}       # adopted process's job name -> its session
        self._served: dict[str, bytes] = {}        # WASM runner child's job name -> its session
        self._watch_no = 0
        self._worker_no = 0
        self.nice = dict(nice or {})

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

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self.stored.overrides)

    def set_policy(self, changes: Mapping[str, Any]) -> HarvestPolicy:
        """Apply `harvest.set_policy`'s partial update (a null value drops the override back
        to node.toml's value), persist the overrides, then use the new policy from the next
        decision. PolicyError naming the knob, PolicyStoreError when it cannot be saved;
        either way the policy in force is unchanged."""
        policy, self.stored = self.store.update(self.base_policy, self.stored, changes)
        self.core.set_policy(policy)
        return policy

    def set_paused(self, paused: bool) -> None:
        """The operator's pause (kept across restarts); PolicyStoreError if it cannot be
        saved (then nothing changed)."""
        self.stored = self.store.set_paused(self.stored, paused)
        if paused:
            self.core.pause()
        else:
            self.core.resume()

    # -- sessions ------------------------------------------------------------------------------

    async def open_session(self, kind: str, ref: str) -> HarvestSession:
        """A new RUNNING harvest session (LocalProtocolError for a bad kind or ref), once it is
        durable (waiting off the event loop for the store's group commit)."""
        s = self.ledger.start(kind, ref, self.clock())
        await self.ledger.store.barrier()
        return self._started(s)

    def _started(self, s: HarvestSession) -> HarvestSession:
        self._done.setdefault(s.session_id, s.usage)
        self.events.publish(HarvestSessionStarted(s.session_id.hex(), s.kind, s.ref))
        return s

    async def running_or_open(self, kind: str, ref: str) -> HarvestSession:
        """The running session of `kind` for `ref`, opened (`open_session`) if there is none."""
        got = self.ledger.running(kind, ref)
        return got[-1] if got else await self.open_session(kind, ref)

    def live_usage(self, session_id: bytes) -> Usage:
        """A session's finished work plus its adopted workers' work so far."""
        s = self.ledger.get(session_id)
        if s is None:
            return Usage(jobs=0)
        total = self._done.get(session_id, s.usage)
        for j in self.executor.status():
            if (self._watched.get(j.name) or self._served.get(j.name)) == session_id:
                total = total + j.usage
        return total

    async def end_session(self, session_id: bytes, *, completed: bool, reason: str = "") -> ContributionReport:
        """End a session COMPLETED (or ABANDONED with `reason`) once the end is durable (off
        the event loop); emits HarvestContribution. LookupError if unknown; a session that
        already ended is reported as it ended."""
        s, ended = self._stop(session_id, completed, reason)
        await self.ledger.store.barrier()
        return self._stopped(s, ended)

    def _stop(self, session_id: bytes, completed: bool, reason: str) -> tuple[HarvestSession, bool]:
        s = self.ledger.get(session_id)
        if s is None:
            raise LookupError(session_id.hex())
        if s.state is not SessionState.RUNNING:
            return s, False
        usage = self.live_usage(session_id)
        state = SessionState.COMPLETED if completed else SessionState.ABANDONED
        s = self.ledger.stop(session_id, state, self.clock(), "" if completed else reason, usage)
        self._done.pop(session_id, None)
        return s, True

    def _stopped(self, s: HarvestSession, ended: bool) -> ContributionReport:
        if ended:
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

    async def record_credit(self, kind: str, data: bytes, *, peer: str | None = None) -> Credit:
        """Credit a receipt signed by the receiver of this device's work (contribution.py
        `credit`) once it is durable, waiting off the event loop (several credits submitted
        meanwhile share one fsync); ReceiptRefused says why not (counted by reason; "already
        credited" only once that credit is durable)."""
        try:
            c = self._credit(kind, data, peer)
        except ReceiptRefused as e:
            if e.reason is RefuseReason.DUPLICATE:
                await self.ledger.store.barrier()
            raise
        await self.ledger.store.barrier()
        return self._credited(c)

    def _credit(self, kind: str, data: bytes, peer: str | None) -> Credit:
        try:
            return self.ledger.credit(kind, data, self.clock(), peer=peer)
        except ReceiptRefused as e:
            self.metrics.refused.labels(e.reason.value).inc()
            raise

    def _credited(self, c: Credit) -> Credit:
        self.metrics.credits.labels(c.kind, c.outcome.value).inc()
        self.metrics.tokens.inc(c.tokens)
        self.events.publish(HarvestCredited(c.kind, c.receipt_id.hex(), c.issuer, c.ref,
                                            c.outcome.value, c.tokens))
        return c

    # -- work -------------------------------------------------------------------------------------

    @asynccontextmanager
    async def adopt(self, kind: str, ref: str, name: str, pid_of: PidOf) -> AsyncIterator[HarvestSession]:
        """Lend another role's process (`pid_of()`, e.g. FL's task process) to the running
        harvest session of (`kind`, `ref`) (started if none) for the body of the `async with`:
        the executor watches it (see the module docstring) until the body ends, then releases
        it running; its usage goes to the session. Without a process (None) the body runs
        unwatched. With a running session the body starts in the step that enters (the watch's
        first reading taken, the process stopped if work is suspended); leaving awaits the
        watcher's end (one more step)."""
        s = await self.running_or_open(kind, ref)
        pid = pid_of()
        self._watch_no += 1
        label = f"{name} #{self._watch_no}"
        async with trio.open_nursery() as nursery:
            if pid is not None:
                try:     # synchronous: the body starts in this scheduler step, already watched
                    watch = self.executor.begin_watch(pid, name=label)
                except ExecutorError as e:     # it exited in between: nothing to watch
                    log.debug("harvest: %s not watched: %s", label, e)
                else:
                    self._watched[label] = s.session_id
                    nursery.start_soon(self._follow, watch, label, s.session_id)
            try:
                yield s
            finally:
                if label in self._watched:      # still watched: take its usage, release it
                    usage = self.executor.usage_now(label)
                    del self._watched[label]
                    nursery.cancel_scope.cancel()
                    if usage is not None:
                        self._add_usage(s.session_id, usage)

    async def _follow(self, watch: Watch, label: str, session_id: bytes) -> None:
        try:
            result = await self.executor.follow(watch)
        except BaseException:
            self._watched.pop(label, None)
            raise
        if self._watched.pop(label, None) is not None:   # it exited (or was killed) while lent
            self._add_usage(session_id, result.usage)
            if result.reason != "exited":
                log.warning("harvest: %s ended: %s", label, result.reason)

    async def run_job(self, session_id: bytes, spec: JobSpec) -> JobResult:
        """Run `spec` under the executor (niced, limited, stopped while suspended) and meter
        it into harvest session `session_id` (LookupError if not running)."""
        s = self._running(session_id)
        if spec.nice is None:
            spec = replace(spec, nice=self.nice.get(s.kind))
        result = await self.executor.run(spec)
        self._add_usage(session_id, result.usage)
        return result

    async def run_wasm(self, session_id: bytes, job: WasmJob) -> WasmResult:
        """Run a WASM job (wasm.py: fuel-metered, deterministic) metered into the session."""
        s = self._running(session_id)
        result = await run_wasm(self.executor, job, nice=self.nice.get(s.kind))
        self._add_usage(session_id, result.usage)
        return result

    @asynccontextmanager
    async def wasm_worker(self, session_id: bytes, name: str) -> AsyncIterator[WasmWorker]:
        """A persistent WASM runner (wasm_worker.py) for the body of the `async with`, at the
        nice of the session's kind: its child processes are executor jobs (suspended, limited,
        killed over memory with all work) and what they use, fuel included, goes to harvest
        session `session_id` (LookupError if not running), live and when each child ends."""
        s = self._running(session_id)
        self._worker_no += 1
        base = f"{name} ({self._worker_no})"

        def started(label: str) -> None:
            self._served[label] = session_id

        def ended(label: str, usage: Usage) -> None:
            if self._served.pop(label, None) is not None:
                self._add_usage(session_id, usage)

        async with open_wasm_worker(self.executor, name=base, nice=self.nice.get(s.kind),
                                    on_start=started, on_end=ended) as worker:
            yield worker

    def _running(self, session_id: bytes) -> HarvestSession:
        s = self.ledger.get(session_id)
        if s is None or s.state is not SessionState.RUNNING:
            raise LookupError(f"no running harvest session {session_id.hex()}")
        return s

    def current_work(self) -> list[dict[str, Any]]:
        """What runs now: executor jobs and adopted processes, with the session they work for."""
        out: list[dict[str, Any]] = []
        for j in self.executor.status():
            sid = self._watched.get(j.name) or self._served.get(j.name)
            out.append({"id": j.job_id, "name": j.name, "pid": j.pid,
                        "adopted": j.name in self._watched, "session_id": sid.hex() if sid else None,
                        "stopped": j.stopped.value, "cpu_seconds": round(j.usage.cpu_s, 3),
                        "memory_limit": j.memory_limit})
        return out

    def close(self, reason: str) -> None:
        """The role stops: abandon the running sessions (the executor was resumed; a watch
        runs in the task of the role that lent the process and ends with it)."""
        ended = [self._stop(s.session_id, False, reason) for s in self.ledger.running()]
        self.ledger.close()          # one flush for them all
        for s, e in ended:
            self._stopped(s, e)

