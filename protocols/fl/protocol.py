"""The `fl` role: a thin trio adapter around the sans-IO core (session/core.py).

Wire: gossip topic `fognode/fl/sessions/1` (announcements naming the session's coordinators,
opt-ins, plans, results, failures, session ends) and four streams (transfer/): updates in
(`/fognode/fl/update/1.0.0`), global models out (`/fognode/fl/model/1.0.0`), both also as
requests of one long-lived transfer session per peer (`/fognode/fl/xfer/1.0.0`, tried first;
the per-transfer streams serve older peers), and one secure-aggregation message per stream,
both ways (`/fognode/fl/secagg/1.0.0`). Only
`ctx.overlay` is used. This module sets the role up and feeds the core its inputs (gossip,
ticks; a gossip message is checked before it is relayed, a bad one charged to the peer that
relayed it); executor.py carries the core's actions out through the one dispatch table
(dispatch.py), rpc.py holds the `fl.*` RPC methods. Task loading and local training run in a
separate task process (training/process.py), aggregation and model saves in worker threads, so
the node keeps serving while it trains; torch is never imported by the daemon.

The role starts without its numeric core (numpy, the round engine, transfers: numeric.py),
which loads in a worker thread once the node is ready (loading.py): its streams, topic and
RPC methods are served from the start, and what arrives before the core serves waits for it
(`wait_serving`, bounded); gossip is checked (decoded) before it is relayed all along, and a
new round plan is noted in its session's timeline as it passes the check (`plan_in`). Until
the core serves, the role's health detail says "loading"; a core that does not import fails
the role (CoreLoadFailed, not restarted).
"""
from __future__ import annotations

import logging
import math
import os
import time
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import trio

from fognode.node.errors import LocalProtocolError, RemoteProtocolError
from fognode.node.health import HealthReport, RecentCount, Status
from fognode.node.overlay import FramedStream
from fognode.node.overlay import GossipMessage as OverlayGossip
from fognode.node.role import Role
from fognode.node.wire import digest, unpack
from fognode.protocols.fl.config import MIB, FlConfig, validate
from fognode.protocols.fl.errors import UnknownMessageType
from fognode.protocols.fl.loading import NUMERIC_MODULE, WAIT_BOUND, core_load
from fognode.protocols.fl.messages import DeviceFacts, GossipMessage, RoundPlan, SelectionCriteria, decode_gossip
from fognode.protocols.fl.metrics import FlMetrics
from fognode.protocols.fl.rpc import FlRpc
from fognode.protocols.fl.session.archive import SessionArchive
from fognode.protocols.fl.session.selection import DeviceCandidate, ineligibility
from fognode.protocols.fl.wire_names import MODEL_STREAM, SECAGG_STREAM, TOPIC, UPDATE_STREAM, XFER_STREAM

if TYPE_CHECKING:   # the numeric core: loaded after the role starts (loading.py)
    from fognode.protocols.fl.actions import Action
    from fognode.protocols.fl.executor import RoleActions
    from fognode.protocols.fl.rewards.ledger import LedgerLink
    from fognode.protocols.fl.session.core import FlCore
    from fognode.protocols.fl.training.prepared import TaskKey
    from fognode.protocols.fl.training.process import TaskProcess

__all__ = ["FlConfig", "FlRole"]

log = logging.getLogger("fognode.fl")

MAX_GOSSIP = 512 * 1024
CHECKED_KEEP = 128               # messages the check decoded, kept for the handler
CHECKED_MAX_BYTES = 64 * 1024    # (only messages this small: at most 8 MiB kept)


TASK_DEATH_WINDOW = 300.0   # seconds: task process starts counted for health_report


class FlRole(FlRpc, Role):
    """Serverless federated learning: coordinator, participant and aggregator in one role."""

    name = "fl"
    Config = FlConfig
    stream_ids = (MODEL_STREAM, UPDATE_STREAM, SECAGG_STREAM, XFER_STREAM)
    topics = (TOPIC,)

    numeric_module = NUMERIC_MODULE   # what core_load imports (tests name a module that fails)

    def __init__(self, ctx: Any, config: FlConfig) -> None:
        super().__init__(ctx, config)
        validate(config)
        self.metrics = FlMetrics.create(ctx.metrics)
        self._task_starts = RecentCount(TASK_DEATH_WINDOW)   # task process starts (monotonic times)
        self._load = core_load(self.numeric_module)
        self.numeric: ModuleType | None = None     # the numeric core (numeric.py), once loaded
        self._serving = trio.Event()               # set once the core serves (or its load failed)
        self._handlers: dict[str, Any] = {}        # stream id -> the core's handler, once serving
        self.core: FlCore | None = None            # these four once the core serves
        self.actions: RoleActions | None = None
        self.ledger: LedgerLink | None = None
        self.tasks: TaskProcess | None = None
        self._closed = False
        self._checked: dict[tuple[str, bytes], GossipMessage] = {}   # _check_gossip's decodes
        index = config.data_index if config.data_index >= 0 else \
            int.from_bytes(digest(ctx.peer_id.encode())[:4], "big") % 1_000_000
        self.data_index = index
        self.model_root = Path(ctx.datadir) / "fl"
        self.archive = SessionArchive(self.model_root / "sessions")

    # == the loop ===========================================================================

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the role's streams, topic and RPC methods at once; what arrives before the
        numeric core has loaded (loading.py: in a worker thread once the node is ready) waits
        for it (`wait_serving`). Raises CoreLoadFailed when the core does not import."""
        await trio.to_thread.run_sync(self.archive.load)
        overlay = self.ctx.overlay
        for sid in self.stream_ids:
            overlay.set_stream_handler(sid, partial(self._serve_stream, sid))
        # subscribing again after a restart replaces the previous instance's handler
        await overlay.subscribe(TOPIC, self._on_gossip, check=self._check_gossip)
        self.ctx.services.provide("fl", self)
        # in a daemon, started now and the core loads once the node is ready; run on its own
        # (tests, embedders) there is nothing to defer the load past: started once it serves
        deferred = self.ctx.services.get("node") is not None
        if deferred:
            task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                try:
                    core, ledger = await self._start_core(await self._load.run(self.ctx.services), nursery)
                finally:
                    self._serving.set()     # waiters see the core, or why there is none
                if not deferred:
                    task_status.started()
                while True:
                    await trio.sleep(self.config.tick_interval)
                    if not ledger.verifier_registered:
                        ledger.register_verifier()   # the ledger may start after this role
                    self._apply(core.tick(self.ctx.clock()))
        finally:
            self._closed = True
            self.ctx.services.withdraw("fl")
            if self.tasks is not None:
                await self.tasks.aclose()

    async def _start_core(self, num: ModuleType, nursery: trio.Nursery) -> tuple[FlCore, LedgerLink]:
        """Build the core and its collaborators from the loaded numeric core, and hand the
        streams to their handlers."""
        config = self.config
        self.tasks = tasks = num.TaskProcess(torch_threads=config.torch_threads, nice=config.training_nice,
                                     max_frame=2 * config.max_model_bytes + MIB, on_start=self._task_started)
        self.core = core = num.FlCore(self.ctx.peer_id, self.ctx.identity,
                                      tasks_enabled=set(config.tasks), facts=self._facts(),
                                      candidate_view=self._candidate,
                                      republish_interval=config.republish_interval,
                                      fl_peers=self._fl_peers,
                                      coordinator_fallbacks=config.coordinator_fallbacks)
        self.ledger = ledger = num.LedgerLink(self.ctx, core, self.metrics)
        self.actions = actions = num.RoleActions(
            ctx=self.ctx, config=config, core=core, metrics=self.metrics,
            tasks=tasks, ledger=ledger, nursery=nursery, model_root=self.model_root,
            task_key=self._task_key, closed=lambda: self._closed, archive=self.archive)
        link = actions.link
        self._handlers = {UPDATE_STREAM: partial(num.serve_update, link), MODEL_STREAM: partial(num.serve_model, link),
                          SECAGG_STREAM: partial(num.serve_secagg, link), XFER_STREAM: partial(num.serve_xfer, link)}
        for sid, handler in self._handlers.items():
            self.ctx.overlay.set_stream_handler(sid, handler)
        ledger.register_verifier()
        nursery.start_soon(ledger.settle_pools)      # closes the reward pools this node must close
        if config.task_process_at_start:
            nursery.start_soon(self._warm_tasks, num)
        self.numeric = num
        return core, ledger

    async def wait_serving(self) -> ModuleType:
        """The numeric core, once the role serves with it: waits (at most WAIT_BOUND seconds)
        while it loads. Raises LocalProtocolError when its load failed or took longer."""
        return await self._load.wait_served(lambda: self.numeric, self._serving, WAIT_BOUND)

    async def _serve_stream(self, sid: str, stream: FramedStream) -> None:
        """A stream that arrived before the core served: handled once it does."""
        await self.wait_serving()
        await self._handlers[sid](stream)

    async def _warm_tasks(self, num: ModuleType) -> None:
        """`task_process_at_start`: the task process imports torch now, not when a session's
        announcement asks for its task (the opt-in window runs from the announcement)."""
        assert self.tasks is not None
        try:
            await self.tasks.warm()
        except num.TaskError as e:      # the first session starts it again
            log.warning("fl: the task process did not start: %s", e)

    def _apply(self, actions: list[Action]) -> None:
        assert self.actions is not None
        self.actions.apply(actions)

    def _now(self) -> float:
        return float(self.ctx.clock())

    def _task_key(self, task: str, params: dict[str, float], init_seed: int) -> TaskKey:
        assert self.numeric is not None
        return self.numeric.TaskKey.of(task, params, init_seed, data_seed=self.config.data_seed,
                                       data_index=self.data_index)

    def _check_gossip(self, msg: OverlayGossip) -> bool:
        """Run by the gossip layer before a message is relayed or handled (pulled ones too):
        one that does not decode is refused and charged to the peer that relayed it to us. Its
        origin may be a throw-away key no charge reaches; every node checks before relaying,
        so an honest relayer never passes a bad message on and only the peer that injected it
        (or one that relays unchecked) pays; GossipSub counts it as that peer's invalid
        message. A message of a type this version does not know (a newer node's) is relayed.
        What decoded is kept for the handler (`_checked`), so it is decoded once."""
        try:
            m = decode_gossip(unpack(msg.data, max_size=MAX_GOSSIP, what="fl gossip"), peer=msg.origin)
        except UnknownMessageType:
            return True
        except RemoteProtocolError as e:
            self.metrics.bad_messages.labels("gossip").inc()
            self.ctx.overlay.penalize(msg.received_from or msg.origin,
                                      f"relayed a bad fl message of {msg.origin}: {e}", protocol=TOPIC)
            return False
        if isinstance(m, RoundPlan):
            self._plan_in(m, msg.origin)
        if len(msg.data) <= CHECKED_MAX_BYTES:
            self._checked[(msg.origin, msg.data)] = m
            while len(self._checked) > CHECKED_KEEP:
                del self._checked[next(iter(self._checked))]
        return True

    def _plan_in(self, plan: RoundPlan, origin: str) -> None:
        """Note in the session's timeline that a plan newer than the core's passed the check
        (`plan_in`, as it arrived; its `plan` step follows once the gossip layer's inbox and
        handler tasks hand it to the core): the plan's gossip fan-out and the receiver's own
        hops apart (tools/bench/fl_timeline.py). A republished or late copy is not noted (a
        relayed copy of the same message is dropped as seen before any check)."""
        s = self.core.sessions.get(plan.session_id) if self.core is not None else None
        if s is None or (s.plan is not None and (plan.rank, plan.round, plan.try_no)
                         <= (s.plan.rank, s.plan.round, s.plan.try_no)):
            return
        s.mark(self._now(), plan.round, plan.try_no, "plan_in", origin)

    async def _on_gossip(self, msg: OverlayGossip) -> None:
        if self.core is None:
            try:
                await self.wait_serving()      # arrived while the numeric core loads
            except LocalProtocolError as e:
                log.warning("fl: a message of %s not handled: %s", msg.origin, e)
                return
        if self._closed or self.core is None:
            return
        m = self._checked.pop((msg.origin, msg.data), None)
        if m is None:
            try:
                m = decode_gossip(unpack(msg.data, max_size=MAX_GOSSIP, what="fl gossip"), peer=msg.origin)
            except UnknownMessageType as e:
                self.metrics.unknown_messages.inc()
                log.debug("fl: ignoring a message of %s: %s", msg.origin, e)
                return
            except RemoteProtocolError as e:    # _check_gossip refused it already; kept for safety
                self.metrics.bad_messages.labels("gossip").inc()
                self.ctx.overlay.penalize(msg.received_from or msg.origin,
                                          f"relayed a bad fl message of {msg.origin}: {e}", protocol=TOPIC)
                return
        self._apply(self.core.receive(msg.origin, m, self._now()))

    def _task_started(self) -> None:
        self.metrics.task_starts.inc()
        self._task_starts.add(time.monotonic())

    def health_report(self) -> HealthReport:
        """Degraded when the task process was started 3 times in 5 minutes (it keeps dying),
        unhealthy at 10."""
        recent = self._task_starts.count(time.monotonic())
        if recent >= 10:
            return HealthReport(Status.UNHEALTHY, f"the task process was started {recent} times in "
                                                  f"{TASK_DEATH_WINDOW / 60:g} min: it keeps dying")
        if recent >= 3:
            return HealthReport(Status.DEGRADED, f"the task process was started {recent} times in "
                                                 f"{TASK_DEATH_WINDOW / 60:g} min")
        return HealthReport.healthy()

    def health_detail(self) -> dict[str, Any]:
        """Sessions known and running; "loading" (what the deferred load is doing) until the
        numeric core serves."""
        if self.core is None:
            return {"loading": f"numeric core: {self._load.state}"}
        return {"sessions": len(self.core.sessions),
                "running": sum(1 for s in self.core.sessions.values() if not s.state.ended)}

    def _facts(self) -> DeviceFacts:
        import psutil

        charging = True
        try:
            bat = psutil.sensors_battery()
            if bat is not None:
                charging = bool(bat.power_plugged)
        except (AttributeError, NotImplementedError, OSError):
            pass
        return DeviceFacts(region=self.ctx.region, cores=os.cpu_count() or 1,
                           memory_mb=int(psutil.virtual_memory().total // MIB), charging=charging,
                           capabilities=tuple(self.config.capabilities))

    def _fl_peers(self) -> list[tuple[str, DeviceFacts]]:
        """Online devices whose registry record offers the "fl" role (fallback coordinator
        candidates for sessions this node starts; `_candidate` adds the record's facts)."""
        registry = self.ctx.services.get("registry")
        if registry is None:
            return []
        from fognode.protocols.registry.view import Criteria

        return [(rec.peer_id, DeviceFacts(region=rec.profile.region))
                for rec in registry.devices(Criteria(role="fl", online=True))
                if rec.peer_id != self.ctx.peer_id]

    def _eligible_now(self, criteria: SelectionCriteria) -> int:
        """How many devices (this one included) are eligible under `criteria` now, by the
        registry's records (fl.start's warning; opt-ins decide the real selection)."""
        peers = [*self._fl_peers(), (self.ctx.peer_id, DeviceFacts())]
        return sum(1 for p, f in peers if ineligibility(self._candidate(p, f), criteria) is None)

    def _candidate(self, peer: str, facts: DeviceFacts) -> DeviceCandidate:
        """A candidate from the registry's record when there is one, else the device's own
        opt-in facts; reputation s (1.0 = average peer) is mapped to s / (1 + s) in [0, 1).
        Its harvest suspension: this node's from its harvest role, another's from its record."""
        region, cores, mem, charging, online = facts.region, facts.cores, facts.memory_mb, facts.charging, True
        caps = set(facts.capabilities)
        registry = self.ctx.services.get("registry")
        if registry is not None:
            rec = registry.get(peer)
            if rec is not None:
                region = rec.profile.region or region
                cores = rec.caps.cores if rec.caps.cores is not None else cores
                if rec.caps.memory_bytes is not None:
                    mem = rec.caps.memory_bytes // MIB
                if rec.caps.charging is not None:
                    charging = rec.caps.charging
                if rec.caps.gpu:
                    caps.add("gpu")
                online = bool(registry.is_online(peer)) or peer == self.ctx.peer_id
        suspended = ""
        if peer == self.ctx.peer_id:
            suspended = self.actions.harvest.suspension() if self.actions is not None else ""
        elif registry is not None:
            rec = registry.get(peer)
            if rec is not None and rec.harvest is not None and not rec.harvest.available:
                suspended = rec.harvest.reason
        rep = 0.5
        reputation = self.ctx.services.get("reputation")
        if reputation is not None:
            s = float(reputation.score(peer, "fl"))
            rep = s / (1.0 + s) if s > 0 and math.isfinite(s) else 0.0
        return DeviceCandidate(peer, region, cores, mem, charging, online, rep, tuple(sorted(caps)),
                               suspended)
