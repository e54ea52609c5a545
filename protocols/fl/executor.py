"""The trio role's `ActionHandler` (dispatch.py): how the FL role carries out each action of
its core. Gossip goes out on the sessions topic; task loading and local training go to the
task process (training/process.py: torch runs there, never in the daemon); aggregation and model
saves run in worker threads bounded by `aggregation_threads`; tensor transfers are the stream
adapters of transfer/ (over one reused transfer session per peer, opened ahead: to the coordinator
at opt-in, to the first aggregator while this node trains and when it plans a round:
sessions.py); rewards go through the ledger (rewards/ledger.py). Every long action runs
in the role's nursery and feeds its outcome back through `apply`, which drops late outcomes
once the role stopped. Reputation reports wait for this role's gossip in flight (`InFlight`):
each is a signed observation the registry gossips, and an aggregator reports every
participant of a round in the same step as it publishes the round's result; the reports of
one step go to the registry together (`report_outcomes`: one gossip message, a batch of
signed observations, instead of one message each). A report the registry refuses (over this
node's observation rate limit) is logged at INFO, at most once a minute. A round's receipt is
credited to the harvest role once this node's next training is under way (harvest_link.py),
not in the step that fetches the new model. Each step of a round it carries out is noted in the
session's timeline (`Session.mark`: fetch/model, train/trained, send, aggregate/aggregated,
publish_plan, publish_result, push/pushed), which `fl.status` shows as "marks". An aggregator
pushes its round's result and new model to the acting coordinator that advertises it
(transfer/push.py), besides publishing the result."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import trio

from fognode.node.faults import LogRateLimiter
from fognode.protocols.fl.actions import (
    Action, Aggregate, AggregateSum, Emit, FetchModel, MessageRefused, PayRewards, PrepareTask,
    Publish, PushResult, ReportOutcome, RoundJudged, SaveModel, SendSecAgg, SendUpdate, Train, UpdateRefused)
from fognode.protocols.fl.config import FlConfig
from fognode.protocols.fl.dispatch import carry_out
from fognode.protocols.fl.events import TrainingRoundCompleted, TrainingRoundStarted, TrainingSessionEnded
from fognode.protocols.fl.harvest_link import CREDIT_DELAY, HarvestLink
from fognode.protocols.fl.messages import encode_gossip
from fognode.protocols.fl.metrics import FlMetrics
from fognode.protocols.fl.rewards.ledger import LedgerLink
from fognode.protocols.fl.session.archive import SessionArchive
from fognode.protocols.fl.session.core import FlCore
from fognode.protocols.fl.strategies.base import AggregateResult, StrategyError
from fognode.protocols.fl.tasks import TaskError
from fognode.protocols.fl.training.modelstore import save_model
from fognode.protocols.fl.training.prepared import TaskKey
from fognode.protocols.fl.training.process import TaskProcess
from fognode.protocols.fl.transfer.models import fetch_model
from fognode.protocols.fl.transfer.push import push_result
from fognode.protocols.fl.messages import OptIn, RoundPlan, RoundResult, coordinators_of
from fognode.protocols.fl.transfer.secagg import send_secagg
from fognode.protocols.fl.transfer.sessions import TransferSessions
from fognode.protocols.fl.transfer.streams import TOPIC, Link
from fognode.protocols.fl.transfer.updates import send_update
from fognode.protocols.registry.observation import Outcome

log = logging.getLogger("fognode.fl")

REPORT_WAIT = 2.0   # seconds a reputation report waits at most for this role's publishes
CREDIT_TIMEOUT = 10.0      # seconds a stopping role waits at most for the held credits' write
CREDIT_AFTER_TRAIN = 0.005  # seconds from a training's start to the held credits' write


class InFlight:
    """A count of operations in flight that tasks can wait to drop to zero (bounded)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = trio.Event()        # set (and replaced) whenever the count drops to 0

    def begin(self) -> None:
        self.count += 1

    def end(self) -> None:
        self.count -= 1
        if not self.count:
            self._idle.set()
            self._idle = trio.Event()

    async def idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight, at most `timeout` seconds; False if it timed out."""
        with trio.move_on_after(timeout):
            while self.count:
                await self._idle.wait()
            return True
        return False


class RoleActions:
    """Carries out the core's actions for one running FL role (see the module docstring)."""

    def __init__(self, *, ctx: Any, config: FlConfig, core: FlCore, metrics: FlMetrics,
                 tasks: TaskProcess, ledger: LedgerLink, nursery: trio.Nursery,
                 model_root: Path, task_key: Callable[[str, dict[str, float], int], TaskKey],
                 closed: Callable[[], bool], archive: SessionArchive) -> None:
        self.ctx = ctx
        self.core = core
        self.metrics = metrics
        self.tasks = tasks
        self.ledger = ledger
        self.harvest = HarvestLink(ctx)
        self.model_root = model_root
        self.archive = archive
        self._nursery = nursery
        self._task_key = task_key
        self._closed = closed
        self._save_lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(max(1, config.aggregation_threads))
        self._publishing = InFlight()        # this role's publishes not yet handed to the overlay
        self._report_lines = LogRateLimiter(interval=60.0)   # refused reports: a line a minute
        self._reports: list[ReportOutcome] = []    # queued for one report_outcomes call
        self._crediting = False                 # a task waits to credit held receipts
        self._training = trio.Event()           # set (and replaced) as each training starts
        self.sessions = TransferSessions(ctx.overlay, metrics, idle=config.transfer_session_idle)
        self.link = Link(overlay=ctx.overlay, config=config, metrics=metrics, core=core,
                         apply=self.apply, now=self._now, closed=closed, sessions=self.sessions)
        if self.sessions.enabled:
            nursery.start_soon(self.sessions.reap)

    def _now(self) -> float:
        return float(self.ctx.clock())

    def _mark(self, sid: bytes, round_no: int | None, try_no: int, step: str, peer: str = "") -> None:
        """A step of a round in the session's timeline (`Session.mark`; None: the current plan's)."""
        s = self.core.sessions.get(sid)
        if s is None or (round_no is None and s.plan is None):
            return
        if round_no is None and s.plan is not None:
            round_no, try_no = s.plan.round, s.plan.try_no
        s.mark(self._now(), int(round_no or 0), try_no, step, peer)

    def apply(self, actions: list[Action]) -> None:
        """Carry `actions` out (nothing once the role stopped: late outcomes are dropped)."""
        if self._closed():
            return
        carry_out(self, actions)

    # == ActionHandler ======================================================================

    def publish(self, a: Publish) -> None:
        self._warm_for(a)
        self._publishing.begin()
        self._nursery.start_soon(self._publish, a)

    def _warm_for(self, a: Publish) -> None:
        """Open the transfer session a published message is about to need (sessions.py)."""
        if isinstance(a.msg, RoundPlan):
            # this node coordinates: the new model comes from the round's first aggregator
            s = self.core.sessions.get(a.msg.session_id)
            if s is not None and s.coordinator is not None and s.coordinator.order:
                self.sessions.warm(self._nursery, s.coordinator.order[0])
        elif isinstance(a.msg, OptIn):
            # a participant fetches each round's base model from the acting coordinator
            s = self.core.sessions.get(a.msg.session_id)
            if s is not None:
                coords = coordinators_of(s.ann)
                self.sessions.warm(self._nursery, coords[min(s.acting, len(coords) - 1)])

    def prepare_task(self, a: PrepareTask) -> None:
        self._nursery.start_soon(self._prepare, a)

    def fetch_model(self, a: FetchModel) -> None:
        self._mark(a.session_id, None, 0, "fetch")
        self._nursery.start_soon(self._fetch, a)

    async def _fetch(self, a: FetchModel) -> None:
        await fetch_model(self.link, a)
        s = self.core.sessions.get(a.session_id)
        if s is not None and a.model_hash in s.models:
            self._mark(a.session_id, None, 0, "model")

    def push_result(self, a: PushResult) -> None:
        r = a.result.receipt
        self._mark(a.session_id, r.round, r.try_no, "push", a.coordinator)
        self._nursery.start_soon(self._push, a)

    async def _push(self, a: PushResult) -> None:
        if await push_result(self.link, a):
            self._mark(a.session_id, a.result.receipt.round, a.result.receipt.try_no, "pushed", a.coordinator)

    def train(self, a: Train) -> None:
        s = self.core.sessions.get(a.session_id)
        if s is not None and s.participant is not None and s.participant.order \
                and not s.spec.privacy.secagg:
            # the update goes to the round's first aggregator once trained: open the session
            # to it now, while this node trains, so the push does not wait for a stream open
            self.sessions.warm(self._nursery, s.participant.order[0])
        self._nursery.start_soon(self._train, a)

    def send_update(self, a: SendUpdate) -> None:
        self._mark(a.session_id, a.round, a.try_no, "send", a.to)
        self._nursery.start_soon(send_update, self.link, a)

    def aggregate(self, a: Aggregate) -> None:
        self._mark(a.session_id, a.round, a.try_no, "aggregate")
        self._nursery.start_soon(self._aggregate, a)

    def send_secagg(self, a: SendSecAgg) -> None:
        self._nursery.start_soon(send_secagg, self.link, a)

    def aggregate_sum(self, a: AggregateSum) -> None:
        self._nursery.start_soon(self._aggregate_sum, a)

    def emit(self, a: Emit) -> None:
        ev = a.event
        self.ctx.events.publish(ev)
        if isinstance(ev, TrainingRoundStarted):
            log.info("fl: session %s round %d (try %d) started: %d participants, aggregator %s, this node %s",
                     ev.session_id[:16], ev.round, ev.try_no, len(ev.participants), ev.aggregator, ev.role)
        elif isinstance(ev, TrainingSessionEnded):
            log.info("fl: session %s %s after %d round(s)%s", ev.session_id[:16], ev.state, ev.rounds_done,
                     f": {ev.reason}" if ev.reason else "")
            self._archive(bytes.fromhex(ev.session_id))
            self._nursery.start_soon(self.harvest.ended, ev.session_id, ev.state, ev.reason)
        if isinstance(ev, TrainingRoundCompleted):
            log.info("fl: session %s round %d completed by %s: %d accepted, %d dropped, %d rejected, "
                     "loss %.4g, accuracy %.4g", ev.session_id[:16], ev.round, ev.aggregator, len(ev.accepted),
                     len(ev.dropped), len(ev.rejected), ev.loss, ev.accuracy)
            s = self.core.sessions.get(bytes.fromhex(ev.session_id))
            if s is not None and s.coordinator is not None and s.coordinator.history:
                self.metrics.round.observe(s.coordinator.history[-1].duration)
                self.metrics.rounds.labels("coordinator").inc()
            else:
                self.metrics.rounds.labels("participant").inc()

    def _archive(self, sid: bytes) -> None:
        """Keep an ended session's status across restarts (session/archive.py)."""
        s = self.core.sessions.get(sid)
        if s is None:
            return
        st = self.core.status(sid)
        st.pop("marks", None)       # the round timeline is a live diagnostic, not a record
        st.update(ended=self._now(), task_params=dict(s.spec.task_params), nonce=s.ann.nonce.hex(),
                  archived=True)
        self.archive.save(st)

    def report_outcome(self, a: ReportOutcome) -> None:
        """Queue `a`; the reports queued in one step (an aggregator's, one per participant of
        a round) go to the reputation service together, as one gossip message."""
        self._reports.append(a)
        if len(self._reports) == 1:
            self._nursery.start_soon(self._report_after_publishes)

    async def _report_after_publishes(self) -> None:
        """Report once this role's publishes in flight went out (at most REPORT_WAIT later).
        Each report is a signed observation the registry gossips; an aggregator makes one per
        participant in the same step as it publishes the round's result, and made at once
        their signing (about 1 ms each at load) ran before the result's publish and their
        gossip went out with it, on the path to the coordinator that waits for the result."""
        if self._publishing.count:       # (the step's other reports are queued by now)
            await self._publishing.idle(REPORT_WAIT)
        reports, self._reports = self._reports, []
        if self._closed() or not reports:
            return
        svc = self.ctx.services.get("reputation")
        if svc is None:
            return
        try:
            refused = svc.report_outcomes([Outcome(a.subject, "fl", a.ok, min(max(a.weight, 1e-6), 100.0),
                                                   a.evidence) for a in reports])
        except Exception as e:   # the reputation service refuses one (about ourselves...)
            refused = [str(e)]
        if refused:
            held = self._report_lines.admit("refused", trio.current_time())
            if held is not None:     # at most once a minute: a refusal repeats every round
                log.info("fl: %d of %d reputation reports not recorded: %s%s", len(refused),
                         len(reports), refused[0], f" ({held} more lines since the last one)" if held else "")

    def message_refused(self, a: MessageRefused) -> None:
        self.metrics.refused.labels(a.kind).inc()
        log.info("fl: refused %s from %s for session %s: %s", a.kind, a.peer,
                 a.session_id.hex()[:16], a.reason)

    def update_refused(self, a: UpdateRefused) -> None:
        self.metrics.rejected.labels(a.reason).inc()
        log.info("fl: refused update from %s for session %s: %s", a.peer, a.session_id.hex()[:16], a.reason)

    def save_model(self, a: SaveModel) -> None:
        self._nursery.start_soon(self.save, a)

    def pay_rewards(self, a: PayRewards) -> None:
        self._nursery.start_soon(self.ledger.pay, a)

    def round_judged(self, a: RoundJudged) -> None:
        if not self.harvest.judged(a.receipt):
            return
        if self.harvest.full:
            self._nursery.start_soon(self.harvest.credit_held)
        elif not self._crediting:
            self._crediting = True
            self._nursery.start_soon(self._credit_later)

    async def _credit_later(self) -> None:
        """Credit the held round receipts (harvest_link.py) once this node's next training is
        under way (the daemon then waits for its task process), at the latest CREDIT_DELAY
        seconds from now: not while the new model is fetched and the next plan goes out."""
        try:
            with trio.move_on_after(CREDIT_DELAY):
                await self._training.wait()
                await trio.sleep(CREDIT_AFTER_TRAIN)     # the training request is in the pipe
        finally:        # also when the role stops meanwhile: a held receipt is not lost
            self._crediting = False
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CREDIT_TIMEOUT):
                await self.harvest.credit_held()

    # == the work behind them ===============================================================

    async def _publish(self, a: Publish) -> None:
        if isinstance(a.msg, RoundPlan):
            self._mark(a.msg.session_id, a.msg.round, a.msg.try_no, "publish_plan")
        elif isinstance(a.msg, RoundResult):
            r = a.msg.receipt
            self._mark(r.session_id, r.round, r.try_no, "publish_result")
        try:
            await self.ctx.overlay.publish(TOPIC, encode_gossip(a.msg))
        except Exception as e:
            log.warning("fl: publish of %s failed: %s", type(a.msg).__name__, e)
        finally:
            self._publishing.end()

    async def _prepare(self, a: PrepareTask) -> None:
        started = trio.current_time()
        try:
            prepared = await self.tasks.prepare(self._task_key(a.task, a.task_params, a.init_seed))
        except TaskError as e:
            log.warning("fl: task %s of session %s failed to load: %s", a.task, a.session_id.hex()[:16], e)
            self.apply(self.core.task_failed(a.session_id, str(e), self._now()))
            return
        actions = self.core.task_ready(a.session_id, prepared, self._now())
        opted = any(isinstance(x, Publish) and isinstance(x.msg, OptIn) for x in actions)
        # the opt-in window counts from the announcement: a slow load (a first torch import
        # on a busy machine) is what keeps a device out of a session's first round
        log.info("fl: session %s: task %s loaded in %.1f s, %s", a.session_id.hex()[:16], a.task,
                 trio.current_time() - started, "opting in" if opted else "not opting in")
        self.apply(actions)

    async def _train(self, a: Train) -> None:
        s = self.core.sessions.get(a.session_id)
        if s is None or s.prepared is None:
            return
        started = trio.current_time()
        self._mark(a.session_id, a.round, a.try_no, "train")
        self._training.set()
        self._training = trio.Event()
        # lent to the harvest role for the training: stopped while it suspends work. The
        # outcome goes to the core (and the update out) before the process is handed back:
        # the release (a last usage reading, the watcher's end) takes scheduler hops that
        # cost ~4-13 ms on a busy loop, and the idle child uses nothing meanwhile
        async with self.harvest.training(a.session_id, lambda: self.tasks.pid):
            try:
                outcome = await self.tasks.train(s.prepared.key, a.base, a.config, a.seed)
            except TaskError as e:
                log.warning("fl: local training for %s failed: %s", a.session_id.hex()[:16], e)
                return
            self.metrics.train.observe(trio.current_time() - started)
            self._mark(a.session_id, a.round, a.try_no, "trained")
            self.apply(self.core.trained(a.session_id, a.round, a.try_no, outcome, self._now()))

    async def _aggregate(self, a: Aggregate) -> None:
        await self._run_strategy(a, lambda: a.strategy.aggregate(a.base, list(a.updates)))

    async def _aggregate_sum(self, a: AggregateSum) -> None:
        await self._run_strategy(a, lambda: a.strategy.aggregate_sum(
            a.base, a.delta_sum, a.total_weight, a.peers, num_samples=a.num_samples))

    async def _run_strategy(self, a: Aggregate | AggregateSum,
                            run: Callable[[], AggregateResult]) -> None:
        """Run one aggregation in a worker thread, then hand the result (or the strategy's
        refusal) to `core.aggregated`."""
        started = trio.current_time()
        try:
            result = await trio.to_thread.run_sync(run, limiter=self._limiter)
            self.metrics.aggregate.observe(trio.current_time() - started)
            self._mark(a.session_id, a.round, a.try_no, "aggregated")
        except StrategyError as e:
            self.apply(self.core.aggregated(a.session_id, a.round, a.try_no, a.fallback, None,
                                            str(e), self._now()))
            return
        self.apply(self.core.aggregated(a.session_id, a.round, a.try_no, a.fallback, result, "",
                                        self._now(), a.strategy.state_arrays()))

    async def save(self, a: SaveModel) -> None:
        """Write a model to the data dir (model.json is read-modified-written: one at a time)."""
        s = self.core.sessions.get(a.session_id)
        if s is None or s.prepared is None:
            return
        task, layout = s.spec.task, s.prepared.layout
        try:
            async with self._save_lock:
                await trio.to_thread.run_sync(lambda: save_model(
                    self.model_root, a.session_id, task, layout, a.params, a.model_hash, final=a.final))
        except OSError as e:
            log.error("fl: cannot save the model of session %s: %s", a.session_id.hex()[:16], e)
