"""The market role: a thin trio adapter over `MarketCore`, and the `market.*` RPC methods.

Wire: offers and withdrawals on gossip `fognode/market/offers/1`, auction demands on
`fognode/market/demands/1`; negotiation frames (proposals, counters, accepts, agreements,
bids) each on a short stream `/fognode/market/1.0.0` (one frame, then closed); jobs on
`/fognode/market/job/1.0.0` (jobwire.py: agreement, payee, escrow, content-addressed blobs,
tasks, results, debit notes). The role's loops: gossip handlers, the core's clock (every
`TICK` s), a publisher and `SENDERS` senders for the core's network actions.

The market follows the harvest policy where the node runs a harvest role (harvest_gate.py):
while the policy suspends work our offers are withdrawn and new ones refused; they are
published again, within the policy's capacity, when it resumes; a new offer's default cores
and memory are what the policy lets work use now. Provider jobs run under the harvest role
(provider.py: one `market` harvest session per agreement, its tasks in a persistent WASM
runner of the harvest executor, suspended, limited and metered with all work on this node).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import psutil
import trio

from fognode.ledger.amounts import format_amount, parse_amount
from fognode.ledger.errors import AmountError
from fognode.node.errors import FognodeError, RemoteProtocolError, RpcError, StreamClosed
from fognode.node.overlay import FramedStream, GossipMessage
from fognode.node.role import NodeContext, Role
from fognode.node.rpc.methods import FilePath, Progress, rpc_method
from fognode.protocols.harvest.api import harvest_api
from fognode.protocols.harvest.wasm_wire import MAX_WASM_MEMORY, MIN_WASM_MEMORY
from fognode.protocols.market import errors as E
from fognode.protocols.market.actions import Publish, Send
from fognode.protocols.market.api import MarketApi
from fognode.protocols.market.config import MarketConfig
from fognode.protocols.market.agreement import SLA
from fognode.protocols.market.contract_store import ContractStore
from fognode.protocols.market.contracts import FINISHED, Contract, Contracts
from fognode.protocols.market.core import DEMANDS_TOPIC, OFFERS_TOPIC, MarketCore
from fognode.protocols.market.errors import ConstraintError, MarketError
from fognode.protocols.market.harvest_gate import MIB, Capacity, HarvestGate
from fognode.protocols.market.jobwire import JOB_PROTOCOL
from fognode.protocols.market.messages import MAX_DEMAND_BYTES
from fognode.protocols.market.metrics import MarketMetrics
from fognode.protocols.market.pricing import REFERENCE_UNIT
from fognode.protocols.market.provider import ProviderJobs
from fognode.protocols.market.service import JobSpec, MarketService
from fognode.protocols.market.service_contracts import SERVICE_TYPES, ServiceContracts
from fognode.protocols.market.sla_messages import PROBE_PROTOCOL, SERVICE_PROTOCOL
from fognode.protocols.market.wirecommon import SERVICES

log = logging.getLogger("fognode.market")

MARKET_PROTOCOL = "/fognode/market/1.0.0"
TICK = 0.5
REPUBLISH = 5.0        # seconds between re-gossiping our offers (gossip drops; newcomers missed them)
SENDERS = 4
SEND_TIMEOUT = 10.0
MAX_MODULE_FILE = 16 * 1024 * 1024


def _amount(text: str, what: str, *, allow_zero: bool = False) -> int:
    try:
        return parse_amount(text, allow_zero=allow_zero)
    except AmountError as e:
        raise RpcError(E.BAD_REQUEST, f"{what}: {e}") from None


def _ranges(*checks: tuple[str, float, float, float, str]) -> None:
    """BAD_REQUEST naming the first parameter (name, value, low, high, unit) out of its range."""
    for name, value, lo, hi, unit in checks:
        if not lo <= value <= hi:
            raise RpcError(E.BAD_REQUEST, f"{name} must be {lo:,}..{hi:,}{unit}, got {value:,.15g}")


def read_module(path: str) -> bytes:
    """A module file: binary WASM as is, `.wat` text compiled by wasmtime (RpcError BAD_REQUEST
    naming the problem). Anything else is sent as is: the provider reports invalid_module."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_MODULE_FILE:
            raise RpcError(E.BAD_REQUEST, f"module {path}: over {MAX_MODULE_FILE} bytes")
        data = p.read_bytes()
    except OSError as e:
        raise RpcError(E.BAD_REQUEST, f"module {path}: {e.strerror or e}") from None
    if p.suffix == ".wat":
        import wasmtime   # here, not at the top: the daemon's start does not need it (issue 16)

        try:
            return bytes(wasmtime.wat2wasm(data.decode("utf-8", errors="replace")))
        except wasmtime.WasmtimeError as e:
            raise RpcError(E.BAD_REQUEST, f"module {path}: not valid WAT text: "
                                          f"{str(e).splitlines()[0][:200]}") from None
    return data


class MarketRole(Role):
    """Offers, matching, agreements, escrowed and metered WASM jobs, bursts."""

    name = "market"
    Config = MarketConfig
    topics = (OFFERS_TOPIC, DEMANDS_TOPIC)
    stream_ids = (MARKET_PROTOCOL, JOB_PROTOCOL, SERVICE_PROTOCOL, PROBE_PROTOCOL)

    def __init__(self, ctx: NodeContext, config: MarketConfig) -> None:
        super().__init__(ctx, config)
        self.config: MarketConfig = config
        self.metrics = MarketMetrics.create(ctx.metrics)
        self.contracts = Contracts(store=ContractStore(ctx.role_dir("market") / "contracts"))
        self.contracts.load()
        self.core = MarketCore(ctx.identity, config, region=ctx.region,
                               reputation=self._reputation, latency=ctx.overlay.latency)
        self.service: MarketService = MarketService(ctx, config, self.core, self.contracts,
                                                    self.metrics)
        self.provider = ProviderJobs(key=ctx.identity, config=config, ledger=self.service.ledger,
                                     harvest=lambda: harvest_api(ctx.services),
                                     contracts=self.contracts,
                                     metrics=self.metrics, publish=ctx.events.publish,
                                     payee=self.service.payee, clock=ctx.clock)
        self.services = ServiceContracts(self.service, self.metrics)
        self.api = MarketApi(self.service, self.services.compliance)
        self.gate = HarvestGate(withdraw_all=self.service.withdraw_all_held,
                                republish=self._republish)

    def _republish(self, params: dict[str, Any]) -> None:
        try:
            self.service.offer(**params)
        except (MarketError, RemoteProtocolError) as e:
            log.warning("market: could not publish offer %r again after the harvest resume: %s",
                        params.get("id"), e)

    def _capacity(self) -> Capacity | None:
        """What the harvest policy lets work use now; None without a harvest role."""
        api = harvest_api(self.ctx.services)
        info = api.state() if api is not None else None
        if info is None:
            return None
        return Capacity(cores=info.free_cores, memory_mib=info.free_memory_bytes // MIB)

    def _follow_harvest(self) -> None:
        """Withdraw our offers while the harvest policy suspends work; publish them again
        (within its capacity) when it resumes (harvest_gate.py)."""
        api = harvest_api(self.ctx.services)
        suspension = api.suspension() if api is not None else None
        was = self.gate.suspended
        gone, back = self.gate.check(suspension, self._capacity())
        if was is None and self.gate.suspended is not None:
            log.info("market: harvest suspended (%s): withdrew %d offer(s)", suspension, gone)
        elif was is not None and self.gate.suspended is None:
            log.info("market: harvest resumed: %d offer(s) published again", back)

    def _reputation(self, peer: str) -> float:
        return self.service.reputation_score(peer)

    # ---- network ------------------------------------------------------------------------------

    async def _on_gossip(self, msg: GossipMessage) -> None:
        self.service.do(self.core.on_gossip(msg.topic, msg.origin, msg.data, self.ctx.clock()))

    async def _serve_negotiation(self, s: FramedStream) -> None:
        try:
            while True:
                data = await s.recv_bytes(max_size=MAX_DEMAND_BYTES)
                self.service.do(self.core.on_stream(s.remote_peer, data, self.ctx.clock()))
        except StreamClosed:
            pass

    async def _serve_job(self, s: FramedStream) -> None:
        try:
            await self.provider.serve(s)
        except RemoteProtocolError as e:
            self.metrics.rejected.labels("job", "malformed").inc()
            self.ctx.overlay.penalize(s.remote_peer, f"market job: {e}", protocol="market/job")
        except StreamClosed:
            pass

    async def _serve_service(self, s: FramedStream) -> None:
        try:
            await self.services.provider.serve(s)
        except RemoteProtocolError as e:
            self.metrics.rejected.labels("service", "malformed").inc()
            self.ctx.overlay.penalize(s.remote_peer, f"market service: {e}", protocol="market/service")
        except StreamClosed:
            pass

    async def _serve_probe(self, s: FramedStream) -> None:
        try:
            await self.services.provider.serve_probe(s)
        except RemoteProtocolError as e:
            self.metrics.rejected.labels("probe", "malformed").inc()
            self.ctx.overlay.penalize(s.remote_peer, f"market probe: {e}", protocol="market/probe")
        except StreamClosed:
            pass

    async def _send(self, a: Send) -> None:
        """One frame on its own stream; opening the stream is tried twice (nothing was sent
        yet, so a retry cannot duplicate a negotiation message)."""
        for attempt in (1, 2):
            try:
                with trio.fail_after(SEND_TIMEOUT):
                    s = await self.ctx.overlay.open_stream(a.peer, MARKET_PROTOCOL)
                break
            except (FognodeError, OSError, trio.TooSlowError):
                if attempt == 2:
                    raise
        with trio.fail_after(SEND_TIMEOUT):
            try:
                await s.send_bytes(a.data)
            finally:
                await s.close()

    async def _publisher(self, recv: trio.MemoryReceiveChannel[Publish | Send]) -> None:
        async for a in recv:
            try:
                if isinstance(a, Publish):
                    with trio.fail_after(SEND_TIMEOUT):
                        await self.ctx.overlay.publish(a.topic, a.data)
                else:
                    await self._send(a)
            except (FognodeError, OSError, trio.TooSlowError) as e:
                log.info("market: %s to %s failed: %r", type(a).__name__,
                         getattr(a, "peer", getattr(a, "topic", "")), e)

    async def _clock(self) -> None:
        last = trio.current_time()
        while True:
            self._follow_harvest()
            self.service.do(self.core.tick(self.ctx.clock()))
            if trio.current_time() - last >= REPUBLISH:
                last = trio.current_time()
                self.service.do([Publish(OFFERS_TOPIC, o.encode()) for o, _ in self.core.own.values()])
            await trio.sleep(TICK)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        ov = self.ctx.overlay
        ov.set_stream_handler(MARKET_PROTOCOL, self._serve_negotiation)
        ov.set_stream_handler(JOB_PROTOCOL, self._serve_job)
        ov.set_stream_handler(SERVICE_PROTOCOL, self._serve_service)
        ov.set_stream_handler(PROBE_PROTOCOL, self._serve_probe)
        self.metrics.offers_known.set_function(lambda: len(self.core.book))
        self.metrics.own_offers.set_function(lambda: len(self.core.own))
        self.metrics.contracts_active.set_function(lambda: sum(c.state not in FINISHED for c in self.contracts.all()))
        await ov.subscribe(OFFERS_TOPIC, self._on_gossip)
        await ov.subscribe(DEMANDS_TOPIC, self._on_gossip)
        try:
            async with trio.open_nursery() as n:
                self.service.nursery = n
                # one ordered lane would let a slow stream hold up gossip: SENDERS share the queue
                for _ in range(SENDERS):
                    n.start_soon(self._publisher, self.service.net_recv.clone())
                n.start_soon(self._clock)
                n.start_soon(self.services.resume)
                self.ctx.services.provide("market", self.api)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.ctx.services.withdraw("market")
            self.service.nursery = None

    def health_detail(self) -> dict[str, Any]:
        return {"offers_known": len(self.core.book), "own_offers": len(self.core.own),
                "contracts": self.contracts.count()}

    # ---- RPC ----------------------------------------------------------------------------------

    def _contract(self, id: str) -> Contract:
        c = self.contracts.find(id) if len(id) >= 4 else None
        if c is None:
            raise RpcError(E.UNKNOWN_CONTRACT, f"no contract {id!r} on this node (give at least "
                                               "4 hex digits of its id)")
        return c

    @rpc_method("market.offer")
    async def rpc_offer(self, price: str, id: str = "wasm", service: str = "compute.wasm",
                        cores: int | None = None, memory_mib: int | None = None,
                        disk_mib: int = 0, uptime: float = 99.0, ttl: int = 3600,
                        price_cpu_s: str | None = None, price_gb_h: str | None = None) -> dict[str, Any]:
        """Publish (or replace) offer ID: sell SERVICE at PRICE tokens per million WASM fuel
        (and PRICE_CPU_S per CPU-second, PRICE_GB_H per GB-hour), CORES and MEMORY_MIB
        (default: what this device's harvest policy lets work use now, else this machine's;
        refused while the policy suspends work, and withdrawn when it suspends), UPTIME % guaranteed, valid TTL seconds (republished before
        it lapses). Earnings go to [protocols.market] payee (default: the node's wallet)."""
        if service not in SERVICES:
            raise RpcError(E.BAD_REQUEST, f"service must be one of {', '.join(SERVICES)}")
        prices = {"fuel": _amount(price, "price", allow_zero=True)}
        for unit, v in (("cpu_s", price_cpu_s), ("gb_h", price_gb_h)):
            if v is not None:
                prices[unit] = _amount(v, f"price_{unit}", allow_zero=True)
        _ranges(("uptime", uptime, 0, 100, " %"), ("ttl", ttl, 60, 7 * 86_400, " s"))
        self._follow_harvest()
        refusal = self.gate.refusal()
        if refusal is not None:
            raise RpcError(E.BAD_REQUEST, refusal)
        cap = self._capacity()      # the harvest policy's allowance, where the node runs one
        try:
            return self.service.offer(
                id=id, service=service,
                cores=cores or (cap.cores if cap is not None and cap.cores > 0 else os.cpu_count() or 1),
                memory_mib=memory_mib if memory_mib is not None
                else (cap.memory_mib if cap is not None and cap.memory_mib > 0
                      else psutil.virtual_memory().available // 2**20),
                disk_mib=disk_mib, prices=prices, uptime_bp=round(uptime * 100), ttl=ttl)
        except (MarketError, RemoteProtocolError) as e:
            raise RpcError(E.BAD_REQUEST, str(e)) from None

    @rpc_method("market.withdraw")
    async def rpc_withdraw(self, id: str = "wasm") -> dict[str, Any]:
        """Take our offer ID off the market (a signed withdrawal on gossip)."""
        try:
            self.service.withdraw(id)
        except MarketError as e:
            raise RpcError(E.UNKNOWN_OFFER, str(e)) from None
        return {"withdrawn": id}

    @rpc_method("market.offers")
    async def rpc_offers(self, filter: str = "", limit: int = 100) -> list[dict[str, Any]]:
        """Offers in this node's order book passing FILTER, an LDAP-style filter such as
        '(&(price.fuel<=500000)(cores>=2)(region=eu-*))' over service, provider, id, region,
        cores, memory_mib, disk_mib, uptime, valid_until, price.fuel, price.cpu_s, price.gb_h
        (prices in micro-units); by service, then cheapest first."""
        if not 1 <= limit <= 10_000:
            raise RpcError(E.BAD_REQUEST, "limit must be between 1 and 10000")
        try:
            return self.service.offers(filter, limit)
        except ConstraintError as e:
            raise RpcError(E.BAD_FILTER, str(e)) from None

    def _job(self, module: str, export: str, args: list[tuple[int, ...]], input: str | None,
             fuel: int, memory_mib: int) -> JobSpec:
        mem = memory_mib * 2**20
        if not MIN_WASM_MEMORY <= mem <= MAX_WASM_MEMORY or not 1 <= fuel <= 2**62:
            raise RpcError(E.BAD_REQUEST, f"memory_mib must be 1..{MAX_WASM_MEMORY >> 20} and "
                                          "fuel 1..2^62")
        data = None
        if input is not None:
            try:
                data = Path(input).read_bytes()
            except OSError as e:
                raise RpcError(E.BAD_REQUEST, f"input {input}: {e.strerror or e}") from None
            if len(data) > self.config.max_blob_bytes:
                raise RpcError(E.BAD_REQUEST, f"input {input}: over max_blob_bytes")
        mod = read_module(module)
        if len(mod) > self.config.max_blob_bytes:
            raise RpcError(E.BAD_REQUEST, f"module {module}: over max_blob_bytes")
        return JobSpec(mod, export, tuple(args), data, fuel, mem)

    async def _run(self, job: JobSpec, *, providers: int, replication: int, budget: str,
                   seconds: int | None, filter: str, auction: bool,
                   progress: Progress) -> dict[str, Any]:
        secs = seconds or self.config.job_deadline
        if not 10 <= secs <= 30 * 86_400:
            raise RpcError(E.BAD_REQUEST, "seconds must be between 10 and 2592000")
        amount = _amount(budget, "budget")   # a bad budget is error 304, not a failed payment (307)
        try:
            return await self.service.run_tasks(job, providers=providers, replication=replication,
                                                budget=amount, seconds=secs,
                                                constraints=filter, auction=auction,
                                                progress=progress)
        except ConstraintError as e:
            raise RpcError(E.BAD_FILTER, str(e)) from None
        except MarketError as e:
            code = E.NO_MATCH if "match" in str(e) else E.NEGOTIATION_FAILED
            raise RpcError(code, str(e)) from None
        except FognodeError as e:
            raise RpcError(E.PAYMENT_FAILED, f"{type(e).__name__}: {e}") from None

    @rpc_method("market.request")
    async def rpc_request(self, module: FilePath, export: str, budget: str,
                          args: list[int] | None = None, input: FilePath | None = None,
                          fuel: int = 1_000_000_000, memory_mib: int = 64, replication: int = 1,
                          seconds: int | None = None, filter: str = "",
                          auction: bool = False) -> dict[str, Any]:
        """Run EXPORT of MODULE (.wasm, or .wat text) once with integer ARGS (or the bytes of
        INPUT) on REPLICATION providers matched on the order book (FILTER), paying at most
        BUDGET tokens in all from this node's wallet through escrow; at most FUEL fuel and
        MEMORY_MIB of memory; the agreements end SECONDS from now (the unspent escrow comes
        back then). Replicas are compared: a provider outvoted by the majority is not paid.
        With AUCTION the providers are chosen by a reverse auction instead: the demand goes
        out on gossip, providers bid for [protocols.market] auction_window seconds, and the
        cheapest bids win at their bid."""
        if not 1 <= replication <= 16:
            raise RpcError(E.BAD_REQUEST, "replication must be between 1 and 16")
        job = self._job(module, export, [tuple(args or ())], input, fuel, memory_mib)
        out = await self._run(job, providers=replication, replication=replication, budget=budget,
                              seconds=seconds, filter=filter, auction=auction,
                              progress=Progress())
        task = out.pop("tasks")[0]
        return {**task, **out}

    @rpc_method("market.burst")
    async def rpc_burst(self, module: FilePath, export: str, budget: str,
                        values: list[int] | None = None, count: int | None = None,
                        first: int = 0, providers: int = 4, replication: int = 1,
                        fuel: int = 1_000_000_000, memory_mib: int = 64,
                        seconds: int | None = None, filter: str = "", auction: bool = False, *,
                        progress: Progress = Progress()) -> dict[str, Any]:
        """Run EXPORT of MODULE once per integer of VALUES (or of FIRST..FIRST+COUNT-1) across
        PROVIDERS providers (each task on REPLICATION of them), within BUDGET tokens and
        SECONDS; tasks of a provider that dies or is outvoted go to the others. With AUCTION
        the providers are the winners of a reverse auction (see market.request). Prints
        progress as tasks complete; returns every task's result."""
        if values is None:
            if count is None:
                raise RpcError(E.BAD_REQUEST, "give VALUES or COUNT")
            values = list(range(first, first + count))
        if not 1 <= len(values) <= self.config.max_tasks:
            raise RpcError(E.BAD_REQUEST, f"a burst holds 1..{self.config.max_tasks} tasks")
        if not 1 <= providers <= 16 or not 1 <= replication <= providers:
            raise RpcError(E.BAD_REQUEST, "providers must be 1..16 and replication 1..providers")
        job = self._job(module, export, [(v,) for v in values], None, fuel, memory_mib)
        return await self._run(job, providers=providers, replication=replication, budget=budget,
                               seconds=seconds, filter=filter, auction=auction,
                               progress=progress)

    @rpc_method("market.contracts")
    async def rpc_contracts(self) -> list[dict[str, Any]]:
        """This node's contracts (as customer or provider), oldest first."""
        return [c.row() for c in self.contracts.all()]

    @rpc_method("market.contract")
    async def rpc_contract(self, id: str) -> dict[str, Any]:
        """Contract ID (a hex prefix of the agreement id): terms, escrow, tasks, fuel, what
        was due, paid and refunded, and its state."""
        return (c := self._contract(id)).view(self.services.paid(c))

    @rpc_method("market.service")
    async def rpc_service(self, service: str, budget: str, seconds: int, gb_hours: int = 1,
                          uptime: float = 99.0, max_response_ms: int = 1000, penalty: str = "0",
                          collateral: str = "0", window: int = 60, filter: str = "") -> dict[str, Any]:
        """Buy SERVICE (storage or fog.hosting) for SECONDS from the best offer passing FILTER:
        GB_HOURS GB-hours at the offer's gb_h price, paid pro rata of the time served from an
        escrow of BUDGET tokens. SLA: in every WINDOW seconds the provider answers UPTIME % of
        this node's probes within MAX_RESPONSE_MS; each breached window takes PENALTY tokens
        from the COLLATERAL the provider locks (market.sla shows the account). Returns the
        contract once the escrow and the collateral are on the ledger."""
        if service not in SERVICE_TYPES:
            raise RpcError(E.BAD_REQUEST, f"service must be one of {', '.join(SERVICE_TYPES)}")
        pen, col = _amount(penalty, "penalty", allow_zero=True), _amount(collateral, "collateral", allow_zero=True)
        _ranges(("uptime", uptime, 0, 100, " %"), ("max_response_ms", max_response_ms, 1, 3_600_000, " ms"),
                ("window", window, 1, 86_400, " s"), ("seconds", seconds, 10, 30 * 86_400, " s"), ("gb_hours", gb_hours, 1, 10**12, ""))
        if col and pen > col:
            raise RpcError(E.BAD_REQUEST, "penalty must not exceed the collateral it is taken from")
        sla = SLA(uptime_bp=round(uptime * 100), max_response_ms=max_response_ms, penalty=pen,
                  collateral=col, window=window)
        amount = _amount(budget, "budget")   # a bad budget is error 304, not a failed payment (307)
        try:
            c = await self.services.start(service=service, budget=amount, seconds=seconds,
                                          units=gb_hours, sla=sla, constraints=filter)
        except ConstraintError as e:
            raise RpcError(E.BAD_FILTER, str(e)) from None
        except MarketError as e:
            code = E.NO_MATCH if "match" in str(e) else E.NEGOTIATION_FAILED
            raise RpcError(code, str(e)) from None
        except FognodeError as e:
            raise RpcError(E.PAYMENT_FAILED, f"{type(e).__name__}: {e}") from None
        return c.view()

    @rpc_method("market.sla")
    async def rpc_sla(self, id: str) -> dict[str, Any]:
        """The SLA account of contract ID: probes, failures, observed uptime and response
        times, each judged window, the breached ones, the penalty due and what was slashed."""
        return self.services.compliance(self._contract(id))

    @rpc_method("market.cancel")
    async def rpc_cancel(self, id: str) -> dict[str, Any]:
        """Stop running contract ID (as its customer): the provider stops and keeps what was
        paid; the rest of the escrow comes back after the deadline."""
        c = self._contract(id)
        try:
            self.service.cancel(c)
        except MarketError as e:
            raise RpcError(E.UNKNOWN_CONTRACT, str(e)) from None
        return c.view()

    @rpc_method("market.stats")
    async def rpc_stats(self, region: str | None = None,
                        service: str = "compute.wasm") -> dict[str, Any]:
        """Supply, demand, fill ratio, price percentiles and the EWMA of agreed prices of SERVICE in
        REGION (default: ours), from this node's order book and what it heard; for each offer of ours
        its base price, the price it asks now and the one pricing = "dynamic" would ask; the market
        messages this node refused, by kind and reason (offer/duplicate: mostly the copies providers
        re-gossip every 5 s of offers it holds; expected, never charged)."""
        if service not in SERVICES:
            raise RpcError(E.BAD_REQUEST, f"service must be one of {', '.join(SERVICES)}")
        st = self.core.stats(region if region is not None else self.ctx.region, service,
                             self.ctx.clock())
        unit = REFERENCE_UNIT[service]
        now = self.ctx.clock()
        own = [{"id": o.id, "base": format_amount(base),
                "offered": format_amount(o.price(unit) or 0),
                "suggested": format_amount(self.core.suggest_price(service, base, now))}
               for o, _ in self.core.own.values()
               if o.service == service
               and (base := self.core.base_prices.get(o.id, dict(o.prices)).get(unit)) is not None]
        return {**st.to_rpc(), "pricing": self.config.pricing, "unit": unit, "own_offers": own,
                "contracts": len(self.contracts.all()),
                "offers_known": len(self.core.book), "refused": dict(self.service.refused)}
