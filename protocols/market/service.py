"""The market role's engine (trio): carries out the core's actions and runs the operations the
RPC methods and `MarketApi` offer.

- `do(actions)`: the one dispatch table of `MarketCore` actions: `Publish` and `Send` are
  queued for the role's workers (gossip publish; a negotiation frame on its own short
  `/fognode/market/1.0.0` stream), `Refused` is counted and, when the peer is at fault,
  charged (overlay.penalize: a rate-limited WARNING), `Concluded` / `NegotiationFailed` wake
  whoever waits for that negotiation.
- `offer` / `withdraw` / `withdraw_all` (the hook a harvest suspension calls) / `offers`.
- `run_tasks(tasks, ...)`: the customer's whole path for a bag of WASM tasks: a signed demand
  matched on the local book (the matcher's column snapshot, when due, built in a worker thread), agreements negotiated with `providers` providers, the job stream
  and escrow for each (`customer.open_link`), the `Burst`, then each escrow's unspent rest
  refunded after its deadline by a background task (`contract.state` "settled").
  `market.request` is one task with replication k over k providers; `market.burst` N tasks.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import trio

from fognode.ledger.address import decode_address
from fognode.ledger.amounts import format_amount
from fognode.ledger.api import LedgerApi, ledger_api
from fognode.ledger.errors import OrderRejected, Reason
from fognode.ledger.escrow_client import CLOCK_MARGIN, EscrowMarginError
from fognode.node.errors import FognodeError
from fognode.node.role import NodeContext
from fognode.node.wire import digest
from fognode.protocols.market.actions import (Action, AuctionClosed, Concluded,
                                              NegotiationFailed, OffersExpired, Publish,
                                              Refused, Send)
from fognode.protocols.market.agreement import SLA, Agreement
from fognode.protocols.market.config import MarketConfig
from fognode.protocols.market.constraints import parse
from fognode.protocols.market.contracts import Contract, Contracts
from fognode.protocols.market.core import MarketCore
from fognode.protocols.market.customer import Burst, Link, open_link
from fognode.protocols.market.errors import MarketError
from fognode.protocols.market.jobwire import FUEL_UNIT, Task
from fognode.protocols.market.matching import build_columns
from fognode.protocols.market.messages import sign_demand
from fognode.protocols.market.metrics import MarketMetrics
from fognode.protocols.registry.api import ReputationService

log = logging.getLogger("fognode.market")

Progress = Callable[[dict[str, Any]], Awaitable[None]]
REFUND_RETRY = 1.0
AUCTION_SLACK = 5.0          # seconds past the auction window we wait for it to close
ACTION_QUEUE = 1024


def offer_view(row: dict[str, Any]) -> dict[str, Any]:
    """An offer's JSON view with its prices in tokens (per million fuel, CPU-second, GB-hour)."""
    return {**row, "prices": {u: format_amount(p) for u, p in row["prices"].items()}}


@dataclass(frozen=True)
class JobSpec:
    """What the customer wants run: one module, an export and one args tuple per task."""

    module: bytes
    export: str
    args: tuple[tuple[int, ...], ...]
    input: bytes | None
    fuel: int
    memory: int


class MarketService:
    def __init__(self, ctx: NodeContext, config: MarketConfig, core: MarketCore,
                 contracts: Contracts, metrics: MarketMetrics) -> None:
        self.ctx = ctx
        self.config = config
        self.core = core
        self.contracts = contracts
        self.metrics = metrics
        self.net_send, self.net_recv = trio.open_memory_channel[Publish | Send](ACTION_QUEUE)
        self._waiters: dict[tuple[str, bytes], trio.Event] = {}
        self._outcomes: dict[tuple[str, bytes], Agreement | str] = {}
        self._auctions: dict[bytes, trio.Event] = {}       # our open auctions' demand ids
        self._auction_keys: dict[bytes, list[tuple[str, bytes]]] = {}
        self._auction_bids: dict[bytes, int] = {}
        self.links: dict[bytes, Link] = {}
        self.nursery: trio.Nursery | None = None
        self._demands = 0
        self.refused: Counter[str] = Counter()   # "what/reason" -> count (market.stats shows it)

    # ---- collaborators ---------------------------------------------------------------------

    def ledger(self) -> LedgerApi | None:
        return ledger_api(self.ctx.services)

    def reputation(self) -> ReputationService | None:
        rep = self.ctx.services.get("reputation")
        return rep if isinstance(rep, ReputationService) else None

    def reputation_score(self, peer: str) -> float:
        rep = self.reputation()
        return rep.score(peer, "market.compute") if rep is not None else 1.0

    def payee(self) -> bytes:
        """Where our earnings go: `payee` from the config, else the node's default wallet."""
        if self.config.payee:
            return decode_address(self.config.payee)
        ledger = self.ledger()
        if ledger is None:
            raise MarketError("no ledger runs on this node: nothing can be paid")
        return ledger.default_wallet()

    # ---- the core's actions -----------------------------------------------------------------

    def do(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, (Publish, Send)):
                try:
                    self.net_send.send_nowait(a)
                except trio.WouldBlock:
                    log.info("market: action queue full, %s dropped", type(a).__name__)
            elif isinstance(a, Refused):
                self.metrics.rejected.labels(a.what, a.reason.value).inc()
                self.refused[f"{a.what}/{a.reason.value}"] += 1
                if a.reason.charged and a.peer and a.peer != self.ctx.peer_id:
                    self.ctx.overlay.penalize(a.peer, f"refused market {a.what}: {a.detail}",
                                              protocol=f"market/{a.what}")
                else:
                    log.debug("market: refused %s from %s: %s", a.what, a.peer, a.detail)
            elif isinstance(a, Concluded):
                self._finish((a.peer, a.agreement.terms.nonce), a.agreement)
            elif isinstance(a, NegotiationFailed):
                self.metrics.negotiations_failed.inc()
                self._finish((a.peer, a.nonce), a.reason)
            elif isinstance(a, AuctionClosed):
                self._auction_closed(a)
            elif isinstance(a, OffersExpired):
                log.debug("market: %s", a)

    def _finish(self, key: tuple[str, bytes], outcome: Agreement | str) -> None:
        ev = self._waiters.get(key)
        if ev is not None:
            self._outcomes[key] = outcome
            ev.set()

    # ---- offers --------------------------------------------------------------------------------

    def offer(self, *, id: str, service: str, cores: int, memory_mib: int, disk_mib: int,
              prices: dict[str, int], uptime_bp: int, ttl: int) -> dict[str, Any]:
        self.do(self.core.publish_offer(id=id, service=service, cores=cores,
                                        memory_mib=memory_mib, disk_mib=disk_mib, prices=prices,
                                        uptime_bp=uptime_bp, ttl=ttl, now=self.ctx.clock()))
        return offer_view(self.core.own[id][0].to_json())

    def withdraw(self, id: str) -> None:
        self.do(self.core.withdraw_offer(id, self.ctx.clock()))

    def withdraw_all(self) -> int:
        """Take every offer of ours off the market (the hook a harvest suspension calls)."""
        return len(self.withdraw_all_held())

    def withdraw_all_held(self) -> list[dict[str, Any]]:
        """Take every offer of ours off the market; returns what `offer` needs to publish each
        again (harvest_gate.py republishes them when the device may work again)."""
        held = [{"id": o.id, "service": o.service, "cores": o.cores, "memory_mib": o.memory_mib,
                 "disk_mib": o.disk_mib, "prices": self.core.base_prices.get(o.id, dict(o.prices)),
                 "uptime_bp": o.uptime_bp, "ttl": ttl}
                for o, ttl in self.core.own.values()]
        self.do(self.core.withdraw_all(self.ctx.clock()))
        return held

    def offers(self, filter: str = "", limit: int = 100) -> list[dict[str, Any]]:
        """Offers in our book passing `filter` (ConstraintError if it does not parse)."""
        flt = parse(filter)
        now = self.ctx.clock()
        rows = [o for o in self.core.book if o.valid_until > now and flt.matches(o.properties())]
        rows.sort(key=lambda o: (o.service, o.price("fuel") or 0, o.peer, o.id))
        return [offer_view(o.to_json()) for o in rows[:limit]]

    # ---- customer: negotiating -------------------------------------------------------------

    async def negotiate(self, *, fuel_units: int, budget: int, providers: int, seconds: int,
                        constraints: str, auction: bool = False, service: str = "compute.wasm",
                        usage: dict[str, int] | None = None, sla: SLA | None = None) -> list[Agreement]:
        """Agreements with up to `providers` providers for `fuel_units` million fuel each (or
        `usage` of a `service`, under `sla`), within `budget` in all: matched on our order book,
        or with `auction` the winners of a reverse auction (the demand goes out on gossip,
        providers bid for `auction_window` seconds, the cheapest bids above the reputation
        floor win at their bid). MarketError when none could be made."""
        now = self.ctx.clock()
        self._demands += 1
        demand = sign_demand(self.ctx.identity, id=f"job-{int(now)}-{self._demands}",
                             service=service, constraints=constraints,
                             usage=usage or {"fuel": max(1, fuel_units)}, budget=budget,
                             replication=providers, issued=int(now), deadline=int(now) + seconds)
        sla = sla or SLA(uptime_bp=0, penalty=0)
        if auction:
            closed = self._auctions[demand.demand_id] = trio.Event()
            try:
                self.do(self.core.open_auction(demand, sla=sla,
                                               debit_interval=self.config.debit_interval, now=now))
                with trio.move_on_after(self.config.auction_window + AUCTION_SLACK):
                    await closed.wait()
            finally:
                self._auctions.pop(demand.demand_id, None)
                keys = self._auction_keys.pop(demand.demand_id, None)
            if keys is None:
                raise MarketError("the auction did not close in time")
            if not keys:
                raise MarketError("no bid within the budget was placed in the auction "
                                  f"({self._auction_bids.pop(demand.demand_id, 0)} received)")
            self._auction_bids.pop(demand.demand_id, None)
        else:
            await self._fresh_snapshot(now)
            self.do(self.core.request(demand, sla=sla, debit_interval=self.config.debit_interval,
                                      now=now))
            keys = self._negotiations_of(demand.demand_id)
            for k in keys:
                self._waiters[k] = trio.Event()
        try:
            with trio.move_on_after(self.config.negotiation_timeout * (self.config.max_rounds + 1)):
                for k in keys:
                    await self._waiters[k].wait()
            agreements = [o for k in keys if isinstance(o := self._outcomes.get(k), Agreement)]
            failures = [f"{k[0]}: {o}" for k in keys if isinstance(o := self._outcomes.get(k), str)]
        finally:
            for k in keys:
                self._waiters.pop(k, None)
                self._outcomes.pop(k, None)
        if not agreements:
            raise MarketError("no agreement: " + ("; ".join(failures) or "negotiations timed out"))
        return agreements

    async def _fresh_snapshot(self, now: float) -> None:
        """Rebuild the matcher's column snapshot in a worker thread when a match at `now` would
        rebuild it (on the loop that was 6 ms at 2,500 offers, 33 ms at 10,000, plus numpy's
        import the first time)."""
        matcher, book = self.core.matcher, self.core.book
        if matcher.rebuild_due(now):
            version, offers = book.version, list(book)
            matcher.install(await trio.to_thread.run_sync(build_columns, offers), version, now)

    def _negotiations_of(self, demand_id: bytes) -> list[tuple[str, bytes]]:
        return [k for k, n in self.core.negotiations.active.items()
                if n.terms is not None and n.terms.demand == demand_id]

    def _auction_closed(self, a: AuctionClosed) -> None:
        """Our auction closed: the core has just opened the winners' negotiations; wait on
        them (registered here, before any reply can arrive)."""
        closed = self._auctions.get(a.demand)
        if closed is None:
            return
        keys = self._negotiations_of(a.demand)
        for k in keys:
            self._waiters[k] = trio.Event()
        self._auction_keys[a.demand] = keys
        self._auction_bids[a.demand] = a.bids
        closed.set()

    # ---- customer: running tasks -------------------------------------------------------------

    async def run_tasks(self, job: JobSpec, *, providers: int, replication: int, budget: int,
                        seconds: int, constraints: str = "", auction: bool = False,
                        progress: Progress | None = None) -> dict[str, Any]:
        ledger = self.ledger()
        if ledger is None:
            raise MarketError("no ledger runs on this node: escrow is impossible")
        t0 = trio.current_time()
        per_provider = math.ceil(len(job.args) * replication / providers)
        units = math.ceil(per_provider * job.fuel / FUEL_UNIT)
        agreements = await self.negotiate(fuel_units=units, budget=budget, providers=providers,
                                          seconds=seconds, constraints=constraints,
                                          auction=auction)
        t_neg = trio.current_time()
        links: list[Link] = []
        problems: list[str] = []

        async def link(ag: Agreement) -> None:
            try:
                lk = await open_link(self.ctx.overlay, ledger, ag, self.config, self.contracts,
                                     self.metrics, self.ctx.events.publish, self.ctx.clock(),
                                     timeout=self.config.escrow_wait)
            except (FognodeError, OSError, trio.TooSlowError) as e:
                log.warning("market: agreement %s not started: %s", ag.agreement_id.hex()[:16], e)
                problems.append(f"{type(e).__name__}: {e}")
                c = self.contracts.get(ag.agreement_id)
                if c is not None and c.escrow is not None:
                    self._schedule_refund(c)
                return
            links.append(lk)
            self.links[ag.agreement_id] = lk

        async with trio.open_nursery() as n:
            for ag in agreements:
                n.start_soon(link, ag)
        if not links:
            raise MarketError("no provider took the job: " + "; ".join(problems))
        t_esc = trio.current_time()
        blobs = {digest(job.module): job.module}
        if job.input is not None:
            blobs[digest(job.input)] = job.input
        tasks = [Task(i, digest(job.module), job.export, a,
                      digest(job.input) if job.input is not None else None, job.fuel, job.memory)
                 for i, a in enumerate(job.args)]
        burst = Burst(tasks, blobs, min(replication, len(links)), ledger=ledger,
                      config=self.config, metrics=self.metrics, publish=self.ctx.events.publish,
                      reputation=self.reputation(), clock=self.ctx.clock, progress=progress,
                      save=self.contracts.save,
                      key=self.ctx.identity)
        outcomes = await burst.run(links)
        t_run = trio.current_time()
        for lk in links:
            self.links.pop(lk.contract.id, None)
            self._schedule_refund(lk.contract)
        self.metrics.job_seconds.observe(t_run - t0)
        return {"tasks": outcomes,
                "contracts": [lk.contract.id.hex() for lk in links],
                "liars": sorted(lk.peer for lk in links if lk.liar),
                "dead": sorted(lk.peer for lk in links if lk.dead and not lk.liar),
                "seconds": {"negotiation": round(t_neg - t0, 4), "escrow": round(t_esc - t_neg, 4),
                            "transfer": round(burst.transfer_s, 4),
                            "execution": round(burst.decided_at - t_esc - burst.transfer_s, 4),
                            "debit_notes": round(t_run - burst.decided_at, 4)}}

    def cancel(self, c: Contract) -> None:
        """Stop a running contract of ours as the customer: its stream is closed, the provider
        stops, the escrow's rest comes back after the deadline."""
        lk = self.links.get(c.id)
        if lk is None:
            raise MarketError(f"contract {c.id.hex()[:16]} is not running here as customer")
        lk.dead = True
        c.state, c.detail = "stopped", "cancelled by the customer"
        if self.nursery is not None:
            self.nursery.start_soon(lk.stream.reset)

    # ---- settlement ----------------------------------------------------------------------------

    def _schedule_refund(self, c: Contract) -> None:
        if self.nursery is not None and c.escrow is not None:
            self.nursery.start_soon(self.refund_after, c)

    async def refund_after(self, c: Contract) -> None:
        """Refund the escrow's unspent rest once its deadline passed (retrying while validators'
        clocks or this replica lag); the contract is then "settled"."""
        assert c.escrow is not None
        ledger = self.ledger()
        if ledger is None:
            return
        wait = c.terms.deadline + CLOCK_MARGIN + 0.5 - self.ctx.clock()
        if wait > 0:
            await trio.sleep(wait)
        for attempt in range(600):
            try:
                await ledger.refund_escrow(c.escrow)
                break
            except EscrowMarginError:
                pass
            except OrderRejected as e:
                if e.reason is Reason.ESCROW_CLOSED:
                    break
                if e.reason is Reason.ESCROW_UNKNOWN and attempt > 30 and ledger.escrow(c.escrow) is None:
                    c.state, c.detail = "failed", "its escrow was never opened"
                    self.contracts.save(c)
                    return
                log.info("market: refund of %s refused (will retry): %s", c.escrow.hex()[:16], e)
            except FognodeError as e:
                log.info("market: refund of %s failed (will retry): %s", c.escrow.hex()[:16], e)
            await trio.sleep(REFUND_RETRY)
        rec = ledger.escrow(c.escrow)
        if rec is not None:
            c.paid = rec.paid
            c.slashed = rec.slashed
            c.refunded = rec.amount - rec.paid if rec.closed else None
            if rec.closed:
                c.state = "settled"
            self.contracts.save(c)
