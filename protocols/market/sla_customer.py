"""The customer's side of service contracts (trio): open one, probe the provider, pay for the
time served, and settle: slash proven SLA breaches, then refund the rest.

`ServiceCustomer.open(agreement)` opens the service stream (sla_messages.py), learns the payee,
saves the contract (with the escrow id it is about to open: write before acting), opens the
escrow with the agreement's SLA terms (uptime_ppm = 100 * uptime_bp, the penalty, this node's
identity key as the one witness, threshold 1), and waits until the provider's collateral is
locked on our replica. `run(contract, stream)` then, until the deadline:

- probes the provider every `probe_interval` s, each probe on its own stream under a timeout of
  `max_response_ms`; a pong counts only if it answers that probe (contract, seq, random nonce)
  and is signed by the provider (sla_messages.Pong.answers). The SLA monitor (sla.py) judges
  each window once it is over: a breached window emits `SLABreach` ("sla_window"), counts in
  `fognode_market_sla_breaches_total{kind="sla_window"}`, and is saved with the contract;
- co-signs the provider's debit requests up to the pro-rata price at our clock plus the wallet's
  clock margin (sla.prorata_due), saving the contract before the note goes out.

`settle(contract)` after the deadline (and the wallet's margin): one slash order per breached
window, in window order, each carrying a `BreachReport` (window, probes, failures) signed by
our identity key as witness, while the collateral lasts; then the reputation report (one bad
outcome weighted by the breached windows, or one good outcome) and the refund (the caller's
`refund`, which closes the escrow). The stream going away does not stop the probing: a provider
that dies is down, and that is what the SLA measures.

Trust. The escrow names this node's identity key as its one witness (threshold 1), so a breach
report is the customer's word. Validators check that it is signed by that witness, sent by the
escrow's customer between the deadline and the end of the grace period (by their clocks), for a
window after the last slashed one, with failures below the escrowed uptime, while collateral
is left; they cannot check that the probes were sent, failed, or belong to a real window. A
lying customer can therefore take the whole collateral (never more: each slash takes
min(penalty, collateral left), the provider chose the collateral and caps it with
`sla_max_collateral`), and it pays a fee per slash. Independent witnesses (the escrow takes up
to 16 with any threshold) are the way to make a report more than the customer's word; the
market does not recruit them yet.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Awaitable, Callable

import trio
from nacl.signing import SigningKey

from fognode.ledger.amounts import format_amount
from fognode.ledger.api import LedgerApi
from fognode.ledger.escrow_client import CLOCK_MARGIN, EscrowMarginError
from fognode.ledger.escrow_orders import BreachReport
from fognode.ledger.errors import OrderRejected
from fognode.node.errors import FognodeError, LocalProtocolError, StreamClosed
from fognode.node.overlay import Overlay, FramedStream
from fognode.protocols.market.agreement import Agreement
from fognode.protocols.market.config import MarketConfig
from fognode.protocols.market.contracts import Contract, Contracts
from fognode.protocols.market.errors import MarketError
from fognode.protocols.market.events import ServiceContractCreated, SLABreach
from fognode.protocols.market.jobwire import Payee, Simple, simple
from fognode.protocols.market.metrics import MarketMetrics
from fognode.protocols.market.sla import MIN_PROBES, SlaMonitor, WindowVerdict, note_to_sign
from fognode.protocols.market.sla_messages import (MAX_FRAME, MAX_PROBE_FRAME, NONCE, PROBE_PROTOCOL,
                                                   SERVICE_PROTOCOL, Probe, Ready, decode_pong,
                                                   decode_service)
from fognode.protocols.registry.api import ReputationService

log = logging.getLogger("fognode.market")

REPUTATION_SERVICE = "market.service"
RETRY = 1.0


class ServiceCustomer:
    def __init__(self, *, overlay: Overlay, key: SigningKey, config: MarketConfig,
                 ledger: Callable[[], LedgerApi | None], contracts: Contracts, metrics: MarketMetrics,
                 publish: Callable[[Any], None], reputation: Callable[[], ReputationService | None],
                 clock: Callable[[], float], refund: Callable[[Contract], Awaitable[None]]) -> None:
        self.overlay = overlay
        self.key = key
        self.config = config
        self.ledger = ledger
        self.contracts = contracts
        self.metrics = metrics
        self.publish = publish
        self.reputation = reputation
        self.clock = clock
        self.refund = refund

    def probe_interval(self, c: Contract) -> float:
        """The configured interval, but at least 2 * MIN_PROBES probes per window."""
        return min(self.config.sla_probe_interval, c.terms.sla.window / (2 * MIN_PROBES))

    # ---- opening ------------------------------------------------------------------------------

    async def open(self, ag: Agreement) -> tuple[Contract, FramedStream]:
        """Stream, payee, escrow with the SLA terms, the provider's collateral. Raises MarketError
        (the provider refused or broke the protocol) or FognodeError (stream, ledger)."""
        ledger = self.ledger()
        if ledger is None:
            raise MarketError("no ledger runs on this node: escrow is impossible")
        t, aid = ag.terms, ag.agreement_id
        c = self.contracts.add(Contract(aid, "customer", t, self.clock()))
        s = await self.overlay.open_stream(c.peer, SERVICE_PROTOCOL)
        try:
            with trio.fail_after(self.config.escrow_wait):
                await s.send(simple("hello", agreement=ag.encode()))
                msg = decode_service(await s.recv(max_size=MAX_FRAME), peer=c.peer)
            if isinstance(msg, Simple) and msg.t == "stop":
                raise MarketError(f"provider {c.peer} refused the contract: {msg.reason}")
            if not isinstance(msg, Payee) or msg.agreement != aid or not msg.signed_by(t.provider):
                raise MarketError(f"provider {c.peer} sent no valid payee statement")
            c.payee = msg.payee
            c.escrow, c.state = ledger.escrow_id(ledger.default_wallet(), aid), "escrowing"
            self.contracts.save(c)                 # before the escrow exists: a restart refunds it
            await ledger.open_escrow(aid, msg.payee, t.max_total, t.deadline, self.config.escrow_grace,
                                     uptime_ppm=100 * t.sla.uptime_bp, penalty=t.sla.penalty,
                                     witnesses=(t.customer,), threshold=1, timeout=self.config.escrow_wait)
            c.state = "escrowed"
            self.contracts.save(c)
            await s.send(simple("escrow", escrow=c.escrow))
            with trio.fail_after(2 * self.config.escrow_wait):
                msg = decode_service(await s.recv(max_size=MAX_FRAME), peer=c.peer)
                if isinstance(msg, Simple) and msg.t == "stop":
                    raise MarketError(f"provider {c.peer} stopped: {msg.reason}")
                if not isinstance(msg, Ready) or msg.collateral != t.sla.collateral:
                    raise MarketError(f"provider {c.peer} did not lock the agreed collateral")
                while True:
                    e = ledger.escrow(c.escrow)
                    if e is not None and e.collateral >= t.sla.collateral:
                        break
                    await trio.sleep(0.2)
        except BaseException as e:
            c.state = "failed" if c.escrow is None or c.state == "negotiated" else "stopped"
            c.detail = f"{type(e).__name__}: {e}"[:300]
            self.contracts.save(c)
            with trio.move_on_after(1):
                await s.reset()
            raise
        c.collateral, c.state = t.sla.collateral, "running"
        c.sla = SlaMonitor(t.sla, float(t.start), float(t.deadline), self.probe_interval(c))
        self.contracts.save(c)
        self.metrics.agreements.labels("customer").inc()
        self.publish(ServiceContractCreated(aid.hex(), "customer", c.peer, t.service, t.max_total, t.deadline))
        return c, s

    # ---- running ------------------------------------------------------------------------------

    async def run(self, c: Contract, s: FramedStream | None) -> None:
        """Probe and pay until the deadline, then settle. Cancellable (a restart resumes the
        settlement from the contract store)."""
        try:
            async with trio.open_nursery() as n:
                if s is not None:
                    n.start_soon(self._reader, c, s)
                await self._prober(c, n)
                n.cancel_scope.cancel()
        finally:
            if s is not None:
                await s.reset()
        if c.state == "running":
            c.state = "done"
        self.contracts.save(c)
        await self.settle(c)

    async def _prober(self, c: Contract, n: trio.Nursery) -> None:
        mon = c.sla
        assert mon is not None
        seq = 0
        while not mon.done(self.clock()):
            wait = mon.next_probe() - self.clock()
            if wait > 0:
                await trio.sleep(wait)
            now = self.clock()
            if mon.done(now):
                break
            mon.last_probe = now
            seq += 1
            n.start_soon(self._probe, c, seq, now)
            self._judge(c, now)
        with trio.move_on_after(c.terms.sla.max_response_ms / 1000 + 2):
            while mon.judged_upto < mon.window_count:
                self._judge(c, self.clock())
                await trio.sleep(0.2)

    async def _probe(self, c: Contract, seq: int, sent: float) -> None:
        assert c.sla is not None
        probe = Probe(c.id, seq, os.urandom(NONCE))
        t0 = trio.current_time()
        rtt: int | None = None
        with trio.move_on_after(c.terms.sla.max_response_ms / 1000):
            try:
                ps = await self.overlay.open_stream(c.peer, PROBE_PROTOCOL)
                try:
                    await ps.send(probe.wire())
                    pong = decode_pong(await ps.recv(max_size=MAX_PROBE_FRAME), peer=c.peer)
                    if pong.answers(probe, c.terms.provider):
                        rtt = int((trio.current_time() - t0) * 1000)
                finally:
                    await ps.reset()
            except (FognodeError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
                log.debug("market: probe %d of %s failed: %s", seq, c.id.hex()[:16], e)
        c.sla.record(sent, rtt)

    def _judge(self, c: Contract, now: float) -> None:
        assert c.sla is not None
        verdicts = c.sla.tick(now - 1.0)           # 1 s for the window's last probes to be recorded
        for v in verdicts:
            if v.breached:
                self._breach(c, v)
        if verdicts:
            self.contracts.save(c)

    def _breach(self, c: Contract, v: WindowVerdict) -> None:
        detail = (f"window {v.window}: {v.probes - v.failures} of {v.probes} probes answered within "
                  f"{c.terms.sla.max_response_ms} ms, below {c.terms.sla.uptime_bp / 100:g} %")
        log.warning("market: SLA breach by %s on contract %s: %s", c.peer, c.id.hex()[:16], detail)
        self.metrics.breaches.labels("sla_window").inc()
        self.publish(SLABreach(c.id.hex(), c.peer, "sla_window", detail))

    async def _reader(self, c: Contract, s: FramedStream) -> None:
        ledger = self.ledger()
        try:
            while True:
                msg = decode_service(await s.recv(max_size=MAX_FRAME), peer=c.peer)
                if isinstance(msg, Simple) and msg.t == "debit" and ledger is not None and c.escrow is not None:
                    cost = c.terms.estimated_cost() or c.terms.max_total
                    due = note_to_sign(msg.due, c.due, cost, c.terms.max_total, c.terms.start, c.terms.deadline,
                                       self.clock(), CLOCK_MARGIN)
                    if due < msg.due:
                        log.info("market: provider %s asks %d under %s; %d is due by our clock", c.peer,
                                 msg.due, c.id.hex()[:16], due)
                    if due < 1:
                        continue
                    note = await ledger.sign_debit_note(c.escrow, due)
                    c.due = due
                    self.contracts.save(c)         # before the note leaves
                    await s.send(simple("note", due=due, sig=note.signature))
                elif isinstance(msg, Simple) and msg.t == "stop":
                    c.detail = f"provider stopped: {msg.reason}"
                    return
                else:
                    raise LocalProtocolError(f"provider {c.peer} sent {type(msg).__name__} on the service stream")
        except StreamClosed:
            c.detail = c.detail or "the provider closed the service stream"
        except (FognodeError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            c.detail = f"service stream failed: {e}"[:300]
            log.info("market: service stream of %s: %s", c.id.hex()[:16], e)

    # ---- settlement ---------------------------------------------------------------------------

    async def settle(self, c: Contract) -> None:
        """Slash each breached window (while collateral lasts), report to reputation, refund."""
        ledger = self.ledger()
        if ledger is None or c.escrow is None:
            return
        wait = c.terms.deadline + CLOCK_MARGIN + 0.5 - self.clock()
        if wait > 0:
            await trio.sleep(wait)
        breaches = c.sla.breaches() if c.sla is not None else []
        for v in breaches:
            await self._slash(ledger, c, v)
        rep = self.reputation()
        if rep is not None and c.sla is not None and c.sla.windows():
            try:
                rep.report_outcome(c.peer, REPUTATION_SERVICE, not breaches, float(max(1, len(breaches))), c.id)
            except LocalProtocolError as e:
                log.info("market: reputation report on %s not recorded: %s", c.peer, e)
        await self.refund(c)

    async def _slash(self, ledger: LedgerApi, c: Contract, v: WindowVerdict) -> None:
        assert c.escrow is not None
        body = BreachReport(c.escrow, v.window, v.probes, v.failures, ())
        report = BreachReport(c.escrow, v.window, v.probes, v.failures, (body.witness_signature(self.key),))
        for _ in range(120):
            e = ledger.escrow(c.escrow)
            if e is None or e.closed or e.last_window >= v.window or e.collateral - e.slashed <= 0 or e.penalty == 0:
                break
            try:
                await ledger.slash(report)
                break
            except EscrowMarginError:
                pass
            except OrderRejected as ex:
                log.warning("market: slash of window %d under %s refused: %s", v.window, c.escrow.hex()[:16], ex)
                break
            except FognodeError as ex:
                log.info("market: slash of window %d failed (will retry): %s", v.window, ex)
            await trio.sleep(RETRY)
        e = ledger.escrow(c.escrow)
        if e is not None and e.slashed != c.slashed:
            c.slashed = e.slashed
            self.contracts.save(c)

    def paid(self, c: Contract) -> int:
        """What `c`'s escrow has paid out, from the escrow on this replica while it is there
        (the contract's own record of a customer learns it only at settlement)."""
        ledger = self.ledger()
        e = ledger.escrow(c.escrow) if ledger is not None and c.escrow is not None else None
        return max(c.paid, e.paid) if e is not None else c.paid

    def compliance(self, c: Contract) -> dict[str, Any]:
        """`monitor_sla_compliance`: the SLA account of a service contract (either side)."""
        paid = self.paid(c)
        base = {"contract": c.id.hex(), "role": c.role, "peer": c.peer, "service": c.terms.service,
                "state": c.state, "collateral": format_amount(c.collateral),
                "slashed": format_amount(c.slashed), "paid": format_amount(paid), "detail": c.detail}
        if c.sla is None:
            return {**base, "monitored": False, "note": "this node does not probe this contract (it is not "
                                                         "the customer of a service contract)"}
        acc = c.sla.compliance(self.clock())
        for k in ("penalty", "collateral", "penalty_due"):
            acc[k] = format_amount(acc[k])
        return {**base, "monitored": True, **acc}
