"""Service contracts (`storage`, `fog.hosting`) and the contracts a restart left behind, on top of
the market's engine (service.py): the glue between negotiation, the customer's and the
provider's sides (sla_customer.py, sla_provider.py) and the contract store.

- `start(...)`: negotiate one agreement for `service` with the SLA terms asked (uptime,
  max response time, penalty per breached window, collateral, window length), priced in GB-hours
  (`units` of "gb_h" for the whole contract), open it, and probe / pay / settle it in the
  role's nursery; returns the contract once the escrow and the provider's collateral are on
  the ledger.
- `resume()`: once at start, for the contracts read back from the data dir. As customer: a
  contract whose escrow may exist (state escrowing and later, not settled) is refunded after
  its deadline; a service contract that was being probed is settled (its judged breached
  windows slashed, then refunded), its monitoring stopped (the windows after the restart stay
  unjudged: nothing is claimed for them). As provider: notes a crash left unpaid are paid out
  and running contracts marked stopped (sla_provider.ServiceProvider.resume).
- `compliance(contract)`: `monitor_sla_compliance` / `market.sla`.
"""
from __future__ import annotations

import logging
from typing import Any

from fognode.protocols.market.agreement import SLA
from fognode.protocols.market.contracts import Contract
from fognode.protocols.market.errors import MarketError
from fognode.protocols.market.metrics import MarketMetrics
from fognode.protocols.market.service import MarketService
from fognode.protocols.market.sla_customer import ServiceCustomer
from fognode.protocols.market.sla_provider import ServiceProvider

log = logging.getLogger("fognode.market")

SERVICE_TYPES = ("storage", "fog.hosting")
LIVE = ("negotiated", "escrowing", "escrowed", "running", "done", "stopped", "disputed")


class ServiceContracts:
    def __init__(self, svc: MarketService, metrics: MarketMetrics) -> None:
        ctx = svc.ctx
        self.svc = svc
        self.customer = ServiceCustomer(overlay=ctx.overlay, key=ctx.identity, config=svc.config,
                                        ledger=svc.ledger, contracts=svc.contracts, metrics=metrics,
                                        publish=ctx.events.publish, reputation=svc.reputation,
                                        clock=ctx.clock, refund=svc.refund_after)
        self.provider = ServiceProvider(key=ctx.identity, config=svc.config, ledger=svc.ledger,
                                        contracts=svc.contracts, metrics=metrics, publish=ctx.events.publish,
                                        payee=svc.payee, clock=ctx.clock)

    async def start(self, *, service: str, budget: int, seconds: int, units: int, sla: SLA,
                    constraints: str = "") -> Contract:
        """Negotiate and open one service contract; MarketError / FognodeError if that fails."""
        if service not in SERVICE_TYPES:
            raise MarketError(f"service contracts are for {', '.join(SERVICE_TYPES)}, not {service!r}")
        if self.svc.nursery is None:
            raise MarketError("the market role is not running")
        agreements = await self.svc.negotiate(fuel_units=0, budget=budget, providers=1, seconds=seconds,
                                              constraints=constraints, service=service,
                                              usage={"gb_h": units}, sla=sla)
        c, s = await self.customer.open(agreements[0])
        self.svc.nursery.start_soon(self.customer.run, c, s)
        return c

    async def resume(self) -> None:
        """Pick up the contracts the store held at start (see the module docstring)."""
        n = self.svc.nursery
        assert n is not None
        for c in self.svc.contracts.all():
            if c.role != "customer" or c.state not in LIVE or c.escrow is None:
                continue
            if c.state in ("negotiated", "escrowing", "escrowed", "running"):
                c.state, c.detail = "stopped", "this node restarted while the contract ran"
                self.svc.contracts.save(c)
            log.info("market: contract %s resumed after a restart: settling after its deadline %d",
                     c.id.hex()[:16], c.terms.deadline)
            if c.sla is not None:
                n.start_soon(self.customer.settle, c)
            else:
                n.start_soon(self.svc.refund_after, c)
        await self.provider.resume()

    def compliance(self, c: Contract) -> dict[str, Any]:
        return self.customer.compliance(c)

    def paid(self, c: Contract) -> int:
        """What `c`'s escrow has paid out so far (`ServiceCustomer.paid`)."""
        return self.customer.paid(c)
