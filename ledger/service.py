"""The ledger engine of one node: the trio adapter around the sans-IO cores.

It owns the LevelDB store, the replica state, the validator (when this node's identity is in
the committee), the wallet keystore, and talks to peers only through `ctx.overlay`:

- order stream `/fognode/ledger/order/1.0.0`: a client sends {"v", "order", "prev"?} (prev =
  the sender's previous certificate, so a validator that missed it can apply it first) and gets
  {"v", "vote"} or {"v", "rejection"}, repeated on one long-lived stream per validator. The
  validator persists its lock (sync) before replying.
  The same stream carries committee proposals (committee_service.py), lock handover
  requests (handover_service.py) and uptime receipt requests (uptime_service.py).
- sync stream `/fognode/ledger/sync/1.0.0`: {"v", "after", "limit"} -> {"v", "certs":
  [[position, certificate]...], "end"}, repeated on one stream until the client has caught up
  with the server's apply log. Cursors per peer are kept (not part of the state).
- topic `fognode/ledger/certs/1`: {"v", "certs": [...]} batches of certificates this node
  formed. The gossip layer numbers messages per origin and pulls gaps; a certificate that
  cannot apply yet (missing predecessors) makes the replica sync with the peer it came from,
  and every `sync_interval` with its connected peers (catch-up after a partition or restart).

Storage failures (disk full, I/O error) are fatal to the ledger role, never papered over:
- state: each batch of certificates is applied between `state.begin()` and `state.end()`
  and written in one synced batch; if the write fails the state is rolled back before the
  call returns (`_apply_batch`), so memory never runs ahead of disk. No other task can see
  the applied-but-unwritten state: apply, write and rollback run in one synchronous call,
  with no await (no checkpoint where trio could switch tasks) in between.
- validator locks: the lock is written (sync) before the vote exists; a failed write takes
  the lock out of the in-memory table again (`LockTable.discard`) and no vote is sent. The
  same for committee locks, handed-over locks and committee certificates.
- then the ledger stops accepting work: `failure` is set (the store reports its first failed
  write through `_storage_failed`), it is logged once at CRITICAL with the path and cause,
  orders, certificates, sync requests and wallet sends are refused with that message, and
  `run()` raises `LedgerStorageFailed` (a node.errors.FatalStorageError): the supervisor
  does not restart the role and the daemon shuts down with a non-zero exit code. After the
  operator frees space, a restart loads the state from disk, which holds exactly what was
  committed (LevelDB applies a batch whole or not at all).

Other roles use the `LedgerService` API (ctx.services "ledger"): `verify_payment_capability`,
`balance`, `pay`, `submit_reward`, `distribute_rewards`, `register_receipt_verifier`,
`issue_receipt`.
"""
from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import trio
from nacl.signing import SigningKey
from prometheus_client import Counter, Gauge, Histogram

from fognode.ledger.actions import (CertificateRefused, Commit, ConflictingCertificates, PersistLock,
                                    Queued, ReportFork, SendRejection, SendVote)
from fognode.ledger.address import encode_address
from fognode.ledger.audit import audit_store
from fognode.ledger.client import OrderStatus, VoteCollector
from fognode.ledger.committee import decode_committee_body
from fognode.ledger.committee_service import CommitteeRotation
from fognode.ledger.errors import LedgerStorageFailed, OrderRejected, Reason, WalletError
from fognode.ledger.events import ForkDetected, PaymentProcessed, RewardsDistributed
from fognode.ledger.genesis import Genesis
from fognode.ledger.handover_service import LockHandover
from fognode.ledger.uptime_service import UptimeRewards
from fognode.ledger.messages import (Certificate, ForkProof, MintOrder, Order, Rejection, SignedOrder,
                                     TransferOrder, decode_certificate, decode_rejection,
                                     decode_signed_order, decode_vote, order_problem)
from fognode.ledger.pending import PendingPool
from fognode.ledger.receipts import Receipt, ReceiptVerifier, default_registry
from fognode.ledger.replica import Replica
from fognode.ledger.rewards import Allocation, distribute_rewards
from fognode.ledger.state import Delta
from fognode.ledger.store import LedgerStore
from fognode.ledger.validator import Validator
from fognode.ledger.wallet import PASSPHRASE_ENV, Keystore
from fognode.node.errors import FognodeError, RemoteProtocolError, StreamClosed
from fognode.node.faults import LogRateLimiter
from fognode.node.metrics import metric
from fognode.node.overlay import FramedStream, GossipMessage
from fognode.node.peerid import peer_id_from_pubkey, pubkey_from_peer_id
from fognode.node.protocol import NodeContext
from fognode.node.wire import Fields, pack, unpack

log = logging.getLogger("fognode.ledger")

ORDER_STREAM = "/fognode/ledger/order/1.0.0"
SYNC_STREAM = "/fognode/ledger/sync/1.0.0"
CERT_TOPIC = "fognode/ledger/certs/1"
MAX_SYNC_BATCH = 1024
MAX_CERT_FRAME = 1 << 20
# certificates nobody honest forms or relays (a committee-view difference, NON_COMMITTEE_SIGNER,
# is not one: such certificates wait for the committee certificate instead)
RELAYER_FAULTS = frozenset({Reason.BAD_SIGNATURE, Reason.NO_QUORUM, Reason.DUPLICATE_SIGNER, Reason.MALFORMED,
                            Reason.WRONG_CHAIN})


class NotCertified(FognodeError):
    """The order did not gather a quorum before the deadline; `status` says how far it got."""

    def __init__(self, message: str, status: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Settings:
    batch_interval: float = 0.2
    batch_max: int = 64
    sync_interval: float = 10.0
    sync_batch: int = 256
    request_timeout: float = 5.0
    retry_interval: float = 1.0
    pending_max: int = 10_000
    verify_sender: bool = True
    uptime_interval: float = 10.0
    uptime_claims: bool = True


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
        self.state = self.store.load_state()
        self.locks = self.store.load_locks()
        self.receipts = default_registry()
        self.replica = Replica(self.state, self.store, PendingPool(settings.pending_max),
                               verify_sender=settings.verify_sender)
        self.validator = Validator(self.genesis, ctx.identity, self.state, self.locks, self.receipts,
                                   self.store.handovers_done())
        self.rotation = CommitteeRotation(self, CERT_TOPIC)
        self.handover = LockHandover(self)
        self.uptime = UptimeRewards(self, settings.uptime_interval, settings.uptime_claims)
        self.keystore = Keystore(ctx.datadir)
        self.passphrase: str | None = os.environ.get(PASSPHRASE_ENV)
        self._outbox: list[Certificate] = []
        self._outbox_ready = trio.Event()
        self._waiters: dict[bytes, trio.Event] = {}
        self._sender_locks: dict[bytes, trio.Lock] = {}
        self._streams: dict[bytes, FramedStream] = {}
        self._stream_locks: dict[bytes, trio.Lock] = {}
        self._cursors: dict[str, int] = {}
        self._syncing: set[str] = set()
        self._audits: set[trio.Event] = set()      # audits reading a snapshot in a worker thread
        self._nursery: trio.Nursery | None = None
        self.forks_seen = 0
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
            self.ctx.overlay.set_stream_handler(SYNC_STREAM, self._serve_sync)
            await self.ctx.overlay.subscribe(CERT_TOPIC, self._on_gossip)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._publisher)
                nursery.start_soon(self._anti_entropy)
                nursery.start_soon(self._sync_on_connect)
                nursery.start_soon(self.rotation.run)
                nursery.start_soon(self.handover.run)
                nursery.start_soon(self.uptime.run)
                nursery.start_soon(self._stop_on_storage_failure)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._streams.clear()      # the host closes them with its connections
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

    def check_usable(self) -> None:
        """Raise LedgerStorageFailed (naming the path and the cause) once the store failed."""
        f = self.failure
        if f is not None:
            raise LedgerStorageFailed(str(f), path=f.path, cause=f.cause)

    async def _stop_on_storage_failure(self) -> None:
        await self._failed.wait()
        self.check_usable()

    def _update_gauges(self) -> None:
        self.m_pending.set(len(self.replica.pending))
        self.m_supply.set(self.state.supply.total)
        self.m_staked.set(self.state.total_staked())

    # -- applying certificates -----------------------------------------------------------------

    def ingest(self, peer: str, certs: list[Certificate], *, via: str = "ledger"
               ) -> tuple[list[Delta], bool]:
        """Verify and apply `certs` (one synced write batch for all that apply). Returns the
        deltas applied and whether any certificate is waiting (predecessors, funds or the
        committee certificate of its epoch). `via` (topic or stream id) labels the faults."""
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
        """Run the replica core (`produce`), write its Commits in one synced batch, and only
        then let them count (events, waiters, metrics). If anything fails on the way (a
        failed write: LedgerStorageFailed) the state is rolled back to what it was before
        and the error raised: the state in memory stays the state on disk. Synchronous on
        purpose: no other task runs between the apply and the write or the rollback."""
        self.check_usable()
        self.state.begin()
        try:
            actions = produce()
            deltas = [a.delta for a in actions if isinstance(a, Commit)]
            if deltas:
                self.store.commit(deltas)
        except BaseException:
            self.state.rollback()
            self.replica.rolled_back()
            raise
        self.state.end()
        self.replica.committed()
        return self._carry_out(peer, actions, deltas, t0, via=via)

    def _carry_out(self, peer: str, actions: list[Any], deltas: list[Delta], t0: float, *, via: str = "ledger"
                   ) -> tuple[list[Delta], bool]:
        """After `deltas` (the Commits among `actions`) were written: count and log the rest."""
        queued = False
        for a in actions:
            if isinstance(a, Queued):
                queued = True
            elif isinstance(a, CertificateRefused):
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
        self._update_gauges()
        return deltas, queued

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
            self._fork(ForkProof(first, other.order), peer, certified=True)

    def _fork(self, proof: ForkProof, peer: str, *, certified: bool) -> None:
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

    # -- gossip --------------------------------------------------------------------------------

    def _publish_later(self, cert: Certificate) -> None:
        self._outbox.append(cert)
        self._outbox_ready.set()

    async def _publisher(self) -> None:
        while True:
            await self._outbox_ready.wait()
            await trio.sleep(self.s.batch_interval)    # gather a batch
            batch, self._outbox = self._outbox[:self.s.batch_max], self._outbox[self.s.batch_max:]
            if not self._outbox:
                self._outbox_ready = trio.Event()
            if batch:
                try:
                    await self.ctx.overlay.publish(CERT_TOPIC, pack({"v": 1, "certs": [c.to_wire() for c in batch]}))
                except FognodeError as e:
                    log.warning("could not publish %d certificates: %s (peers will sync them)", len(batch), e)

    async def _on_gossip(self, msg: GossipMessage) -> None:
        if self.failure is not None:
            return       # the ledger stopped (storage failure): gossip is dropped, peers sync later
        try:
            f = Fields(unpack(msg.data, max_size=MAX_CERT_FRAME, what="ledger certificate batch"),
                       "ledger.CertBatch", versions={1}, peer=msg.origin)
            certs = [decode_certificate(c, peer=msg.origin) for c in f.list("certs", max_len=MAX_SYNC_BATCH)]
            committees = self.rotation.decode_list(f.list("committees", optional=True) or [], msg.origin)
            f.done()
        except RemoteProtocolError as e:
            # the batch is signed by its origin (the gossip envelope): the origin's fault
            self.ctx.overlay.penalize(msg.origin, str(e), protocol=CERT_TOPIC)
            return
        try:
            if committees:
                self.rotation.add(msg.received_from, committees)
            _, queued = self.ingest(msg.origin, certs, via=CERT_TOPIC)
        except LedgerStorageFailed:
            return       # reported once by _storage_failed; the role is stopping
        if queued:
            self._sync_soon(msg.received_from)
            if msg.origin != msg.received_from:
                self._sync_soon(msg.origin)

    # -- sync ----------------------------------------------------------------------------------

    async def _serve_sync(self, stream: FramedStream) -> None:
        while True:
            try:
                req = await stream.recv(max_size=1024)
            except StreamClosed:
                return
            if self.failure is not None:    # serve nothing from a store that failed a write
                await stream.reset()
                return
            f = Fields(req, "ledger.SyncRequest", versions={1}, peer=stream.remote_peer)
            after = f.int("after", lo=0, hi=2**62)
            limit = f.int("limit", lo=1, hi=MAX_SYNC_BATCH)
            committees_after = f.int("committees_after", lo=0, hi=2**40, optional=True)
            f.done()
            items = self.store.log_after(after, limit)
            resp: dict[str, Any] = {"v": 1, "certs": [[p, c] for p, c in items], "end": self.store.log_length()}
            if committees_after is not None:
                resp["committees"] = self.rotation.serve(committees_after)
            await stream.send(resp)

    def _sync_soon(self, peer: str) -> None:
        if self._nursery is not None and peer and peer != self.ctx.peer_id and peer not in self._syncing:
            self._nursery.start_soon(self.sync_with, peer)

    async def sync_with(self, peer: str) -> int:
        """Pull `peer`'s apply log from our cursor; returns certificates applied. Errors are
        logged (the next round retries)."""
        if peer in self._syncing or self.failure is not None:
            return 0
        self._syncing.add(peer)
        applied = 0
        try:
            with trio.fail_after(max(30.0, self.s.request_timeout * 6)):
                stream = await self.ctx.overlay.open_stream(peer, SYNC_STREAM)
                try:
                    while True:
                        cursor = self._cursors[peer] if peer in self._cursors else self.store.cursor(peer)
                        await stream.send({"v": 1, "after": cursor, "limit": self.s.sync_batch,
                                           "committees_after": self.state.committees.latest_epoch()})
                        resp = await stream.recv(max_size=MAX_CERT_FRAME * 4)
                        f = Fields(resp, "ledger.SyncResponse", versions={1}, peer=peer)
                        end = f.int("end", lo=0, hi=2**62)
                        items = f.list("certs", max_len=MAX_SYNC_BATCH)
                        committees = self.rotation.decode_list(f.list("committees", optional=True) or [], peer)
                        f.done()
                        if committees:    # before the certificates, which may be of their epochs
                            self.rotation.add(peer, committees)
                        if end < cursor:   # the peer's log is shorter than we read: a new data dir
                            self._cursors[peer] = 0
                            continue
                        certs, last = [], cursor
                        for i, item in enumerate(items):
                            if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], int)
                                    or item[0] <= last):
                                raise RemoteProtocolError(f"ledger.SyncResponse: certs[{i}] is not [position, "
                                                          f"certificate] in increasing order", peer=peer)
                            last = item[0]
                            certs.append(decode_certificate(item[1], peer=peer))
                        deltas, _ = self.ingest(peer, certs, via=SYNC_STREAM)
                        applied += len(deltas)
                        self.store.set_cursor(peer, last)
                        self._cursors[peer] = last
                        if not certs or last >= end:
                            break
                finally:
                    await stream.close()
        except (FognodeError, trio.TooSlowError) as e:
            log.debug("sync with %s stopped: %s", peer, e)
            if isinstance(e, RemoteProtocolError):
                self.ctx.overlay.penalize(peer, str(e), protocol=SYNC_STREAM)
                if self.failure is None:
                    self.store.set_cursor(peer, 0)
                    self._cursors[peer] = 0
        finally:
            self._syncing.discard(peer)
        if applied:
            log.info("synced %d certificates from %s", applied, peer)
        return applied

    def _connected_peers(self) -> list[str]:
        return [p.peer_id for p in self.ctx.overlay.peers() if p.connected]

    async def _anti_entropy(self) -> None:
        while True:
            await trio.sleep(self.s.sync_interval * (0.5 + random.random()))
            peers = self._connected_peers()
            if peers:
                await self.sync_with(random.choice(peers))

    async def _sync_on_connect(self) -> None:
        from fognode.node.events import PeerConnected

        async with self.ctx.events.subscribe("ledger-sync", [PeerConnected]) as sub:
            for p in self._connected_peers():
                self._sync_soon(p)
            async for ev in sub:
                assert isinstance(ev, PeerConnected)
                self._sync_soon(ev.peer_id)

    # -- validator side ------------------------------------------------------------------------

    def _validate(self, peer: str, so: SignedOrder) -> list[Any]:
        """Run the validator core and carry out its actions up to (not including) sending:
        the lock is persisted (sync) here, before any reply exists. Returns the replies.
        Raises LedgerStorageFailed (no vote; the lock is taken out of the table again) if the
        lock cannot be written, or if the ledger stopped already."""
        self.check_usable()
        replies: list[Any] = []
        for a in self.validator.receive(peer, so, self.ctx.clock()):
            if isinstance(a, PersistLock):
                try:
                    self.store.persist_lock(a.order)
                except LedgerStorageFailed:
                    self.locks.discard(a.order)
                    raise
            elif isinstance(a, SendVote):
                replies.append(a.vote)
            elif isinstance(a, SendRejection):
                self.m_rejected.labels(a.rejection.reason.value).inc()
                replies.append(a.rejection)
            elif isinstance(a, ReportFork):
                self._fork(a.proof, peer, certified=False)
        return replies

    async def _serve_order(self, stream: FramedStream) -> None:
        """One request, one reply, repeated until the client closes the stream."""
        peer = stream.remote_peer
        while True:
            try:
                raw = await stream.recv(max_size=MAX_CERT_FRAME)
            except StreamClosed:
                return
            if self.failure is not None:    # the ledger stopped: no vote, no lock, no answer
                await stream.reset()
                return
            try:
                reply = self._order_reply(peer, raw)
            except LedgerStorageFailed:
                await stream.reset()
                return
            for r in reply:
                await stream.send(r)

    def _order_reply(self, peer: str, raw: Any) -> list[Any]:
        """The replies to one order-stream request (synchronous: locks are written here)."""
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
        prev = decode_certificate(f.map("prev", max_len=8), peer=peer) if f.has("prev") else None
        f.done()
        if prev is not None:
            self.ingest(peer, [prev])
        return [{"v": 1, "rejection": r.to_wire()} if isinstance(r, Rejection) else {"v": 1, "vote": r.to_wire()}
                for r in self._validate(peer, so)]

    # -- client side ---------------------------------------------------------------------------

    def _lock_for(self, sender: bytes) -> trio.Lock:
        return self._sender_locks.setdefault(sender, trio.Lock())

    async def unlock_wallet(self, pubkey: bytes) -> SigningKey:
        """The wallet's signing key (Argon2id runs in a worker thread). Raises WalletError."""
        if pubkey == self.me:
            return self.ctx.identity
        if not self.keystore.has(pubkey):
            raise WalletError(f"no wallet {encode_address(pubkey)} on this node")
        return await trio.to_thread.run_sync(self.keystore.unlock, pubkey, self.passphrase)

    async def submit(self, key: SigningKey, make: Callable[[int, int], Order], timeout: float) -> Certificate:
        """Sign the sender's next order (`make(sequence, epoch)`), gather a quorum, apply and
        gossip the certificate. Raises OrderRejected (a definitive refusal; nothing applied)
        or NotCertified (deadline passed: the order stays in flight and is re-driven by the
        next submit from the same sender, never replaced by another one for its sequence),
        or LedgerStorageFailed (the ledger could not write its store and stopped: the order
        was not signed, or it stays in flight if it was)."""
        self.check_usable()
        sender = bytes(key.verify_key)
        deadline = trio.current_time() + timeout
        async with self._lock_for(sender):
            inflight = self.store.inflight(sender)
            if inflight is not None:
                if self.state.account(sender).next_sequence > inflight.order.sequence:
                    self.store.clear_inflight(sender)
                else:
                    await self._drive(inflight, deadline)
            seq = self.state.account(sender).next_sequence
            so = SignedOrder.sign(key, make(seq, self.genesis.epoch_at(self.ctx.clock())))
            problem = order_problem(so.order) or self.state.order_problem(so.order)
            if problem:
                raise OrderRejected(*problem)
            self.store.put_inflight(so)
            return await self._drive(so, deadline)

    async def _drive(self, so: SignedOrder, deadline: float) -> Certificate:
        committee = self.state.committee_for(so.order.epoch)
        collector = VoteCollector(so, committee)
        sender, seq = so.key
        prev = self.store.raw_certificate(self.store.tx_at(sender, seq - 1) or b"") if seq > 0 else None
        request: dict[str, Any] = {"v": 1, "order": so.to_wire()}
        if prev is not None:
            request["prev"] = prev
        asking: set[bytes] = set()
        while True:
            self.check_usable()
            if self.me in committee and self.me not in collector.votes:
                for r in self._validate(self.ctx.peer_id, so):
                    self._collect(collector, self.me, r)
            # ask every validator that has not voted and is not being asked already; the asks
            # run in the service's nursery, so the slowest validator still gets its request
            # answered (its stream stays usable) after the quorum is reached
            round_done = trio.Event()
            targets = [v for v in committee.members if v != self.me and v not in collector.votes and v not in asking]
            if collector.certificate is None and targets:
                left = [len(targets)]
                asking.update(targets)
                for v in targets:
                    self._spawn(self._ask, v, request, collector, asking, round_done, left)
                with trio.move_on_after(max(0.0, min(self.s.request_timeout + 0.5, deadline - trio.current_time()))):
                    await round_done.wait()
            cert = collector.certificate
            if cert is not None:
                try:
                    self.ingest(self.ctx.peer_id, [cert])
                except LedgerStorageFailed as e:
                    raise LedgerStorageFailed(
                        f"order {so.tx_id.hex()} was certified, but this node could not store its certificate: "
                        f"{e}. The order stays in flight: the next send from this wallet after a restart "
                        f"completes it", path=e.path, cause=e.cause) from None
                self._publish_later(cert)
                # cleared after the certificate is stored: a crash (or a failed write) in between
                # leaves an in-flight record whose sequence is applied, which the next submit drops
                try:
                    self.store.clear_inflight(sender)
                except LedgerStorageFailed:
                    pass       # the transfer is final and stored; the ledger stops (reported once)
                return cert
            reason = collector.main_reason()
            # this replica already found the sequence and the funds right (submit checks them
            # first), so validators refusing for those reasons lag behind: keep asking; so do
            # new members still waiting for the old committee's locks (handover.py)
            if collector.status is OrderStatus.FAILED and reason not in (Reason.WRONG_SEQUENCE, Reason.OVERSPEND,
                                                                          Reason.NOT_YET, None):
                self.store.clear_inflight(sender)
                raise OrderRejected(reason, "; ".join(f"{v}: {m}" for v, m in collector.reasons().items()))
            now = trio.current_time()
            if now >= deadline:
                raise NotCertified(
                    f"order {so.tx_id.hex()} not certified in time: votes from "
                    f"{sum(committee.stake_of(v) for v in collector.votes)} of {committee.total} stake "
                    f"(quorum {committee.quorum_stake}); it stays in flight",
                    {"tx": so.tx_id.hex(), "status": "in_flight", "votes": len(collector.votes),
                     "validators": len(committee.members), "rejections": collector.reasons()})
            await trio.sleep(min(self.s.retry_interval, deadline - now))

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._nursery is None:
            raise NotCertified("the ledger service is not running", {"status": "stopped"})
        self._nursery.start_soon(fn, *args)

    def _collect(self, collector: VoteCollector, validator: bytes, reply: Any) -> None:
        if isinstance(reply, Rejection):
            collector.add_rejection(validator, reply)
        else:
            collector.add_vote(reply)

    async def _ask(self, validator: bytes, request: dict[str, Any], collector: VoteCollector,
                   asking: set[bytes], round_done: trio.Event, left: list[int]) -> None:
        peer = peer_id_from_pubkey(validator)
        try:
            raw = await self._request(validator, peer, request)
            f = Fields(raw, "ledger.OrderReply", versions={1}, peer=peer)
            if f.has("vote"):
                reply: Any = decode_vote(f.map("vote"), peer=peer)
                if reply.validator != validator:
                    raise RemoteProtocolError("ledger.OrderReply: vote signed by another validator", peer=peer)
            else:
                reply = decode_rejection(f.map("rejection"), peer=peer)
            f.done()
            self._collect(collector, validator, reply)
        except (FognodeError, trio.TooSlowError) as e:
            log.debug("validator %s did not answer: %s", peer, e)
        finally:
            asking.discard(validator)
            left[0] -= 1
            if collector.certificate is not None or left[0] == 0:
                round_done.set()

    async def _request(self, validator: bytes, peer: str, request: dict[str, Any],
                       max_reply: int = 64 * 1024) -> Any:
        """Send one order request to `validator` over its cached order stream (opened on first
        use; a stale one is replaced once) and return the raw reply (at most `max_reply`
        bytes). One request at a time per validator. Raises FognodeError or trio.TooSlowError
        (after request_timeout)."""
        async with self._stream_locks.setdefault(validator, trio.Lock()):
            for attempt in (0, 1):
                stream = self._streams.get(validator)
                fresh = stream is None
                try:
                    with trio.fail_after(self.s.request_timeout):
                        if stream is None:
                            stream = await self.ctx.overlay.open_stream(peer, ORDER_STREAM)
                            self._streams[validator] = stream
                        await stream.send(request)
                        return await stream.recv(max_size=max_reply)
                except BaseException as e:
                    self._streams.pop(validator, None)
                    if stream is not None:
                        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                            try:
                                await stream.reset()
                            except FognodeError:
                                pass
                    if fresh or not isinstance(e, StreamClosed):
                        raise
            raise StreamClosed(f"order stream to {peer} closed twice")

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
        if self.store.certificate(tx_id) is not None:
            return True
        ev = self._waiters.setdefault(tx_id, trio.Event())
        with trio.move_on_after(timeout):
            await ev.wait()
            return True
        return False

    # -- the interface for other roles (ctx.services "ledger") ---------------------------------

    def balance(self, address: bytes) -> int:
        return self.state.account(address).spendable(self.genesis.epoch_at(self.ctx.clock()))

    def verify_payment_capability(self, address: bytes | str, amount: int) -> bool:
        """True when `address` can pay `amount` micro-units plus the chain's fee right now."""
        from fognode.ledger.address import decode_address
        key = decode_address(address) if isinstance(address, str) else address
        return self.balance(key) >= amount + self.genesis.fee

    def default_wallet(self) -> bytes:
        pub = self.keystore.default()
        if pub is None:
            raise WalletError(f"this node has no wallet: run `fognode init` or set {PASSPHRASE_ENV} and restart")
        return pub

    async def pay(self, to: bytes, amount: int, memo: str = "", *, timeout: float = 30.0,
                  wallet: bytes | None = None) -> Certificate:
        """Transfer from a local wallet (default: the node's). Raises OrderRejected,
        NotCertified, WalletError."""
        key = await self.unlock_wallet(wallet or self.default_wallet())
        fee = self.genesis.fee
        return await self.submit(key, lambda seq, ep: TransferOrder(
            chain=self.genesis.chain_id, epoch=ep, sender=bytes(key.verify_key), sequence=seq, fee=fee,
            recipient=to, amount=amount, memo=memo), timeout)

    async def submit_reward(self, receipt: Receipt, amount: int, *, timeout: float = 30.0) -> Certificate:
        """Mint `amount` to the receipt's beneficiary; this node's default wallet pays the fee."""
        key = await self.unlock_wallet(self.default_wallet())
        fee = self.genesis.fee
        return await self.submit(key, lambda seq, ep: MintOrder(
            chain=self.genesis.chain_id, epoch=ep, sender=bytes(key.verify_key), sequence=seq, fee=fee,
            recipient=receipt.beneficiary, amount=amount, receipt=receipt), timeout)

    async def distribute_rewards(self, allocations: list[Allocation], *, timeout: float = 60.0) -> list[str]:
        """Pay each allocation with a mint order from the default wallet, one after the other;
        returns the transaction ids of those paid. An allocation the validators refuse (e.g. a
        claim paid already) is logged and skipped; NotCertified (a timeout: the order stays in
        flight) stops the distribution. Publishes RewardsDistributed."""
        key = await self.unlock_wallet(self.default_wallet())
        epoch = self.genesis.epoch_at(self.ctx.clock())
        txs: list[str] = []
        total = 0
        for order in distribute_rewards(allocations, chain=self.genesis.chain_id, epoch=epoch,
                                        sender=bytes(key.verify_key), first_sequence=0, fee=self.genesis.fee):
            try:
                cert = await self.submit(key, _renumbered(order), timeout)
            except OrderRejected as e:
                log.warning("reward of %d to %s refused: %s", order.amount, encode_address(order.recipient), e)
                continue
            txs.append(cert.tx_id.hex())
            total += order.amount
        self.ctx.events.publish(RewardsDistributed(distributor=encode_address(bytes(key.verify_key)),
                                                   epoch=epoch, count=len(txs), total=total, txs=tuple(txs)))
        return txs

    def register_receipt_verifier(self, verifier: ReceiptVerifier) -> None:
        self.receipts.register(verifier)

    def issue_receipt(self, kind: str, beneficiary: bytes, body: dict[str, Any], epoch: int | None = None) -> Receipt:
        """A receipt signed by this node's identity key (the role that earned/observed it)."""
        ep = self.genesis.epoch_at(self.ctx.clock()) if epoch is None else epoch
        return Receipt.issue(self.ctx.identity, kind, beneficiary, ep, body)

    def peer_of(self, address: bytes) -> str:
        return peer_id_from_pubkey(address)

    @staticmethod
    def address_of_peer(peer_id: str) -> bytes:
        return pubkey_from_peer_id(peer_id)


def _renumbered(o: MintOrder) -> Callable[[int, int], Order]:
    """`o` with the sequence and epoch `submit` assigns."""
    def make(seq: int, epoch: int) -> Order:
        return MintOrder(chain=o.chain, epoch=epoch, sender=o.sender, sequence=seq, fee=o.fee,
                         recipient=o.recipient, amount=o.amount, receipt=o.receipt)
    return make
