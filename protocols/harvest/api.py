"""What the harvest role offers other roles through `ctx.services` ("harvest" -> `HarvestApi`).

The seed's Harvest Management Service, for FL and the market:
`register_harvester`, `open_harvest_session`, `end_harvest_session` (returns the
contribution ledger's account of it), `get_available_harvesters(criteria)`,
`update_harvest_policy`; plus what the consumers of work need: `suspension()` (may this
device work now?), `adopt` (lend a process the consumer owns, e.g. FL's task process, to a
session: stopped while suspended, metered), `run_job` / `run_wasm` / `wasm_worker` (market jobs
under the executor), and `record_credit` (a receipt signed by whoever received the work).
`harvest_api(ctx.services)` is the one typed look-up: the facade, or None when no harvest
role runs on this node. Every method is a thin view of `HarvestService` (service.py); only
`adopt`, `run_job`, `run_wasm` and the session and credit methods await.

Starting or ending a session and crediting a receipt return once durable: they wait for the
fsync off the event loop, sharing it with other writes (the store's group commit).
"""
from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Mapping

from fognode.node.role import Services
from fognode.protocols.harvest.contribution import Contribution, HarvestSession
from fognode.protocols.harvest.jobs import JobResult, JobSpec
from fognode.protocols.harvest.policy import HarvestPolicy
from fognode.protocols.harvest.receipts import Credit
from fognode.protocols.harvest.service import ContributionReport, HarvestService, PidOf
from fognode.protocols.harvest.wasm import WasmJob, WasmResult
from fognode.protocols.harvest.wasm_worker import WasmWorker
from fognode.protocols.registry.api import RegistryService
from fognode.protocols.registry.record import DeviceRecord, HarvestInfo
from fognode.protocols.registry.view import Criteria

SERVICE_NAME = "harvest"


@dataclass(frozen=True)
class HarvesterCriteria:
    """What `get_available_harvesters` filters on (None: don't care). Devices must announce
    harvest "available" and be online; `min_cores` / `min_memory_bytes` apply to what their
    policy lets work use now, not to the hardware."""

    region: str | None = None
    min_cores: int | None = None
    min_memory_bytes: int | None = None
    min_reputation: float | None = None     # relative, 1.0 = an average peer
    service: str | None = None              # reputation service min_reputation applies to


class HarvestApi:
    def __init__(self, service: HarvestService, registry: "RegistryLookup") -> None:
        self._svc = service
        self._registry = registry

    # -- this device ----------------------------------------------------------------------------

    def register_harvester(self) -> HarvestInfo | None:
        """Announce this device's harvest state in its registry record now (the role also
        does it every tick); returns it (None before the policy's first decision)."""
        info = self._svc.info()
        reg = self._registry.get()
        if reg is not None:
            reg.set_harvest(info)
        return info

    def state(self) -> HarvestInfo | None:
        """This device's harvest state (None before the policy's first decision)."""
        return self._svc.info()

    def suspension(self) -> str | None:
        """Why this device may not take work now (comma-separated reasons), None if it may."""
        return self._svc.suspension()

    def policy(self) -> HarvestPolicy:
        return self._svc.policy

    def update_harvest_policy(self, changes: Mapping[str, Any]) -> HarvestPolicy:
        """Change knobs (null: back to node.toml's value); validated and persisted before it
        applies. PolicyError naming the knob / PolicyStoreError; the old policy stays."""
        return self._svc.set_policy(changes)

    # -- sessions --------------------------------------------------------------------------------

    def running_sessions(self, kind: str, ref: str) -> list[HarvestSession]:
        """The running sessions of `kind` for `ref` (none started)."""
        return self._svc.ledger.running(kind, ref)

    async def open_harvest_session(self, kind: str, ref: str) -> HarvestSession:
        """Start a harvest session of `kind` ("fl", "market", "manual") for `ref`."""
        return await self._svc.open_session(kind, ref)

    async def end_harvest_session(self, session_id: bytes, *, completed: bool,
                                  reason: str = "") -> ContributionReport:
        """End a session (completed, or abandoned with `reason`): the session as the
        contribution ledger recorded it and the device's totals. LookupError if unknown."""
        return await self._svc.end_session(session_id, completed=completed, reason=reason)

    def contribution(self) -> Contribution:
        """This device's totals: sessions, results, tokens, reliability."""
        return self._svc.ledger.totals()

    def adopt(self, kind: str, ref: str, name: str, pid_of: PidOf) -> AbstractAsyncContextManager[HarvestSession]:
        """`async with api.adopt("fl", sid, "fl task process", lambda: tasks.pid):` lends the
        process to the running session of (kind, ref) for the body (service.py `adopt`)."""
        return self._svc.adopt(kind, ref, name, pid_of)

    async def run_job(self, session_id: bytes, spec: JobSpec) -> JobResult:
        return await self._svc.run_job(session_id, spec)

    async def run_wasm(self, session_id: bytes, job: WasmJob) -> WasmResult:
        return await self._svc.run_wasm(session_id, job)

    def wasm_worker(self, session_id: bytes, name: str) -> AbstractAsyncContextManager[WasmWorker]:
        """`async with api.wasm_worker(sid, "market 1a2b") as w: await w.run(job)`: a
        persistent WASM runner whose work is metered into harvest session `sid` (service.py)."""
        return self._svc.wasm_worker(session_id, name)

    async def record_credit(self, kind: str, data: bytes, *, peer: str | None = None) -> Credit:
        """Credit a receipt ("fl_round": an FL RoundReceipt's wire bytes; "market_job": a
        WorkReceipt) to this device. ReceiptRefused when forged, foreign, self-issued, already
        held, or (FL) for a session this device did no work for."""
        return await self._svc.record_credit(kind, data, peer=peer)

    # -- the network -----------------------------------------------------------------------------

    def get_available_harvesters(self, criteria: HarvesterCriteria | None = None) -> list[DeviceRecord]:
        """Online devices whose record announces harvest "available" and that meet
        `criteria`, best reputation first (the registry's local view; [] without a
        registry on this node)."""
        c = criteria or HarvesterCriteria()
        reg = self._registry.get()
        if reg is None:
            return []
        out = []
        for rec in reg.devices(Criteria(region=c.region, online=True, available=True,
                                        min_reputation=c.min_reputation, service=c.service)):
            h = rec.harvest
            if h is None:
                continue
            if c.min_cores is not None and h.free_cores < c.min_cores:
                continue
            if c.min_memory_bytes is not None and h.free_memory_bytes < c.min_memory_bytes:
                continue
            out.append(rec)
        return out


class RegistryLookup:
    """The registry service of this node, looked up when needed (it may start after the
    harvest role, or restart)."""

    def __init__(self, services: Services) -> None:
        self._services = services

    def get(self) -> RegistryService | None:
        reg = self._services.get("registry")
        return reg if isinstance(reg, RegistryService) else None


def harvest_api(services: Services) -> HarvestApi | None:
    """The harvest role this node runs, or None (not enabled, not started yet, or stopped)."""
    api = services.get(SERVICE_NAME)
    if api is None:
        return None
    if not isinstance(api, HarvestApi):
        raise TypeError(f"ctx.services {SERVICE_NAME!r} holds {type(api).__name__}, not a HarvestApi")
    return api


__all__ = ["HarvestApi", "HarvesterCriteria", "RegistryLookup", "SERVICE_NAME", "harvest_api"]
