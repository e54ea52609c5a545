"""The provider's side of service contracts (trio): the service stream and the probe stream
(sla_messages.py for the wire).

`ServiceProvider.serve(stream)` handles one `/fognode/market/service/1.0.0` stream:

1. `hello` with the agreement (both signatures): it must name us as provider and the stream's
   peer as customer, a service type other than compute.wasm, a deadline ahead, and collateral
   within our `sla_max_collateral`; we answer with our signed payee.
2. `escrow`: we wait (`escrow_wait` s) until our replica holds it and check it carries the
   agreement's terms: payee, agreement, deadline, `uptime_ppm = 100 * uptime_bp`, the penalty,
   and the customer's key as the one witness (threshold 1). Then we lock the agreement's
   collateral into it (a certified collateral order) and say `ready`.
3. Until the deadline (less the wallet's clock margin) we ask every `debit_interval` s for the
   pro-rata price of the time served (sla.prorata_due); each co-signed note is saved to the
   contract store *before* it is paid out (in the background, the latest note wins). A note
   unanswered for `debit_deadline` s stops the service (SLABreach "unpaid"), as does the
   customer closing the stream: we keep what was paid, and the collateral comes back with the
   refund after the deadline (only proven breaches are slashed).

`serve_probe(stream)` answers one probe with a signed pong (ok only for a contract we hold as
running for that customer). `resume()` runs once at start: notes a crash left unpaid are paid
out while the escrow still takes payouts, and contracts that were running are marked stopped
(their streams died with the process).

Awaits streams and the ledger; cancellable; a peer's bad frame ends the stream (charged by the
caller, protocol.py).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import trio
from nacl.signing import SigningKey

from fognode.ledger.api import LedgerApi
from fognode.ledger.escrow_client import CLOCK_MARGIN
from fognode.ledger.escrow_orders import DebitNote
from fognode.ledger.errors import OrderRejected
from fognode.node.errors import FognodeError, RemoteProtocolError, StreamClosed
from fognode.node.overlay import FramedStream
from fognode.protocols.market.agreement import Agreement, decode_negotiation
from fognode.protocols.market.config import MarketConfig
from fognode.protocols.market.contracts import Contract, Contracts
from fognode.protocols.market.events import ServiceContractCreated, SLABreach
from fognode.protocols.market.jobwire import Simple, sign_payee, simple
from fognode.protocols.market.metrics import MarketMetrics
from fognode.protocols.market.provider_stream import (AgreementServer, AgreementSession, Stop,
                                                      first_cause)
from fognode.protocols.market.sla import answers_request, prorata_due
from fognode.protocols.market.sla_messages import (MAX_FRAME, MAX_PROBE_FRAME, Ready, decode_probe,
                                                   decode_service, sign_pong)
from fognode.protocols.registry.peerid import peer_id_from_pubkey

log = logging.getLogger("fognode.market")


class ServiceProvider(AgreementServer):
    """Serves the service and probe streams (see the module docstring)."""

    # ---- probes ---------------------------------------------------------------------------------

    async def serve_probe(self, s: FramedStream) -> None:
        probe = decode_probe(await s.recv(max_size=MAX_PROBE_FRAME), peer=s.remote_peer)
        c = self.contracts.get(probe.contract)
        ok = (c is not None and c.role == "provider" and c.state == "running"
              and peer_id_from_pubkey(c.terms.customer) == s.remote_peer)
        await s.send(sign_pong(self.key, probe, ok).wire())
        await s.close()

    # ---- the service stream ---------------------------------------------------------------------

    async def serve(self, s: FramedStream) -> None:
        first = decode_service(await s.recv(max_size=MAX_FRAME), peer=s.remote_peer)
        session = _Session(self, s, self.open_agreement(first, "market service", s.remote_peer))

        def stopped(c: Contract, e: Stop) -> None:
            c.state, c.detail = "stopped", str(e)

        await self.run_session(session, session.run, stopped)

    # ---- after a restart ------------------------------------------------------------------------

    async def resume(self) -> None:
        """Pay out the co-signed notes a crash left unpaid; mark running contracts stopped."""
        for c in self.contracts.all():
            if c.role != "provider":
                continue
            if c.state in ("negotiated", "escrowed", "running"):
                c.state, c.detail = "stopped", "this node restarted: the contract's stream is gone"
                c.ended = self.clock()
                self.contracts.save(c)
            if c.note_due > c.paid and c.escrow is not None:
                await self.pay_note(c, DebitNote(c.escrow, c.note_due, c.note_sig))

    async def pay_note(self, c: Contract, note: DebitNote) -> None:
        """Pay out `note` to the contract's payee (retrying while the ledger cannot certify it,
        until the escrow stops taking payouts); the contract's `paid` follows the ledger."""
        ledger = self.ledger()
        if ledger is None or c.payee is None:
            return
        while self.clock() < c.terms.deadline - CLOCK_MARGIN:
            e = ledger.escrow(note.escrow)
            if e is not None and e.paid >= note.due:
                break
            try:
                await ledger.pay_debit_note(note, wallet=c.payee)
                break
            except OrderRejected as ex:
                log.info("market: payout of %s under escrow %s refused: %s", note.due, note.escrow.hex()[:16], ex)
                e = ledger.escrow(note.escrow)
                if e is None or e.closed or e.paid >= note.due or self.clock() >= e.deadline:
                    break
            except FognodeError as ex:
                log.info("market: payout of %s under escrow %s failed (will retry): %s", note.due,
                         note.escrow.hex()[:16], ex)
            await trio.sleep(1.0)
        e = ledger.escrow(note.escrow)
        if e is not None and e.paid > c.paid:
            self.metrics.paid.labels("provider").inc(e.paid - c.paid)
            c.paid = e.paid
            self.contracts.save(c)


class _Session(AgreementSession):
    def __init__(self, prov: ServiceProvider, s: FramedStream, ag: Agreement) -> None:
        super().__init__(prov, s, ag)
        self.prov = prov
        self.cost = self.t.estimated_cost() or self.t.max_total

    def _check_terms(self) -> None:
        t, prov = self.t, self.prov
        self.check_parties()
        if t.service == "compute.wasm":
            raise Stop("compute.wasm agreements run over the job stream")
        if t.deadline <= prov.clock() + CLOCK_MARGIN:
            raise Stop("the agreement's deadline has passed")
        if t.sla.collateral > prov.config.sla_max_collateral:
            raise Stop(f"collateral {t.sla.collateral} is over this provider's sla_max_collateral "
                       f"{prov.config.sla_max_collateral}")

    async def run(self) -> None:
        prov = self.prov
        self._check_terms()
        ledger = prov.ledger()
        if ledger is None:
            raise Stop("this provider runs no ledger")
        c = self.contract = prov.contracts.add(Contract(self.aid, "provider", self.t, prov.clock()))
        if c.state != "negotiated":
            self.contract = None         # another stream holds (or held) this agreement
            raise Stop("this agreement is running or ran already")
        c.payee = prov.payee()
        prov.contracts.save(c)
        await self.send(sign_payee(prov.key, self.aid, c.payee).wire())
        msg = decode_service(await self.s.recv(max_size=MAX_FRAME), peer=self.s.remote_peer)
        if not isinstance(msg, Simple) or msg.t != "escrow":
            raise RemoteProtocolError("market service: expected the escrow id", peer=self.s.remote_peer)
        await self._await_escrow(ledger, msg.escrow, c.payee)
        c.escrow, c.state = msg.escrow, "escrowed"
        prov.contracts.save(c)
        if self.t.sla.collateral > 0:
            try:
                await ledger.lock_collateral(msg.escrow, self.t.sla.collateral, wallet=c.payee,
                                             timeout=prov.config.escrow_wait)
            except FognodeError as e:
                raise Stop(f"collateral not locked: {e}") from None
        c.collateral, c.state = self.t.sla.collateral, "running"
        prov.contracts.save(c)
        prov.metrics.agreements.labels("provider").inc()
        prov.publish(ServiceContractCreated(self.aid.hex(), "provider", self.s.remote_peer, self.t.service,
                                            self.t.max_total, self.t.deadline))
        await self.send({"v": 1, "t": "ready", "collateral": c.collateral})
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self._reader)
                n.start_soon(self._payer, c)
                await self._debits()
                n.cancel_scope.cancel()
        except BaseExceptionGroup as eg:
            raise first_cause(eg) from None
        c.state = "done"

    async def _await_escrow(self, ledger: LedgerApi, eid: bytes, payee: bytes) -> None:
        t = self.t
        await self.await_escrow(
            ledger, eid, payee,
            lambda e: (e.uptime_ppm == 100 * t.sla.uptime_bp and e.penalty == t.sla.penalty
                       and e.witnesses == (t.customer,) and e.threshold == 1),
            "the escrow does not carry the agreement's terms (payee, deadline, uptime, "
            "penalty, the customer as its one witness)")

    async def _reader(self) -> None:
        peer = self.s.remote_peer
        while True:
            try:
                raw = await self.s.recv(max_size=MAX_FRAME)
            except StreamClosed:
                raise Stop("the customer closed the service stream") from None
            msg = decode_service(raw, peer=peer)
            if isinstance(msg, Simple) and msg.t == "note":
                self._on_note(msg)
            elif isinstance(msg, Simple) and msg.t == "end":
                raise Stop("the customer ended the contract")
            else:
                raise RemoteProtocolError(f"market service: unexpected {type(msg).__name__}", peer=peer)

    def _on_note(self, m: Simple) -> None:
        c = self.contract
        assert c is not None and c.escrow is not None
        note = DebitNote(c.escrow, m.due, m.sig)
        if not note.signed_by(self.escrow_customer) or m.due > self.t.max_total:
            raise RemoteProtocolError("market service: a debit note not signed by the customer or "
                                      "over the escrow", peer=self.s.remote_peer)
        # an answer to our request: the whole of it, or what it cost 2 clock margins before we
        # asked (the customer signs by its own clock; skew costs us at most that much)
        if self.asked_at is not None and answers_request(m.due, self.requested, self.cost, self.t.start,
                                                         self.t.deadline, self.asked_at, CLOCK_MARGIN):
            self.asked_at = None
        if m.due > c.note_due:
            c.note_due, c.note_sig = m.due, m.sig
            self.prov.contracts.save(c)            # before it is paid out (a crash keeps the note)
            self.note = note
            self.note_ready.set()

    async def _payer(self, c: Contract) -> None:
        while True:
            await self.note_ready.wait()
            self.note_ready = trio.Event()
            if self.note is not None and self.note.due > c.paid:
                await self.prov.pay_note(c, self.note)

    async def _debits(self) -> None:
        """Ask for the pro-rata price every debit_interval until payouts close (the deadline
        less the wallet's margin); stop when a request is unpaid past debit_deadline."""
        prov, t = self.prov, self.t
        last_call = t.deadline - CLOCK_MARGIN - 1
        last = prov.clock()
        while True:
            now = prov.clock()
            self.check_unpaid(now)
            final = now >= last_call
            due = prorata_due(self.cost, t.start, t.deadline, min(now, last_call))
            if due > self.requested and (final or now - last >= t.debit_interval):
                await self.send(simple("debit", due=due))
                self.requested, self.asked_at, last = due, now, now
            if final and self.asked_at is None:
                with trio.move_on_after(max(0.0, t.deadline - CLOCK_MARGIN - prov.clock())):
                    while self.contract is not None and self.contract.paid < self.contract.note_due:
                        await trio.sleep(0.2)
                if now >= t.deadline:
                    return
                await trio.sleep(min(0.5, max(0.0, t.deadline - prov.clock())))
                continue
            await trio.sleep(0.2)
