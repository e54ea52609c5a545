"""The `harvest` role: a thin trio adapter around the policy core (policy_core.py).

Every `tick_interval` it reads the sensors in a worker thread (PsutilSensors, or a recorded
trace when `sensors` names one), hands the readings to `PolicyCore.tick(now, readings)` (now:
trio's monotonic clock) and carries the decision's actions out: Suspend -> the executor's
`suspend()` (SIGSTOP of its jobs and of the processes it watches for other roles: FL's task
process), Resume -> `resume()` (SIGCONT), SetAllowance -> the executor's CPU duty and memory
budget. Then it writes the running sessions' meters and hands this device's harvest state to
the registry (`RegistryService.set_harvest`: republished when it changes materially), so FL
selection and market matching see it. Operator actions (harvest.pause / resume / set_policy)
decide at once with the latest readings.

Data dir: `<datadir>/harvest/policy.json` (the operator's overrides, policy_store.py) and
`<datadir>/harvest/contributions/` (the contribution ledger, contribution_store.py, whose
synced writes a writer task of the role's nursery group-commits: group_commit.py). The role
offers `HarvestApi` (api.py) as ctx.services["harvest"] once its first decision is made.
It uses no streams or topics of its own: what it says to the network rides on the registry's
device record.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import trio

from fognode.node.errors import PermanentRoleError
from fognode.node.role import NodeContext, Role
from fognode.protocols.harvest.api import SERVICE_NAME, HarvestApi, RegistryLookup
from fognode.protocols.harvest.cgroup import probe_cgroup
from fognode.protocols.harvest.config import HarvestConfig
from fognode.protocols.harvest.contribution import ContributionLedger
from fognode.protocols.harvest.contribution_store import ContributionStore
from fognode.protocols.harvest.errors import PolicyStoreError, TraceError
from fognode.protocols.harvest.events import HarvestStateChanged
from fognode.protocols.harvest.executor import Executor
from fognode.protocols.harvest.metrics import HarvestMetrics
from fognode.protocols.harvest.policy_core import Decision, PolicyCore, Resume, SetAllowance, Suspend
from fognode.protocols.harvest.policy_store import PolicyStore
from fognode.protocols.harvest.rpc import HarvestRpc
from fognode.protocols.harvest.sensors import PsutilSensors, Readings, SensorProvider, TraceSensors
from fognode.protocols.harvest.service import HarvestService

__all__ = ["HarvestConfig", "HarvestRole"]

log = logging.getLogger("fognode.harvest")

DEFAULT_MEMORY = 1 << 30     # the executor's budget when the device's RAM is unknown


class HarvestRole(HarvestRpc, Role):
    """Battery/thermal/CPU-aware volunteering of this device's idle compute."""

    name = "harvest"
    Config = HarvestConfig

    def __init__(self, ctx: NodeContext, config: HarvestConfig) -> None:
        super().__init__(ctx, config)
        self.config: HarvestConfig = config
        self.metrics = HarvestMetrics.create(ctx.metrics)
        self.service: HarvestService | None = None
        self.registry = RegistryLookup(ctx.services)
        self._sensor_failing = False
        # health_detail: (decision, its state and reasons as JSON values) of the last call
        self._shown: tuple[Decision, str, tuple[str, ...]] | None = None

    # -- set-up --------------------------------------------------------------------------------

    def _sensors(self) -> SensorProvider:
        """The real sensors, or the trace `sensors` names (a trace that cannot be read is
        the operator's to fix: PermanentRoleError, not restarted in a loop)."""
        path = self.config.trace_path(self.ctx.datadir)
        if path is None:
            return PsutilSensors(pid=os.getpid())
        try:
            return TraceSensors(path, mode=self.config.trace_mode)
        except TraceError as e:
            raise PermanentRoleError(f"protocols.harvest.sensors: {e}") from None

    def _open(self) -> HarvestService:
        """node.toml's policy with the operator's persisted overrides and pause, the
        contribution ledger and the executor. A policy file that cannot be read is the
        operator's to fix (PermanentRoleError: not restarted in a loop)."""
        base = self.config.policy()
        store = PolicyStore.in_datadir(self.ctx.datadir)
        try:
            policy, stored = store.load_policy(base)
        except PolicyStoreError as e:
            raise PermanentRoleError(str(e)) from None
        ledger = ContributionLedger(ContributionStore(self.ctx.role_dir("harvest") / "contributions"),
                                    self.ctx.peer_id, self.ctx.clock(),
                                    keep=self.config.history_sessions)
        return HarvestService(peer_id=self.ctx.peer_id, ledger=ledger,
                              executor=Executor(nice=19, cgroup=probe_cgroup()),
                              core=PolicyCore(policy), metrics=self.metrics, events=self.ctx.events,
                              clock=self.ctx.clock, base_policy=base, store=store, stored=stored,
                              nice=self.config.nice())

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sensors = await trio.to_thread.run_sync(self._sensors)
        svc = await trio.to_thread.run_sync(self._open)
        self.service = svc
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(svc.ledger.store.writer.run)   # the group commit
                await self._tick(svc, sensors)
                self.ctx.services.provide(SERVICE_NAME, HarvestApi(svc, self.registry))
                task_status.started()
                while True:
                    await trio.sleep(self.config.tick_interval)
                    await self._tick(svc, sensors)
        finally:
            self.ctx.services.withdraw(SERVICE_NAME)
            self.service = None
            svc.executor.resume()
            svc.close("the harvest role stopped")
            reg = self.registry.get()
            if reg is not None:
                reg.set_harvest(None)

    async def _tick(self, svc: HarvestService, sensors: SensorProvider) -> None:
        try:
            readings = await trio.to_thread.run_sync(sensors.read)
            self._sensor_failing = False
        except (TraceError, OSError) as e:
            self.metrics.sensor_errors.inc()
            if not self._sensor_failing:
                log.warning("harvest: sensor read failed, keeping the previous readings: %s", e)
            self._sensor_failing = True
            readings = svc.readings
        if readings is not None:
            self._decide(svc, readings)
        svc.checkpoint()

    def _tick_now(self) -> None:
        svc = self.service
        if svc is not None and svc.readings is not None:
            self._decide(svc, svc.readings)

    def _decide(self, svc: HarvestService, readings: Readings) -> None:
        """One policy decision, its actions carried out, the state announced."""
        now = trio.current_time()
        d = svc.core.tick(now, readings)
        svc.decision, svc.readings = d, readings
        for a in d.actions:
            if isinstance(a, Suspend):
                svc.executor.suspend()
                for r in a.reasons:
                    self.metrics.suspensions.labels(r.value).inc()
                log.info("harvest: work suspended: %s", "; ".join(d.details) or "no reason given")
                self.ctx.events.publish(HarvestStateChanged("suspended", tuple(r.value for r in a.reasons)))
            elif isinstance(a, Resume):
                svc.executor.resume()
                log.info("harvest: work may run again")
                self.ctx.events.publish(HarvestStateChanged("running", ()))
            elif isinstance(a, SetAllowance):
                svc.executor.set_allowance(min(1.0, max(0.01, a.allowance.cpu_fraction)),
                                           a.allowance.memory_bytes or DEFAULT_MEMORY)
        self.metrics.state.set(1 if svc.suspension() is None else 0)
        reg = self.registry.get()
        if reg is not None:
            reg.set_harvest(svc.info())

    def health_detail(self) -> dict[str, Any]:
        svc = self.service
        if svc is None or svc.decision is None:
            return {}
        d, shown = svc.decision, self._shown
        if shown is None or shown[0] is not d:     # a decision is frozen: a new one for any change
            shown = self._shown = (d, d.state.value, tuple(r.value for r in d.reasons))
        return {"state": shown[1], "reasons": list(shown[2]), "running_sessions": svc.ledger.running_count()}
