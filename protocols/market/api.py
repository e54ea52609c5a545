"""What the market offers other roles through `ctx.services` ("market" -> `MarketApi`): the
seed's Marketplace Service. `market_api(ctx.services)` is the one typed look-up.

- `register_service_offering(...)`: publish (or replace) a signed offer; returns its JSON view.
- `request_service(job, replication, budget, seconds)`: one WASM job on `replication`
  providers, escrowed and paid per debit note; returns the verified result and the contracts.
- `allocate_compute_burst(job, providers, replication, budget, seconds, progress)`: a bag of
  tasks (one per args tuple of `job`) across providers; returns every task's result.
- `monitor_sla_compliance(contract)`: the contract's state, what was due, paid and refunded,
  whether the provider was outvoted, and for a service contract the SLA account of its probes
  (windows, uptime and response times observed, breaches, penalty due and slashed: sla.py).
- `get_marketplace_stats(region, service)`: supply, demand, fill ratio, price percentiles.
- `find_offers(service)`: other providers' unexpired offers of a service in our book.
- `harvest_suspended()`: withdraw every offer of ours (the role itself follows the harvest
  policy every tick: harvest_gate.py).
The awaiting methods raise MarketError (no match, no agreement, no ledger) or the ledger's
errors; they are cancellable (escrows already opened are refunded after their deadline).
"""
from __future__ import annotations

from typing import Any, Callable

from fognode.node.role import Services
from fognode.protocols.market.contracts import Contract
from fognode.protocols.market.errors import MarketError
from fognode.protocols.market.messages import Offer
from fognode.protocols.market.service import JobSpec, MarketService, Progress

SERVICE_NAME = "market"


class MarketApi:
    def __init__(self, service: MarketService,
                 sla: Callable[[Contract], dict[str, Any]] | None = None) -> None:
        self._svc = service
        self._sla = sla

    def register_service_offering(self, *, id: str, service: str, cores: int, memory_mib: int,
                                  prices: dict[str, int], uptime_bp: int = 9900,
                                  disk_mib: int = 0, ttl: int = 3600) -> dict[str, Any]:
        """Publish offer `id` (prices in micro-units per unit: fuel = per million fuel)."""
        return self._svc.offer(id=id, service=service, cores=cores, memory_mib=memory_mib,
                               disk_mib=disk_mib, prices=prices, uptime_bp=uptime_bp, ttl=ttl)

    async def request_service(self, job: JobSpec, *, replication: int, budget: int, seconds: int,
                              constraints: str = "") -> dict[str, Any]:
        return await self._svc.run_tasks(job, providers=replication, replication=replication,
                                         budget=budget, seconds=seconds, constraints=constraints)

    async def allocate_compute_burst(self, job: JobSpec, *, providers: int, budget: int,
                                     seconds: int, replication: int = 1, constraints: str = "",
                                     progress: Progress | None = None) -> dict[str, Any]:
        return await self._svc.run_tasks(job, providers=providers, replication=replication,
                                         budget=budget, seconds=seconds, constraints=constraints,
                                         progress=progress)

    def monitor_sla_compliance(self, contract: bytes) -> dict[str, Any]:
        c = self._svc.contracts.get(contract)
        if c is None:
            raise MarketError(f"no contract {contract.hex()[:16]} on this node")
        sla = self._sla(c) if self._sla is not None else {}
        breached = bool(c.lied or c.state in ("stopped", "disputed", "failed")
                        or sla.get("breached_windows") or c.slashed)
        return {**c.view(), "sla": sla, "breached": breached}

    def get_marketplace_stats(self, region: str, service: str = "compute.wasm") -> dict[str, Any]:
        return self._svc.core.stats(region, service, self._svc.ctx.clock()).to_json()

    def find_offers(self, service: str) -> list[Offer]:
        """Unexpired offers of `service` in this node's book from other providers (the onion
        role's hosted data finds its `fog.hosting` hosts here)."""
        now = self._svc.ctx.clock()
        me = bytes(self._svc.ctx.identity.verify_key)
        return [o for o in self._svc.core.book if o.service == service and o.valid_until > now and o.provider != me]

    def harvest_suspended(self) -> int:
        """Withdraw every offer of ours; returns how many."""
        return self._svc.withdraw_all()


def market_api(services: Services) -> MarketApi | None:
    """The market this node runs, or None."""
    api = services.get(SERVICE_NAME)
    if api is None:
        return None
    if not isinstance(api, MarketApi):
        raise TypeError(f"ctx.services {SERVICE_NAME!r} holds {type(api).__name__}, not a MarketApi")
    return api
