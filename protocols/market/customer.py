"""The customer's side of the job stream (trio): escrow, tasks spread over providers,
replicated results compared, debit notes co-signed, reputation reported.

`Burst(tasks, blobs, replication, ...)` runs a bag of WASM tasks over the agreements it is
given (one per provider, `open_link` for each: stream, agreement, payee, escrow opened on the
ledger by this node's default wallet for the agreement's `max_total`, until its deadline):

- Assignment: each task goes to `replication` distinct providers, at most `WINDOW` tasks in
  flight per provider, least-loaded first, and only to a provider whose escrow can still pay
  the task's whole fuel budget (so no task is cut short by a spent escrow). A task is decided when a majority
  (replication // 2 + 1) of its results agree on (status, output hash, integer results,
  fuel); with no majority after `replication` results one more provider is asked.
- A provider whose result disagrees with a decided task's majority is a liar: it gets no new
  task, its open tasks go to others, its debit requests are disputed (it is not paid), an
  SLABreach "wrong_result" is emitted and reputation gets a bad outcome. A provider whose
  stream breaks or that stops is dead: its open tasks are re-assigned.
- Debit notes: a provider's debit request is signed when it equals the cost of its accepted
  results among those that came before the request on the stream (`jobwire.task_cost` of each
  reported fuel at the agreed price; results that overtake the answer belong to the next
  request); it is answered once those results are decided (waiting at most half of
  `debit_deadline`).
- When every task is decided (or no provider is left for the rest, or the earliest deadline is
  near) each provider gets `end`, its final debit is answered, and `run` returns one outcome
  per task. The caller refunds the unspent escrows after their deadlines (escrow rules).
- Receipts: with the final note (all of its results decided, nothing in flight) a provider
  gets a harvest `WorkReceipt` signed with this node's identity key: validated, the tokens of
  that note, the fuel of its accepted results; a provider that was outvoted gets a rejected
  one (the tokens of the notes signed before) as soon as it is found out (before its debit
  request is disputed; a lie that cost no fuel asks for no debit). Its contribution ledger
  credits it (harvest receipts.py). CPU seconds are 0: the customer cannot see them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import trio
from nacl.signing import SigningKey

from fognode.ledger.api import LedgerApi
from fognode.ledger.escrow_client import CLOCK_MARGIN
from fognode.node.errors import FognodeError, LocalProtocolError, StreamClosed
from fognode.node.overlay import FramedStream, Overlay
from fognode.node.wire import digest
from fognode.protocols.market.agreement import Agreement
from fognode.protocols.market.config import MarketConfig
from fognode.protocols.market.contracts import Contract, Contracts
from fognode.protocols.market.events import ServiceContractCreated, SLABreach
from fognode.protocols.market.jobwire import (CHUNK, JOB_PROTOCOL, MAX_FRAME, Payee, Result,
                                              Simple, Task, decode_job, simple, task_cost)
from fognode.protocols.harvest.receipts import Outcome, sign_work_receipt
from fognode.protocols.market.metrics import MarketMetrics
from fognode.protocols.registry.api import ReputationService

log = logging.getLogger("fognode.market")

WINDOW = 2                   # tasks in flight per provider
REPUTATION_SERVICE = "market.compute"


@dataclass
class Link:
    peer: str
    contract: Contract
    stream: FramedStream
    price: int
    lock: trio.Lock = field(default_factory=trio.Lock)
    inflight: set[int] = field(default_factory=set)
    results: dict[int, Result] = field(default_factory=dict)
    sent_blobs: set[bytes] = field(default_factory=set)
    dead: bool = False
    liar: bool = False
    ended: bool = False              # we sent `end`: the provider closing the stream is normal
    receipt_sent: bool = False
    finished: trio.Event = field(default_factory=trio.Event)

    async def send(self, obj: dict[str, Any]) -> None:
        async with self.lock:
            await self.stream.send(obj)


@dataclass
class TaskState:
    task: Task
    results: dict[str, Result] = field(default_factory=dict)
    assigned: set[str] = field(default_factory=set)
    final: Result | None = None
    failed: str = ""


async def open_link(overlay: Overlay, ledger: LedgerApi, ag: Agreement, config: MarketConfig,
                    contracts: Contracts, metrics: MarketMetrics, publish: Callable[[Any], None],
                    now: float, timeout: float) -> Link:
    """Open the job stream for `ag`, learn the payee, open the escrow, tell the provider.
    Raises FognodeError (stream, ledger) or LocalProtocolError (a bad payee statement)."""
    t = ag.terms
    aid = ag.agreement_id
    contract = contracts.add(Contract(aid, "customer", t, now))
    peer = contract.peer
    s = await overlay.open_stream(peer, JOB_PROTOCOL)
    try:
        with trio.fail_after(timeout):
            await s.send(simple("hello", agreement=ag.encode()))
            msg = decode_job(await s.recv(max_size=MAX_FRAME), peer=peer)
        if isinstance(msg, Simple) and msg.t == "stop":
            raise LocalProtocolError(f"provider {peer} refused the job: {msg.reason}")
        if not isinstance(msg, Payee) or msg.agreement != aid or not msg.signed_by(t.provider):
            raise LocalProtocolError(f"provider {peer} sent no valid payee statement")
        contract.payee = msg.payee
        # saved with the escrow's id before it exists: a restart refunds it (contracts.py)
        contract.escrow, contract.state = ledger.escrow_id(ledger.default_wallet(), aid), "escrowing"
        contracts.save(contract)
        cert = await ledger.open_escrow(aid, msg.payee, t.max_total, t.deadline,
                                        config.escrow_grace, timeout=timeout)
        eid = cert.order.order.escrow
        contract.escrow, contract.state = eid, "escrowed"
        contracts.save(contract)
        await s.send(simple("escrow", escrow=eid))
    except BaseException:
        contract.state = "failed"
        await s.reset()
        raise
    metrics.agreements.labels("customer").inc()
    publish(ServiceContractCreated(aid.hex(), "customer", peer, t.service, t.max_total, t.deadline))
    contract.state = "running"
    return Link(peer, contract, s, dict(t.prices).get("fuel", 0))


class Burst:
    def __init__(self, tasks: list[Task], blobs: dict[bytes, bytes], replication: int, *,
                 ledger: LedgerApi, config: MarketConfig, metrics: MarketMetrics,
                 publish: Callable[[Any], None], reputation: ReputationService | None,
                 clock: Callable[[], float],
                 progress: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
                 save: Callable[[Contract], None] = lambda c: None,
                 key: SigningKey | None = None) -> None:
        self.tasks = [TaskState(t) for t in tasks]
        self.blobs = blobs
        self.replication = replication
        self.majority = replication // 2 + 1
        self.ledger = ledger
        self.config = config
        self.metrics = metrics
        self.publish = publish
        self.reputation = reputation
        self.clock = clock
        self.progress = progress
        self.save = save                   # the contract store: before a note leaves, at the end
        self.key = key                     # signs the providers' work receipts (None: none sent)
        self.links: list[Link] = []
        self.changed = trio.Event()
        self.decided = 0
        self.transfer_s = 0.0          # seconds spent sending blobs (the benchmark's split)
        self.decided_at = 0.0          # trio time every task was decided
        self._nursery: trio.Nursery | None = None     # run's: sends a liar's receipt

    def _poke(self) -> None:
        self.changed.set()

    # ---- deciding ------------------------------------------------------------------------

    def _target(self, ts: TaskState) -> int:
        n = len(ts.results)
        return n + 1 if n >= self.replication else self.replication

    def _decide(self, ts: TaskState) -> bool:
        votes: dict[tuple[Any, ...], int] = {}
        for r in ts.results.values():
            votes[r.vote] = votes.get(r.vote, 0) + 1
        best = max(votes.items(), key=lambda kv: kv[1], default=None)
        if best is None or best[1] < self.majority:
            return False
        ts.final = next(r for r in ts.results.values() if r.vote == best[0])
        for peer, r in ts.results.items():
            if r.vote != best[0]:
                self._liar(self._link(peer), f"task {ts.task.index}: output or fuel differs "
                                             "from the majority")
        return True

    def _link(self, peer: str) -> Link:
        return next(link for link in self.links if link.peer == peer)

    def _liar(self, link: Link, detail: str) -> None:
        if link.liar:
            return
        link.liar = True
        link.contract.lied = True
        self.publish(SLABreach(link.contract.id.hex(), link.peer, "wrong_result", detail))
        self.metrics.breaches.labels("wrong_result").inc()
        log.warning("market: provider %s outvoted (%s): not paid", link.peer, detail)
        if self._nursery is not None:     # its rejected receipt now: it may ask for no debit
            self._nursery.start_soon(self._reject, link)
        for ts in self.tasks:
            if ts.final is None:
                ts.results.pop(link.peer, None)
        link.inflight.clear()
        self._poke()

    def _dead(self, link: Link, why: str) -> None:
        if link.dead:
            return
        link.dead = True
        link.contract.detail = why
        if link.contract.state == "running":
            link.contract.state = "failed"
        for i in link.inflight:
            self.tasks[i].assigned.discard(link.peer)
        link.inflight.clear()
        self._poke()

    async def _on_result(self, link: Link, r: Result) -> None:
        if not 0 <= r.index < len(self.tasks) or r.index not in link.inflight:
            raise LocalProtocolError(f"provider {link.peer} sent a result for a task it does not hold")
        if r.output_hash != digest(r.output):
            raise LocalProtocolError(f"provider {link.peer} sent an output that does not match its hash")
        link.inflight.discard(r.index)
        link.results[r.index] = r
        link.contract.tasks += 1
        link.contract.fuel += r.fuel
        self.metrics.fuel.labels("customer").inc(r.fuel)
        ts = self.tasks[r.index]
        if link.liar:
            return
        if ts.final is not None:
            if r.vote != ts.final.vote:
                self._liar(link, f"task {r.index}: differs from the decided result")
            return
        ts.results[link.peer] = r
        if self._decide(ts):
            self.decided += 1
            self.metrics.tasks.labels("customer", ts.final.status if ts.final else "?").inc()
            if self.progress is not None:
                await self.progress({"done": self.decided, "total": len(self.tasks),
                                     "task": r.index, "status": r.status})
        self._poke()

    # ---- one provider ------------------------------------------------------------------------

    async def _reader(self, link: Link, nursery: trio.Nursery) -> None:
        try:
            while True:
                msg = decode_job(await link.stream.recv(max_size=MAX_FRAME), peer=link.peer)
                if isinstance(msg, Result):
                    await self._on_result(link, msg)
                elif isinstance(msg, Simple) and msg.t == "debit":
                    # the debit covers the results that came before it on the stream
                    nursery.start_soon(self._answer_debit, link, msg.due, set(link.results))
                elif isinstance(msg, Simple) and msg.t == "stop":
                    self._dead(link, f"provider stopped: {msg.reason}")
                    return
                else:
                    raise LocalProtocolError(f"provider {link.peer} sent {type(msg).__name__}")
        except StreamClosed:
            if not link.ended:
                self._dead(link, "the provider closed the job stream")
        except (FognodeError, OSError, trio.BrokenResourceError) as e:
            self._dead(link, f"job stream failed: {e}")
        finally:
            link.finished.set()
            self._poke()

    def _accepted_cost(self, link: Link, only: set[int] | None = None) -> tuple[int, bool]:
        """(cost of the provider's accepted results, whether all of them are decided), of the
        results with an index in `only` when given."""
        cost, settled = 0, True
        for i, r in link.results.items():
            if only is not None and i not in only:
                continue
            final = self.tasks[i].final
            if final is None:
                settled = False
            elif r.vote == final.vote:
                cost += task_cost(r.fuel, link.price)
        return cost, settled

    async def _answer_debit(self, link: Link, due: int, covered: set[int]) -> None:
        if self.config.fault_withhold_notes:       # TEST ONLY: a customer that stops paying
            log.warning("market: fault_withhold_notes: debit of %s from %s left unanswered",
                        due, link.peer)
            return
        with trio.move_on_after(self.config.debit_deadline / 2):
            while not link.liar and not self._accepted_cost(link, covered)[1]:
                await trio.sleep(0.05)
        cost, _ = self._accepted_cost(link, covered)
        escrow = link.contract.escrow
        try:
            if link.liar or due != cost or escrow is None:
                reason = ("a result was outvoted" if link.liar
                          else f"due {due} is not the {cost} the accepted results cost")
                self.metrics.breaches.labels("disputed").inc()
                link.contract.state = "disputed"
                if link.liar:
                    await self._send_receipt(link, Outcome.REJECTED, link.contract.due)
                await link.send(simple("dispute", reason=reason))
                return
            note = await self.ledger.sign_debit_note(escrow, due)
            link.contract.due = max(link.contract.due, due)   # answers may finish out of order
            self.save(link.contract)
            await link.send(simple("note", due=due, sig=note.signature))
            await self._final_receipt(link)
        except (FognodeError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            log.info("market: debit answer to %s not sent: %s", link.peer, e)

    async def _final_receipt(self, link: Link) -> None:
        """A validated receipt once the provider has `end`, nothing in flight, every result
        decided and a co-signed note for all it earned (after that note or after `end`; a job
        that cost nothing, e.g. an invalid module, gets one for 0 tokens)."""
        cost, settled = self._accepted_cost(link)
        if link.ended and not link.liar and not link.inflight and settled and link.results \
                and link.contract.due == cost:
            await self._send_receipt(link, Outcome.VALIDATED, cost)

    async def _reject(self, link: Link) -> None:
        """The outvoted provider's rejected receipt (the tokens of the notes signed before)."""
        try:
            await self._send_receipt(link, Outcome.REJECTED, link.contract.due)
        except (FognodeError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            log.info("market: rejected receipt to %s not sent: %s", link.peer, e)

    async def _send_receipt(self, link: Link, outcome: Outcome, tokens: int) -> None:
        """The provider's WorkReceipt for this agreement (once), signed by this node."""
        if self.key is None or link.receipt_sent:
            return
        link.receipt_sent = True
        fuel = 0
        for i, r in link.results.items():
            final = self.tasks[i].final
            if outcome is Outcome.REJECTED or (final is not None and r.vote == final.vote):
                fuel += r.fuel
        receipt = sign_work_receipt(self.key, worker=link.peer, job=link.contract.id,
                                    outcome=outcome, tokens=tokens, cpu_seconds=0.0, fuel=fuel,
                                    time=self.clock())
        await link.send(simple("receipt", receipt=receipt.encode()))

    # ---- assignment ---------------------------------------------------------------------------

    async def _assign(self, link: Link, ts: TaskState) -> None:
        t = ts.task
        ts.assigned.add(link.peer)
        link.inflight.add(t.index)
        try:
            t0 = trio.current_time()
            for h in (t.module, t.input):
                if h is not None and h not in link.sent_blobs:
                    data = self.blobs[h]
                    for off in range(0, len(data), CHUNK):
                        await link.send(simple("blob", hash=h, offset=off, total=len(data),
                                               data=data[off:off + CHUNK]))
                    link.sent_blobs.add(h)
            self.transfer_s += trio.current_time() - t0
            await link.send(t.wire())
        except (FognodeError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self._dead(link, f"sending a task failed: {e}")

    def _room(self, link: Link) -> int:
        """What the provider's escrow can still pay for: its cap minus the cost of the results
        it reported and the fuel budgets of the tasks it holds."""
        spent = sum(task_cost(r.fuel, link.price) for r in link.results.values())
        held = sum(task_cost(self.tasks[i].task.fuel, link.price) for i in link.inflight)
        return link.contract.terms.max_total - spent - held

    def _candidates(self, ts: TaskState, window: int = WINDOW) -> list[Link]:
        """Providers that may take `ts` now: alive, honest, not holding it already, with room
        in their window and in their escrow for its whole fuel budget."""
        need = ts.task.fuel
        return sorted((lk for lk in self.links if not lk.dead and not lk.liar
                       and len(lk.inflight) < window and lk.peer not in ts.assigned
                       and self._room(lk) >= task_cost(need, lk.price)),
                      key=lambda lk: len(lk.inflight))

    def _pending(self, ts: TaskState) -> int:
        return sum(1 for lk in self.links if ts.task.index in lk.inflight)

    async def _dispatch(self, until: float) -> None:
        while True:
            self.changed = trio.Event()
            open_tasks = [ts for ts in self.tasks if ts.final is None and not ts.failed]
            if not open_tasks:
                return
            if self.clock() >= until:
                for ts in open_tasks:
                    ts.failed = "the agreements' deadline came first"
                return
            for ts in open_tasks:
                while len(ts.results) + self._pending(ts) < self._target(ts):
                    cands = self._candidates(ts)
                    if not cands:
                        break
                    await self._assign(cands[0], ts)
            live = [lk for lk in self.links if not lk.dead and not lk.liar]
            if not any(lk.inflight for lk in live):
                stuck = [ts for ts in open_tasks if ts.final is None]
                if stuck and not any(self._candidates(ts, window=1 << 30) for ts in stuck):
                    for ts in stuck:
                        ts.failed = (f"no provider left to run it (none alive, honest and with "
                                     f"escrow left; {len(ts.results)} disagreeing or missing "
                                     "results)")
                    return
            with trio.move_on_after(max(0.05, min(1.0, until - self.clock()))):
                await self.changed.wait()

    # ---- the whole bag ------------------------------------------------------------------------

    async def run(self, links: list[Link]) -> list[dict[str, Any]]:
        self.links = links
        until = min(lk.contract.terms.deadline for lk in links) - CLOCK_MARGIN - 1
        async with trio.open_nursery() as n:
            self._nursery = n
            for lk in links:
                n.start_soon(self._reader, lk, n)
            await self._dispatch(until)
            self.decided_at = trio.current_time()
            for lk in links:
                if not lk.dead:
                    try:
                        lk.ended = True
                        await lk.send(simple("end"))
                        await self._final_receipt(lk)   # its last note may be signed already
                    except (FognodeError, OSError, trio.BrokenResourceError,
                            trio.ClosedResourceError):
                        self._dead(lk, "the job stream broke at the end")
            with trio.move_on_after(self.config.debit_deadline + 10):
                for lk in links:
                    await lk.finished.wait()
            n.cancel_scope.cancel()
        self._nursery = None
        for lk in links:
            with trio.move_on_after(1):
                await lk.stream.close()
            self._report(lk)
        return [self._outcome(ts) for ts in self.tasks]

    def _report(self, link: Link) -> None:
        c = link.contract
        if c.state == "running":
            c.state = "done"
        self.save(c)
        if self.reputation is None or not link.results and not link.dead:
            return
        ok = not link.liar and not link.dead
        if link.dead and not link.liar:
            self.publish(SLABreach(c.id.hex(), link.peer, "unresponsive", c.detail))
            self.metrics.breaches.labels("unresponsive").inc()
        try:
            self.reputation.report_outcome(link.peer, REPUTATION_SERVICE, ok,
                                           float(max(1, len(link.results))) if not ok else 1.0,
                                           c.id)
        except LocalProtocolError as e:
            log.info("market: reputation report on %s not recorded: %s", link.peer, e)

    def _outcome(self, ts: TaskState) -> dict[str, Any]:
        r = ts.final
        if r is None:
            return {"index": ts.task.index, "status": "failed", "error": ts.failed}
        agree = sorted(p for p, x in ts.results.items() if x.vote == r.vote)
        return {"index": r.index, "status": r.status, "message": r.message,
                "output": r.output.hex(), "output_hash": r.output_hash.hex(),
                "results": list(r.results), "fuel": r.fuel, "providers": agree}
