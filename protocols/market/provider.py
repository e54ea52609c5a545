"""The provider's side of the job stream (trio): run a customer's WASM tasks under one agreement
and get paid for them through the ledger's escrow.

`ProviderJobs.serve(stream)` handles one inbound `/fognode/market/job/1.0.0` stream
(jobwire.py for the messages):

1. `hello` carries the agreement signed by both parties; it must name this node as provider
   and the stream's peer as customer, for `compute.wasm` priced in fuel, before its deadline.
2. We answer with our `payee` account (signed by our identity key): the escrow pays it.
3. `escrow`: we wait (at most `escrow_wait` s) until our ledger replica holds that escrow, for
   this agreement, payable to our payee, with the agreement's deadline. Nothing runs before.
4. Tasks run under the harvest role (none: the job is refused): the agreement is a `market`
   harvest session (ref: the agreement id) and its tasks run one at a time in one persistent
   WASM runner of the harvest executor (`HarvestApi.wasm_worker`: the policy suspends and
   throttles it, it is killed at its memory limit, its CPU, memory and fuel are metered into
   the session), each with the fuel the task asks for, capped at what the rest of the escrow
   pays for, and its memory limit; blobs (module, input) arrive first and are hash-checked.
   Every result goes back with its fuel. The session ends completed when the work was paid in
   full, else abandoned with the reason.
5. Every `debit_interval` s (and when the customer said `end` and the queue is empty) we ask
   for the cumulative cost of the tasks reported (`debit`); the customer answers with a
   co-signed debit note, which we pay out to our payee through the ledger (in the background,
   one payout at a time, the latest note wins). A debit request unanswered for
   `debit_deadline` s, or a `dispute`, stops the work (`stop` sent, SLABreach "unpaid" or
   "disputed"): we keep what was paid.
6. `receipt`: the customer's signed WorkReceipt for the job (harvest receipts.py). It must be
   issued by the agreement's customer, for this node and this agreement, for no more than the
   customer's notes; a validated one is credited to the contribution ledger once its tokens
   equal what the ledger paid out to us, a rejected one (we were outvoted) as it is. Once the
   work is paid, a session that ran tasks waits for the receipt (it may come late: the
   customer knows we were outvoted only when the other providers' results are in) until it
   arrives, the customer closes the stream or the agreement's deadline passes; one that
   comes before a dispute ends the session is credited too. A receipt that does not fit is
   not credited (WARNING).
   The harvest session's start, the credit and its end are each durable before the session
   goes on (the harvest role's group commit, off the event loop).

Awaits the stream and the ledger; cancellable; a peer's bad frame ends the stream (charged).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import trio
from nacl.signing import SigningKey

from fognode.ledger.api import LedgerApi
from fognode.ledger.escrow_orders import DebitNote
from fognode.node.errors import FognodeError, RemoteProtocolError, StreamClosed
from fognode.node.overlay import FramedStream
from fognode.node.wire import digest
from fognode.protocols.harvest.api import HarvestApi
from fognode.protocols.harvest.exec_errors import BadJobError
from fognode.protocols.harvest.receipts import (MARKET_JOB, Outcome, ReceiptRefused,
                                                RefuseReason, WorkReceipt, decode_work_receipt)
from fognode.protocols.harvest.wasm import WasmJob, WasmResult
from fognode.protocols.harvest.wasm_worker import WasmWorker
from fognode.protocols.market.agreement import Agreement, decode_negotiation
from fognode.protocols.market.config import MarketConfig
from fognode.protocols.market.contracts import Contract, Contracts
from fognode.protocols.market.events import ServiceContractCreated, SLABreach
from fognode.protocols.market.jobwire import (FUEL_UNIT, MAX_FRAME, MAX_TASK_OUTPUT, Blob,
                                              Result, Simple, Task, decode_job, sign_payee,
                                              simple, task_cost)
from fognode.protocols.market.metrics import MarketMetrics
from fognode.protocols.market.provider_stream import (AgreementServer, AgreementSession, Stop,
                                                      first_cause)
from fognode.protocols.registry.peerid import peer_id_from_pubkey

log = logging.getLogger("fognode.market")

END_TIMEOUT = 10.0       # seconds the session's credit and end may take once the job ended
RECEIPT_POLL = 1.0       # seconds between deadline checks while we wait for the receipt


def check_receipt(data: bytes, *, customer: str, worker: str, agreement: bytes, noted: int,
                  peer: str | None = None) -> WorkReceipt:
    """The customer's WorkReceipt for one agreement, if it fits: signed by the agreement's
    `customer`, for `worker` (us) and `agreement`, for at most the `noted` tokens the
    customer's debit notes granted. ReceiptRefused (MALFORMED, BAD_SIGNATURE, FOREIGN) says
    why not."""
    r = decode_work_receipt(data, peer=peer)
    if r.issuer != customer:
        raise ReceiptRefused(RefuseReason.FOREIGN, f"issued by {r.issuer}, not by the "
                                                   f"agreement's customer {customer}", peer=peer)
    if r.worker != worker or r.job != agreement:
        raise ReceiptRefused(RefuseReason.FOREIGN, "for another worker or agreement", peer=peer)
    if r.tokens > noted:
        raise ReceiptRefused(RefuseReason.MALFORMED, f"claims {r.tokens} tokens, the debit notes "
                                                     f"granted {noted}", peer=peer)
    return r


def corrupt(r: WasmResult) -> tuple[bytes, tuple[int, ...]]:
    """The TEST-ONLY fault injector's lie (config `fault_corrupt_output`): a different output
    with a consistent hash, and every integer result plus one."""
    return r.output + b"\x00lie", tuple(x + 1 for x in r.results)


class ProviderJobs(AgreementServer):
    """Serves the job stream (see the module docstring)."""

    def __init__(self, *, key: SigningKey, config: MarketConfig,
                 ledger: Callable[[], LedgerApi | None], harvest: Callable[[], HarvestApi | None],
                 contracts: Contracts, metrics: MarketMetrics, publish: Callable[[Any], None],
                 payee: Callable[[], bytes], clock: Callable[[], float]) -> None:
        super().__init__(key=key, config=config, ledger=ledger, contracts=contracts,
                         metrics=metrics, publish=publish, payee=payee, clock=clock)
        self.harvest = harvest
        self.peer_id = peer_id_from_pubkey(self.pubkey)

    async def serve(self, s: FramedStream) -> None:
        first = decode_job(await s.recv(max_size=MAX_FRAME), peer=s.remote_peer,
                           max_blob=self.config.max_blob_bytes)
        session = _Session(self, s, self.open_agreement(first, "market job", s.remote_peer))

        def stopped(c: Contract, e: Stop) -> None:
            c.state = "stopped" if c.state != "disputed" else "disputed"
            c.detail = str(e)

        await self.run_session(session, session.run, stopped)


class _Session(AgreementSession):
    def __init__(self, jobs: ProviderJobs, s: FramedStream, ag: Agreement) -> None:
        super().__init__(jobs, s, ag)
        self.jobs = jobs
        self.contract: Contract = jobs.contracts.add(Contract(self.aid, "provider", ag.terms, jobs.clock()))
        self.price = dict(self.t.prices).get("fuel", 0)
        self.blobs: dict[bytes, bytes] = {}
        self.partial: dict[bytes, bytearray] = {}
        self.held = 0
        self.tasks_send, self.tasks_recv = trio.open_memory_channel[Task](1024)
        self.ended = False
        self.busy = False
        self.due = 0                 # cost of the tasks reported
        self.noted = 0               # the last due the customer signed
        self.wake = trio.Event()
        self.escrow_amount = 0
        self.worker: WasmWorker | None = None
        self.receipt: bytes | None = None      # the customer's WorkReceipt, checked
        self.receipt_outcome: Outcome | None = None
        self.receipt_tokens = 0
        self.credited = False
        self.closed = False          # the customer closed the stream after `end`

    def _check_terms(self) -> None:
        t, jobs = self.t, self.jobs
        self.check_parties()
        if t.service != "compute.wasm" or "fuel" not in dict(t.prices):
            raise Stop("only compute.wasm agreements priced in fuel run over the job stream")
        if t.deadline <= jobs.clock():
            raise Stop("the agreement's deadline has passed")

    async def run(self) -> None:
        jobs = self.jobs
        self._check_terms()
        ledger = jobs.ledger()
        if ledger is None:
            raise Stop("this provider runs no ledger")
        harvest = jobs.harvest()
        if harvest is None:
            raise Stop("this provider runs no harvest role: market jobs run under its executor")
        payee = jobs.payee()
        self.contract.payee = payee
        await self.send(sign_payee(jobs.key, self.aid, payee).wire())
        msg = decode_job(await self.s.recv(max_size=MAX_FRAME), peer=self.s.remote_peer)
        if not isinstance(msg, Simple) or msg.t != "escrow":
            raise RemoteProtocolError("market job: expected the escrow id", peer=self.s.remote_peer)
        await self._await_escrow(ledger, msg.escrow, payee)
        self.contract.escrow = msg.escrow
        self.contract.state = "running"
        jobs.contracts.save(self.contract)
        jobs.metrics.agreements.labels("provider").inc()
        jobs.publish(ServiceContractCreated(self.aid.hex(), "provider", self.s.remote_peer,
                                            self.t.service, self.t.max_total, self.t.deadline))
        hs = await harvest.open_harvest_session("market", self.aid.hex())
        why = "the job stream ended"
        try:
            async with harvest.wasm_worker(hs.session_id, f"market {self.aid.hex()[:8]}") as w:
                self.worker = w
                async with trio.open_nursery() as n:
                    n.start_soon(self._reader, n.cancel_scope)
                    n.start_soon(self._runner)
                    n.start_soon(self._payer, ledger)
                    await self._debits(n.cancel_scope)
        except BaseExceptionGroup as eg:
            cause = first_cause(eg)
            why = str(cause)
            raise cause from None
        except BaseException as e:
            why = str(e) or type(e).__name__
            raise
        finally:
            # shielded: a stopping role still records the end; bounded: a stuck disk holds no stop
            with trio.CancelScope(shield=True, deadline=trio.current_time() + END_TIMEOUT):
                await self._end_session(hs.session_id, why)

    async def _await_escrow(self, ledger: LedgerApi, eid: bytes, payee: bytes) -> None:
        e = await self.await_escrow(ledger, eid, payee, lambda e: True,
                                    "the escrow does not match the agreement (payee, agreement, "
                                    "deadline) or is closed")
        self.escrow_amount = e.amount

    async def _reader(self, scope: trio.CancelScope) -> None:
        peer = self.s.remote_peer
        while True:
            try:
                raw = await self.s.recv(max_size=MAX_FRAME)
            except StreamClosed:
                if self.ended:
                    self.closed = True
                    self.wake.set()
                    return
                raise Stop("the customer closed the job stream") from None
            msg = decode_job(raw, peer=peer, max_blob=self.jobs.config.max_blob_bytes)
            if isinstance(msg, Blob):
                self._blob(msg)
            elif isinstance(msg, Task):
                self.tasks_send.send_nowait(msg)
            elif isinstance(msg, Simple) and msg.t == "note":
                self._on_note(msg)
            elif isinstance(msg, Simple) and msg.t == "dispute":
                self.contract.state = "disputed"
                self.jobs.publish(SLABreach(self.aid.hex(), peer, "disputed", msg.reason))
                self.jobs.metrics.breaches.labels("disputed").inc()
                raise Stop(f"the customer disputes: {msg.reason}")
            elif isinstance(msg, Simple) and msg.t == "receipt":
                self._on_receipt(msg.receipt)
                self.wake.set()
            elif isinstance(msg, Simple) and msg.t == "end":
                self.ended = True
                self.wake.set()
            else:
                raise RemoteProtocolError(f"market job: unexpected {type(msg).__name__}", peer=peer)

    def _blob(self, b: Blob) -> None:
        if b.hash in self.blobs:
            return
        buf = self.partial.setdefault(b.hash, bytearray())
        if b.offset != len(buf):
            raise RemoteProtocolError("market job: blob chunks out of order", peer=self.s.remote_peer)
        self.held += len(b.data)
        if self.held > 4 * self.jobs.config.max_blob_bytes:
            raise Stop("the customer sent more blob bytes than this session holds")
        buf += b.data
        if len(buf) == b.total:
            data = bytes(self.partial.pop(b.hash))
            if digest(data) != b.hash:
                raise RemoteProtocolError("market job: a blob does not match its hash",
                                          peer=self.s.remote_peer)
            self.blobs[b.hash] = data

    def _on_note(self, m: Simple) -> None:
        assert self.contract.escrow is not None
        note = DebitNote(self.contract.escrow, m.due, m.sig)
        if not note.signed_by(self.escrow_customer) or m.due > self.escrow_amount:
            raise RemoteProtocolError("market job: a debit note not signed by the customer or "
                                      "over the escrow", peer=self.s.remote_peer)
        if m.due >= self.requested:
            self.asked_at = None
        if m.due > self.noted:
            self.noted = m.due
            self.contract.note_due, self.contract.note_sig = m.due, m.sig
            self.jobs.contracts.save(self.contract)     # before it is paid out: a restart pays it
            self.note = note
            self.note_ready.set()
        self.wake.set()

    async def _run_one(self, task: Task) -> Result:
        module = self.blobs.get(task.module)
        inp = self.blobs.get(task.input) if task.input is not None else None
        if module is None or (task.input is not None and inp is None):
            raise RemoteProtocolError("market job: a task names a blob that was not sent",
                                      peer=self.s.remote_peer)
        left = self.escrow_amount - self.due
        fuel = task.fuel if self.price == 0 else min(task.fuel, left * FUEL_UNIT // self.price)
        if fuel < 1:
            raise Stop("the escrow is spent")
        try:
            job = WasmJob(module, task.export, args=task.args, input=inp, fuel=fuel,
                          memory_bytes=task.memory, max_output=MAX_TASK_OUTPUT)
        except BadJobError as e:
            return Result(task.index, "bad_request", str(e)[:512], b"", digest(b""), (), 0)
        assert self.worker is not None
        r = await self.worker.run(job)
        output, results = r.output, r.results
        if self.jobs.config.fault_corrupt_output:
            output, results = corrupt(r)
        return Result(task.index, r.status.value, r.message[:512], output, digest(output),
                      results, r.fuel_consumed)

    async def _runner(self) -> None:
        m = self.jobs.metrics
        async for task in self.tasks_recv:
            if self.jobs.clock() >= self.t.deadline:
                raise Stop("the agreement's deadline passed")
            self.busy = True
            res = await self._run_one(task)
            self.due += task_cost(res.fuel, self.price)
            self.contract.tasks += 1
            self.contract.fuel += res.fuel
            self.contract.due = self.due
            m.tasks.labels("provider", res.status).inc()
            m.fuel.labels("provider").inc(res.fuel)
            await self.send(res.wire())
            self.busy = self.tasks_recv.statistics().current_buffer_used > 0
            self.wake.set()

    async def _debits(self, scope: trio.CancelScope) -> None:
        """Ask for what is due every debit_interval (and at the end); stop when unpaid."""
        cfg, clock = self.jobs.config, self.jobs.clock
        last = clock()
        while True:
            idle_end = self.ended and not self.busy and \
                self.tasks_recv.statistics().current_buffer_used == 0
            now = clock()
            if self.due > self.requested and (idle_end or now - last >= self.t.debit_interval):
                await self.send(simple("debit", due=self.due))
                self.requested, self.asked_at, last = self.due, now, now
            self.check_unpaid(now)
            if idle_end and self.noted >= self.due:
                self.contract.state = "done"
                await self._drain_payout()
                await self._await_receipt()
                scope.cancel()
                return
            self.wake = trio.Event()
            with trio.move_on_after(0.2):
                await self.wake.wait()

    async def _await_receipt(self) -> None:
        """Wait for the customer's receipt (it may come late: a liar's is sent once the other
        providers outvoted it) until it is in, the customer closes the stream or the
        agreement's deadline passes: nothing is held open past the deadline. A job that ran
        no task gets no receipt and does not wait."""
        if self.contract.tasks == 0:
            return       # nothing ran: no receipt comes (receipts are for work)
        while self.receipt is None and not self.closed and self.jobs.clock() < self.t.deadline:
            self.wake = trio.Event()
            with trio.move_on_after(min(RECEIPT_POLL, max(0.0, self.t.deadline - self.jobs.clock()))):
                await self.wake.wait()

    async def _drain_payout(self) -> None:
        with trio.move_on_after(30):
            while self.contract.paid < self.noted and self.jobs.clock() < self.t.deadline:
                await trio.sleep(0.1)

    async def _payer(self, ledger: LedgerApi) -> None:
        """Pay out the latest co-signed note, one at a time."""
        while True:
            await self.note_ready.wait()
            self.note_ready = trio.Event()
            note = self.note
            if note is None or note.due <= self.contract.paid:
                continue
            try:
                await ledger.pay_debit_note(note, wallet=self.contract.payee)
            except FognodeError as e:
                log.warning("payout of %s under escrow %s failed: %s", note.due,
                            note.escrow.hex()[:16], e)
                continue
            self.jobs.metrics.paid.labels("provider").inc(note.due - self.contract.paid)
            self.contract.paid = note.due
            self.jobs.contracts.save(self.contract)

    # ---- the customer's receipt ----------------------------------------------------------------

    def _on_receipt(self, data: bytes) -> None:
        """Keep the customer's WorkReceipt if it fits this job (`check_receipt`), else WARNING:
        nothing is credited."""
        try:
            r = check_receipt(data, customer=peer_id_from_pubkey(self.t.customer),
                              worker=self.jobs.peer_id, agreement=self.aid,
                              noted=max(self.noted, self.contract.paid), peer=self.s.remote_peer)
        except ReceiptRefused as e:
            log.warning("market: receipt for %s refused: %s", self.aid.hex()[:16], e)
            return
        self.receipt, self.receipt_outcome, self.receipt_tokens = data, r.outcome, r.tokens

    async def _end_session(self, session_id: bytes, why: str) -> None:
        """Credit the receipt and end the harvest session, each durable before it returns
        (unless the harvest role stopped meanwhile: it abandoned its sessions itself)."""
        harvest = self.jobs.harvest()
        if harvest is None:
            return
        await self._credit(harvest)
        done = self.contract.state == "done"
        try:
            await harvest.end_harvest_session(session_id, completed=done,
                                              reason="" if done else why[:200])
        except LookupError:
            pass     # the harvest role restarted: the session was closed with it

    async def _credit(self, harvest: HarvestApi) -> None:
        """Credit the receipt: a rejected one as it is, a validated one once paid in full."""
        if self.receipt is None or self.credited:
            return
        if self.receipt_outcome is Outcome.VALIDATED and self.receipt_tokens != self.contract.paid:
            log.warning("market: receipt for %s not credited: it says %d, the ledger paid %d",
                        self.aid.hex()[:16], self.receipt_tokens, self.contract.paid)
            return
        try:
            await harvest.record_credit(MARKET_JOB, self.receipt, peer=self.s.remote_peer)
            self.credited = True
        except ReceiptRefused as e:
            log.warning("market: receipt for %s not credited: %s", self.aid.hex()[:16], e)
