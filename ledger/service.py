"""The ledger engine of one node: the composition root of the trio adapters around the
sans-IO cores.

It owns the LevelDB store, the replica state, the validator (when this node's identity is in
the committee) and the wallet keystore, builds the adapters and wires them together; it talks
to peers only through `ctx.overlay`:

- order stream `/fognode/ledger/order/1.0.0`: a client sends {"v", "order", "prev"?} (prev =
  the sender's previous certificate, so a validator that missed it can apply it first; decoded
  through certmemo.py, as the validator has usually decoded it from gossip already) and gets
  {"v", "vote"} or {"v", "rejection"}, repeated on one long-lived stream per validator. The
  validator side is here (`validate`: the lock is persisted, sync, before the reply exists);
  the client side is submit.py (`OrderSubmitter`) over order_streams.py. The same stream
  carries committee proposals (committee_service.py), lock handover requests
  (handover_service.py) and uptime receipt requests (uptime_service.py).
- sync stream `/fognode/ledger/sync/1.0.0`: sync.py (`LedgerSync`: catch-up and anti-entropy).
- topic `fognode/ledger/certs/1`: certgossip.py (`CertGossip`: batches of certificates).

The adapters see the engine through narrow protocols (ports.py, and the `RotationHost`,
`HandoverHost`, `UptimeHost` next to their adapters), never its private members; the engine
itself keeps the apply path (`ingest`), fork reports and the validator side.

Writes: group commit off the event loop (writer.py). Certificate batches, validator locks,
in-flight orders and sync cursors of every task go into the writer's open group, one synced
LevelDB batch written in a worker thread while the loop goes on; what arrives meanwhile goes
into the next group. The invariant, "memory never runs ahead of disk" (issue 10):
- Two states. `state` is what every reader sees (RPC balances, history, sequences, api.py,
  the submitter, committee rotation); it changes only by `install`ing deltas whose group is
  durable, in apply order, in the writer's callback (`_apply_batch`). `work` (state.py
  `staging`) is the replica's and the validator's: a certificate is verified and applied
  there and its records submitted to the open group in one synchronous step, so the next
  certificate (the sender's next sequence, the recipient's funds) is checked against it while
  the group is still being written. Nothing observable reads `work` except through replies
  that wait for the disk (next point); `uncommitted` applies are known to the replica by
  (sender, sequence), so a duplicate in flight is not applied twice.
- Nothing that depends on `work` leaves the node before it is durable: every order-stream
  reply (vote, rejection, committee signature, handover page, uptime receipt) is sent only
  after `flushed()` (every group submitted so far is on disk); the submitter's certificate is
  gossiped and answered to the wallet only after its group is durable (submit.py); sync
  answers read the store itself; events, `wait_applied` waiters and metrics run in the
  install callback.
- A validator lock enters the in-memory table when the core decides (so no second order is
  signed meanwhile) and the open group; if that group fails, it leaves the table again
  (`LockTable.discard`) and no vote is sent. Committee locks, handed-over locks, committee
  certificates and fork proofs are rare and written synchronously on the loop.

Storage failures (disk full, I/O error) are fatal to the ledger role, never papered over:
- a failed group (and the open one behind it) never reaches `state`: memory is what the disk
  holds. `work` is abandoned (the ledger serves nothing more).
- then the ledger stops accepting work: `failure` is set (the store reports its first failed
  write through `_storage_failed`), it is logged once at CRITICAL with the path and cause,
  orders, certificates, sync requests and wallet sends are refused with that message, and
  `run()` raises `LedgerStorageFailed` (a node.errors.FatalStorageError): the supervisor
  does not restart the role and the daemon shuts down with a non-zero exit code. After the
  operator frees space, a restart loads the state from disk, which holds exactly what was
  committed (LevelDB applies a batch whole or not at all).

Other roles use the ledger through api.py (`LedgerApi`, ctx.services "ledger"), never this class.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

import trio
from prometheus_client import Counter, Gauge, Histogram

from fognode.ledger.actions import (CertificateRefused, Commit, ConflictingCertificates, PersistLock,
                                    Queued, ReportFork, SendRejection, SendVote)
from fognode.ledger.address import encode_address
from fognode.ledger.audit import audit_store
from fognode.ledger.certgossip import CERT_TOPIC, CertGossip
from fognode.ledger.certmemo import decode_certificate_once
from fognode.ledger.committee import decode_committee_body
from fognode.ledger.committee_service import CommitteeRotation
from fognode.ledger.errors import LedgerStorageFailed, Reason
from fognode.ledger.events import ForkDetected, PaymentProcessed
from fognode.ledger.genesis import Genesis
from fognode.ledger.handover_service import LockHandover
from fognode.ledger.messages import (Certificate, ForkProof, Rejection, SignedOrder, TransferOrder, Vote,
                                     decode_signed_order, vote_reply)
from fognode.ledger.order_streams import ORDER_STREAM, OrderStreams
from fognode.ledger.pending import PendingPool
from fognode.ledger.ports import MAX_REPLY
from fognode.ledger.receipts import Receipt, default_registry
from fognode.ledger.replica import Replica
from fognode.ledger.settings import Settings
from fognode.ledger.state import Delta
from fognode.ledger.store import LedgerStore
from fognode.ledger.submit import OrderSubmitter
from fognode.ledger.sync import MAX_CERT_FRAME, SYNC_STREAM, LedgerSync
from fognode.ledger.uptime_service import UptimeRewards
from fognode.ledger.validator import Validator
from fognode.ledger.writer import GroupWriter, serve_in_order
from fognode.ledger.wallet import PASSPHRASE_ENV, Keystore
from fognode.node.faults import LogRateLimiter
from fognode.node.metrics import metric
from fognode.node.overlay import FramedStream
from fognode.node.role import NodeContext
from fognode.node.wire import Fields

log = logging.getLogger("fognode.ledger")

# certificates nobody honest forms or relays (a committee-view difference, NON_COMMITTEE_SIGNER,
# is not one: such certificates wait for the committee certificate instead)
RELAYER_FAULTS = frozenset({Reason.BAD_SIGNATURE, Reason.NO_QUORUM, Reason.DUPLICATE_SIGNER, Reason.MALFORMED,
                            Reason.WRONG_CHAIN})


class LedgerService:
    """One node's ledger. Create, then `await run(task_status=...)` inside the role."""

    def __init__(self, ctx: NodeContext, settings: Settings) -> None:
        self.ctx = ctx
        self.s = settings
        self.genesis = Genesis.from_node_genesis(ctx.genesis)
        self.me = bytes(ctx.identity.verify_key)
        self.failure: LedgerStorageFailed | None = None     # set at the first failed store write
        self._failed = trio.Event()
        self.m_storage = metric(ctx.metrics, Counter, "fognode_ledger_storage_failures_total",
                                "Ledger store writes that failed (the ledger stops at the first)")
        self.store = LedgerStore(ctx.role_dir("ledger") / "db", self.genesis, on_failure=self._storage_failed)
        self.state = self.store.load_state()     # durable: what every reader sees
        self.work = self.state.staging()          # the replica's and validator's, ahead of disk
        self.writer = GroupWriter(self.store, registry=ctx.metrics)
        self.locks = self.store.load_locks()
        self.receipts = default_registry()
        self.replica = Replica(self.work, self.store, PendingPool(settings.pending_max),
                               verify_sender=settings.verify_sender)
        self.validator = Validator(self.genesis, ctx.identity, self.work, self.locks, self.receipts,
                                   self.store.handovers_done())
        self.keystore = Keystore(ctx.datadir)
        self.passphrase: str | None = os.environ.get(PASSPHRASE_ENV)
        # the adapters (each sees the engine and its peers through a narrow protocol)
        self.streams = OrderStreams(ctx.overlay, settings.request_timeout)
        self.rotation = CommitteeRotation(self, CERT_TOPIC)
        self.sync = LedgerSync(ctx, settings, self.store, self.state, self, self.rotation)
        self.gossip = CertGossip(ctx, settings, self, self.rotation, self.sync)
        self.submitter = OrderSubmitter(ctx, settings, self.genesis, self.state, self.store, self.keystore,
                                        self.passphrase, self, self.streams, self.gossip)
        self.handover = LockHandover(self)
        self.uptime = UptimeRewards(self, settings.uptime_interval, settings.uptime_claims)
        self._waiters: dict[bytes, trio.Event] = {}
        self._audits: set[trio.Event] = set()      # audits reading a snapshot in a worker thread
        self.forks_seen = 0
        self.stopped = False          # run() has ended and the store is (being) closed
        self._fork_log = LogRateLimiter(interval=60.0)   # uncertified forks: one line a minute
        reg = ctx.metrics
        self.m_applied = metric(reg, Counter, "fognode_ledger_certificates_applied_total",
                                "Certificates applied to this replica")
        self.m_rejected = metric(reg, Counter, "fognode_ledger_orders_rejected_total",
                                 "Orders this validator refused to sign, by reason", ["reason"])
        self.m_refused = metric(reg, Counter, "fognode_ledger_certificates_refused_total",
                                "Certificates that failed verification, by reason", ["reason"])
        self.m_pending = metric(reg, Gauge, "fognode_ledger_pending_certificates",
                                "Certificates waiting for predecessors or funds")
        self.m_supply = metric(reg, Gauge, "fognode_ledger_supply_microtokens", "Total supply (micro-units)")
        self.m_staked = metric(reg, Gauge, "fognode_ledger_staked_microtokens", "Bonded stake (micro-units)")
        self.m_latency = metric(reg, Histogram, "fognode_ledger_apply_latency_seconds",
                                "Verify + apply + synced write of one batch of certificates",
                                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.m_forks = metric(reg, Counter, "fognode_ledger_forks_total", "Fork proofs detected")
        self._update_gauges()

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; closes the store on the way out. Raises LedgerStorageFailed
        (fatal: see the module docstring) once a store write has failed."""
        try:
            if self.keystore.default() is None and self.passphrase is not None:
                addr = encode_address(self.keystore.create(self.passphrase, "default"))
                log.info("created the node's default wallet %s", addr)
            self.ctx.overlay.set_stream_handler(ORDER_STREAM, self._serve_order)
            self.ctx.overlay.set_stream_handler(SYNC_STREAM, self.sync.serve)
            await self.ctx.overlay.subscribe(CERT_TOPIC, self.gossip.on_gossip, check=self.gossip.check)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.writer.run)
                await nursery.start(self.streams.run)     # first: every adapter asks through it
                nursery.start_soon(self.gossip.run)
                nursery.start_soon(self.sync.run)
                nursery.start_soon(self.submitter.run)
                nursery.start_soon(self.rotation.run)
                nursery.start_soon(self.handover.run)
                nursery.start_soon(self.uptime.run)
                nursery.start_soon(self._stop_on_storage_failure)
                task_status.started()
                await trio.sleep_forever()
        finally:
            # the overlay outlives us (daemon shutdown, a supervisor restart) and still routes
            # our streams and gossip here: from now on every handler turns them away before it
            # touches the store (`serving`), and no handler awaits between that check and its
            # store work, so none can reach the store once it is closed
            self.stopped = True
            self.streams.clear()      # the host closes them with its connections
            with trio.CancelScope(shield=True), trio.move_on_after(60):
                for done in list(self._audits):    # a worker thread still reads the db
                    await done.wait()
            self.store.close()

    # -- storage failures (see the module docstring) ---------------------------------------------

    def _storage_failed(self, err: LedgerStorageFailed) -> None:
        """The store's first failed write: stop accepting work, say why once, stop the role."""
        if self.failure is not None:
            return
        self.failure = err
        self.m_storage.inc()
        log.critical("LEDGER STOPPED: %s. Nothing more is applied, signed or served; the node shuts down.", err)
        self._failed.set()

    def serving(self) -> bool:
        """Whether network requests may be served: the store has not failed and is open."""
        return self.failure is None and not self.stopped

    def check_usable(self) -> None:
        """Raise LedgerStorageFailed (naming the path and the cause) once the store failed."""
        f = self.failure
        if f is not None:
            raise LedgerStorageFailed(str(f), path=f.path, cause=f.cause)

    async def _stop_on_storage_failure(self) -> None:
        await self._failed.wait()
        self.check_usable()

    async def flushed(self) -> None:
        """Wait until all submitted so far is durable and installed (LedgerStorageFailed if not)."""
        await self.writer.barrier()

    async def persist_inflight(self, so: SignedOrder) -> None:
        """Record `so` as this node's order in flight for its sender; returns once durable."""
        await self.writer.submit("orders in flight", lambda wb: self.store.inflight_into(wb, so)).wait()

    def forget_inflight(self, sender: bytes) -> None:
        """Clear the sender's in-flight record (in the open group: a crash before it is durable
        leaves a record whose sequence is applied or refused everywhere, which the next
        submit drops or re-drives)."""
        self.writer.submit("orders in flight", lambda wb: self.store.clear_inflight_into(wb, sender))

    def note_cursor(self, peer: str, position: int) -> None:
        """Record the sync cursor of `peer` in the open group, behind the certificates read."""
        self.writer.submit("sync cursors", lambda wb: self.store.cursor_into(wb, peer, position))

    def _update_gauges(self, deltas: list[Delta] | None = None) -> None:
        """The gauges; the bonded total (a sum over every account) only when `deltas` may
        have changed it (None: always): a transfer never does."""
        self.m_pending.set(len(self.replica.pending))
        self.m_supply.set(self.state.supply.total)
        if deltas is None or any(type(d.cert.order.order) is not TransferOrder for d in deltas):
            self.m_staked.set(self.state.total_staked())

    # -- applying certificates -----------------------------------------------------------------

    def ingest(self, peer: str, certs: list[Certificate], *, via: str = "ledger"
               ) -> tuple[list[Delta], bool]:
        """Verify and apply `certs` to `work` and submit them to the writer's open group (one
        synced write batch); they reach `state` once durable (`flushed()` waits for that).
        Returns the deltas applied and whether any certificate is waiting (predecessors, funds
        or the committee certificate of its epoch). `via` (topic or stream id) labels the faults."""
        t0 = time.perf_counter()
        return self._apply_batch(peer, lambda: [a for c in certs for a in self.replica.receive(peer, c)], t0,
                                 via=via)

    def retry_awaiting_committee(self) -> None:
        """Committee certificates were added: certificates waiting for them may apply now."""
        if self.replica.awaiting:
            t0 = time.perf_counter()
            self._apply_batch("", self.replica.committees_changed, t0)

    def _apply_batch(self, peer: str, produce: Callable[[], list[Any]], t0: float, *, via: str = "ledger"
                     ) -> tuple[list[Delta], bool]:
        """Run the replica core (`produce`) on `work` and submit its Commits to the writer's
        open group; once that group is durable, install them into `state` and let them count
        (events, waiters, metrics: `_carry_out`). If `produce` or the submission raises, this
        call's changes to `work` are undone. Synchronous on purpose: no other task runs between
        the apply and the submission (module docstring)."""
        self.check_usable()
        keep = self.replica.uncommitted()
        self.work.begin()
        try:
            actions = produce()
            deltas = [a.delta for a in actions if isinstance(a, Commit)]
            group = None
            if deltas:
                applied_at = self.ctx.clock()
                group = self.writer.submit("certificates", lambda wb: self.store.commit_into(wb, deltas, applied_at),
                                           count=len(deltas))
        except BaseException:
            self.work.rollback()
            self.replica.rolled_back(keep)
            raise
        self.work.end()

        def durable() -> None:
            for d in deltas:
                self.state.install(d)
            self.replica.committed([d.cert.order.key for d in deltas])
            self._carry_out(peer, actions, deltas, t0, via=via)

        if group is not None:
            group.on_durable(durable)
        else:
            self.writer.after_pending(durable)
        return deltas, any(isinstance(a, Queued) for a in actions)

    def _carry_out(self, peer: str, actions: list[Any], deltas: list[Delta], t0: float, *, via: str = "ledger"
                   ) -> None:
        """After `deltas` (the Commits among `actions`) and everything before them are on disk
        and installed: count and log the rest."""
        for a in actions:
            if isinstance(a, CertificateRefused):
                self.m_refused.labels(a.reason.value).inc()
                culprit = a.peer or peer
                what = f"refused certificate {a.tx_id.hex()[:16]}: {a.reason.value}: {a.message}"
                if a.reason in RELAYER_FAULTS and culprit and culprit != self.ctx.peer_id:
                    # the peer's fault: a rate-limited WARNING, counted, charged to it
                    self.ctx.overlay.penalize(culprit, what, protocol=via)
                else:
                    log.warning("%s (from %s)", what, culprit or "this node")
            elif isinstance(a, ConflictingCertificates):
                self._conflict(a.applied_tx, a.other, peer)
        if deltas:
            self.m_latency.observe(time.perf_counter() - t0)
            self.m_applied.inc(len(deltas))
            for d in deltas:
                self._after_apply(d)
        self._update_gauges(deltas)

    def _after_apply(self, d: Delta) -> None:
        o = d.cert.order.order
        ev = self._waiters.pop(d.cert.tx_id, None)
        if ev is not None:
            ev.set()
        if isinstance(o, TransferOrder):
            self.ctx.events.publish(PaymentProcessed(
                tx=d.cert.tx_id.hex(), sender=encode_address(o.sender), recipient=encode_address(o.recipient),
                amount=o.amount, fee=o.fee, memo=o.memo))

    def _conflict(self, applied_tx: bytes, other: Certificate, peer: str) -> None:
        o = other.order.order
        found = self.store.certificate(applied_tx) if applied_tx else None
        if found is None:
            pending = self.replica.pending.get(o.sender, o.sequence)
            first = pending.order if pending is not None else None
        else:
            first = found[1].order
        if first is not None:
            self.report_fork(ForkProof(first, other.order), peer, certified=True)

    def report_fork(self, proof: ForkProof, peer: str, *, certified: bool) -> None:
        if not proof.valid() or not self.store.put_fork(proof):
            return
        self.forks_seen += 1
        self.m_forks.inc()
        o = proof.first.order
        if certified:     # the ledger's safety is broken: always an ERROR
            log.error("FORK: %s signed two orders for sequence %d (%s, %s) and BOTH WERE CERTIFIED: more "
                      "than a third of the committee is faulty", encode_address(o.sender), o.sequence,
                      proof.first.tx_id.hex()[:16], proof.second.tx_id.hex()[:16])
        else:             # a sender's double spend that validators refused: its fault, one line a minute
            held = self._fork_log.admit("uncertified", time.monotonic())
            if held is not None:
                log.warning("fork: %s signed two orders for sequence %d (%s, %s); refused, proof kept%s",
                            encode_address(o.sender), o.sequence, proof.first.tx_id.hex()[:16],
                            proof.second.tx_id.hex()[:16],
                            f" ({held} more uncertified forks in the last minute not logged)" if held else "")
        self.ctx.events.publish(ForkDetected(
            sender=encode_address(o.sender), sequence=o.sequence, first_tx=proof.first.tx_id.hex(),
            second_tx=proof.second.tx_id.hex(), certified=certified, reported_by=peer))

    # -- validator side ------------------------------------------------------------------------

    def validate(self, peer: str, so: SignedOrder) -> list[Vote | Rejection]:
        """Run the validator core and carry out its actions up to (not including) sending:
        the lock joins the writer's open group. Returns the replies, which must not leave the
        node before `await flushed()` returned (the lock, or the earlier one a repeated vote
        relies on, and the applies the decision read are on disk then). Raises
        LedgerStorageFailed (no vote; the lock is taken out of the table again) if the ledger
        stopped; a group that fails later takes its locks out of the table too."""
        self.check_usable()
        replies: list[Vote | Rejection] = []
        for a in self.validator.receive(peer, so, self.ctx.clock()):
            if isinstance(a, PersistLock):
                order = a.order
                try:
                    group = self.writer.submit("validator locks", lambda wb: self.store.lock_into(wb, order))
                except LedgerStorageFailed:
                    self.locks.discard(order)
                    raise
                group.on_failure(lambda o=order: self.locks.discard(o))
            elif isinstance(a, SendVote):
                replies.append(a.vote)
            elif isinstance(a, SendRejection):
                self.m_rejected.labels(a.rejection.reason.value).inc()
                replies.append(a.rejection)
            elif isinstance(a, ReportFork):
                self.report_fork(a.proof, peer, certified=False)
        return replies

    async def _serve_order(self, stream: FramedStream) -> None:
        """Requests are decided one after the other; each reply leaves, in request order, once
        everything it relies on is durable, while the next requests are read (writer.py
        `serve_in_order`). Until the client closes the stream; reset once the ledger stopped."""
        peer = stream.remote_peer

        def decide(raw: Any) -> list[Any]:
            if not self.serving():    # the ledger stopped: no vote, no lock, no answer
                raise LedgerStorageFailed(str(self.failure or "the ledger stopped"))
            return self._order_reply(peer, raw)
        await serve_in_order(self.writer, stream, decide, max_size=MAX_CERT_FRAME)

    def _order_reply(self, peer: str, raw: Any) -> list[Any]:
        """The replies to one order-stream request (synchronous: locks and applies join the
        writer's open group here; the caller sends them after `flushed()`)."""
        f = Fields(raw, "ledger.OrderRequest", versions={1}, peer=peer)
        if f.has("committee"):
            body = decode_committee_body(f.map("committee", max_len=8), peer=peer)
            f.done()
            return [self.rotation.sign(peer, body)]
        if f.has("handover") or f.has("uptime"):
            reply = self.handover.serve(peer, f) if f.has("handover") else self.uptime.serve(peer, f)
            f.done()
            return [reply]
        so = decode_signed_order(f.map("order", max_len=8), peer=peer)
        prev = decode_certificate_once(f.map("prev", max_len=8), peer=peer) if f.has("prev") else None
        f.done()
        if prev is not None:
            _, queued = self.ingest(peer, [prev])
            if queued:
                # it lacks more of the sender's history than `prev`: pull it from the requester,
                # which has it (the client asks again after its retry interval; client.py)
                self.sync.sync_soon(peer)
        return [{"v": 1, "rejection": r.to_wire()} if isinstance(r, Rejection) else vote_reply(r)
                for r in self.validate(peer, so)]

    async def audit(self) -> list[str]:
        """Replay the stored history from genesis and compare it with the stored state
        (audit.py), in a worker thread on a snapshot of the store: the replica keeps applying
        meanwhile. Waits until the replay is done (not cancellable: the thread finishes)."""
        self.check_usable()
        snap = self.store.db.snapshot()
        done = trio.Event()
        self._audits.add(done)
        try:
            return await trio.to_thread.run_sync(audit_store, self.store, snap)
        finally:
            snap.close()
            done.set()
            self._audits.discard(done)

    async def wait_applied(self, tx_id: bytes, timeout: float) -> bool:
        """Wait until `tx_id` is applied to `state` (durable); False after `timeout` seconds."""
        if self.store.certificate(tx_id) is not None:
            async with self.writer.quiesced():     # its group's install has run
                return True
        ev = self._waiters.setdefault(tx_id, trio.Event())
        with trio.move_on_after(timeout):
            await ev.wait()
            return True
        return False

    # -- what the adapters ask of each other (the host protocols they are typed against) ----------

    def sync_soon(self, peer: str) -> None:
        self.sync.sync_soon(peer)

    async def sync_with(self, peer: str) -> int:
        return await self.sync.sync_with(peer)

    def cursor(self, peer: str) -> int:
        return self.sync.cursor(peer)

    def connected_peers(self) -> list[str]:
        return self.sync.connected_peers()

    async def request(self, validator: bytes, peer: str, request: dict[str, Any] | bytes,
                      max_reply: int = MAX_REPLY, *, deadline: float | None = None) -> Any:
        return await self.streams.request(validator, peer, request, max_reply, deadline=deadline)

    def in_flight(self, validator: bytes) -> int:
        return self.streams.in_flight(validator)

    async def submit_reward(self, receipt: Receipt, amount: int, *, timeout: float = 30.0) -> Certificate:
        return await self.submitter.submit_reward(receipt, amount, timeout=timeout)

    def balance(self, address: bytes) -> int:
        """Spendable micro-units of `address` in the current epoch."""
        return self.state.account(address).spendable(self.genesis.epoch_at(self.ctx.clock()))
