"""The host side of hosted data: keeps owners' shards, serves them to paying accessors.

`AccessGate.serve(stream)` answers one AccessRequest on a stream (the host's local TCP
connection, which the onion role's ServiceHost splices to a rendezvous circuit): the shard
must be kept here for that service and its lease paid (store.py), the payment must check out
(fees.py: verified offline against the committee of its epoch), the payment not used up here;
then the shard's bytes (re-hashed from disk) go back, else a refusal naming the rule. It never
learns who asks: the connection comes from 127.0.0.1, the circuit from a rendezvous relay.

`HostingServer` (when `hosting_quota_mib` > 0):
- listens on 127.0.0.1 (a free port) with the gate and maps it as port HOSTING_PORT of the
  `.fog` service named `fog-hosting` (key in <datadir>/onion/services/fog-hosting/);
- keeps a `fog.hosting` offer in the market (price `hosting_price` per GB-hour, `disk_mib` the
  free quota), republished every OFFER_EVERY seconds;
- serves owners on `/fognode/onion/hosting/1.0.0` (wire.py): a quote (our payee wallet, price,
  free bytes), a shard to store (the owner's escrow must exist on our replica, pay us, cover
  the rate; its first debit note is collected through the ledger before the shard is kept),
  and later debit notes (collected; each extends the lease);
- every EXPIRE_EVERY seconds deletes the shards whose hosting stopped being paid more than
  `hosting_grace` seconds ago.
Awaits in the handlers are bounded (STEP_TIMEOUT; the ledger waits of a store by
ESCROW_WAIT and PAY_TIMEOUT); a malformed message is the owner's or accessor's fault
(HostingWireError: the stream is reset and the peer charged by the overlay).

The first debit note under load (session 22): its payout order is driven again after a
NotCertified (the order stays in flight; the ledger's submitter drives it before the next) until
PAY_TIMEOUT, and a note the escrow shows paid already (certified by such a drive) counts as
collected. A deploy on a devnet at load 46-50 failed on a single 30 s attempt ("not certified
in time: votes from 2 of 5 stake"), after the owner's side had been made to wait the same way.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import trio

from fognode.ledger.amounts import format_amount
from fognode.ledger.api import LedgerApi, ledger_api
from fognode.ledger.errors import OrderRejected
from fognode.ledger.escrow_orders import DebitNote
from fognode.ledger.messages import Certificate
from fognode.ledger.submit import NotCertified
from fognode.node.errors import FognodeError, RemoteProtocolError, StreamClosed
from fognode.node.overlay import FramedStream, Overlay
from fognode.node.role import Services
from fognode.protocols.market.api import market_api
from fognode.protocols.onion.address import FogAddress
from fognode.protocols.onion.hosting.fees import (AccessRefused, PaymentUses, Refusal, check_payment,
                                                  decode_access_request)
from fognode.protocols.onion.hosting.framing import FrameReader, send_frame, send_obj
from fognode.protocols.onion.hosting.metrics import HostingMetrics
from fognode.protocols.onion.hosting.store import Lease, ShardStore, StoreError
from fognode.protocols.onion.hosting.wire import (CHUNK, HOSTING_PORT, MAX_META, PROTOCOL_ID, HostingWireError,
                                                  Quoted, Refused, decode_note_message, decode_store_request,
                                                  message_type)

log = logging.getLogger("fognode.onion.hosting")

HOSTING_SERVICE = "fog-hosting"
OFFER_ID = "fog-hosting"
OFFER_TTL = 3600
OFFER_EVERY = 600.0
EXPIRE_EVERY = 30.0
STEP_TIMEOUT = 60.0
ESCROW_WAIT = 90.0        # s a store waits for the owner's escrow to reach this replica
PAY_TIMEOUT = 150.0       # s to collect a store's first debit note (its order driven again after each STEP_TIMEOUT / 2)
MAX_REQUEST = 65536
MIB = 1024 * 1024


def hosting_rate(price_gb_h: int, size: int) -> int:
    """Micro-units per hour for keeping `size` bytes at `price_gb_h` per GB-hour (at least 1)."""
    return max(1, math.ceil(price_gb_h * size / 10**9))


@dataclass
class ServedStats:
    payments: set[bytes] = field(default_factory=set)
    shards_served: int = 0
    fees_seen: int = 0

    def view(self) -> dict[str, Any]:
        return {"accesses": len(self.payments), "shards_served": self.shards_served,
                "fees_seen": format_amount(self.fees_seen)}


class AccessGate:
    """Serves shards of `store` to paying accessors (see the module docstring)."""

    def __init__(self, store: ShardStore, host_key: Callable[[], bytes | None],
                 verify_cert: Callable[[Certificate], None], epoch: Callable[[], int], clock: Callable[[], float],
                 metrics: HostingMetrics, *, uses: PaymentUses | None = None, timeout: float = STEP_TIMEOUT) -> None:
        self.store = store
        self.host_key = host_key
        self.verify_cert = verify_cert
        self.epoch = epoch
        self.clock = clock
        self.metrics = metrics
        self.uses = uses or PaymentUses()
        self.timeout = timeout
        self.served: dict[bytes, ServedStats] = {}
        self.refused: Counter[str] = Counter()

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Answer one request on `stream`, then close it. Never raises for the peer's faults."""
        try:
            with trio.move_on_after(self.timeout):
                await self._serve(stream)
        except (StreamClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.debug("hosted access stream ended: %s", e)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass

    async def _serve(self, stream: trio.abc.Stream) -> None:
        reader = FrameReader(stream)
        try:
            try:
                raw = await reader.recv_obj(MAX_REQUEST, "hosted access request")
            except RemoteProtocolError as e:
                raise AccessRefused(Refusal.MALFORMED, str(e)) from None
            req = decode_access_request(raw)
            host = self.host_key()
            if host is None:
                raise StoreError("the hosting service is not up yet")
            lease = self.store.serveable(req.sid, req.shard, self.clock())
            cert = check_payment(req, lease.terms(), host, verify_cert=self.verify_cert, epoch=self.epoch())
            if cert is not None:
                self.uses.admit(cert.tx_id, req.shard)
            data = self.store.read(req.shard)
        except AccessRefused as e:
            self.refused[e.reason.value] += 1
            self.metrics.requests.labels(e.reason.value).inc()
            log.info("hosted shard request refused: %s", e)
            await send_obj(stream, Refused(e.reason.value, e.detail).to_wire())
            return
        except StoreError as e:
            self.refused["store"] += 1
            self.metrics.requests.labels("store").inc()
            await send_obj(stream, Refused("store", str(e)).to_wire())
            return
        await send_obj(stream, {"v": 1, "t": "shard", "size": len(data)})
        for i in range(0, len(data), CHUNK):
            await send_frame(stream, data[i:i + CHUNK])
        st = self.served.setdefault(req.sid, ServedStats())
        st.shards_served += 1
        if cert is not None and cert.tx_id not in st.payments:
            st.payments.add(cert.tx_id)
            st.fees_seen += cert.order.order.amount
        self.metrics.requests.labels("served").inc()


class HostingServer:
    """This node as a host (see the module docstring)."""

    def __init__(self, *, overlay: Overlay, services: Services, root: Path, quota_mib: int, price: int,
                 grace: float, clock: Callable[[], float], metrics: HostingMetrics,
                 add_service: Callable[[int], FogAddress]) -> None:
        """`add_service(port)` maps the hosting .fog service to 127.0.0.1:`port` and returns its
        address (the role does it: it owns the service table)."""
        self.overlay = overlay
        self.services = services
        self.quota = quota_mib * MIB
        self.price = price
        self.grace = grace
        self.clock = clock
        self.metrics = metrics
        self._add_service = add_service
        self.store = ShardStore(root, self.quota)
        self.address: FogAddress | None = None
        self.gate = AccessGate(self.store, lambda: self.address.pubkey if self.address else None,
                               self._verify_cert, self._epoch, clock, metrics)
        self.owners_refused: Counter[str] = Counter()
        metrics.stored_bytes.set_function(lambda: self.store.used)

    @property
    def enabled(self) -> bool:
        return self.quota > 0

    def _ledger(self) -> Any:
        ledger = ledger_api(self.services)
        if ledger is None:
            raise StoreError("no ledger runs on this node: payments cannot be checked")
        return ledger

    def _verify_cert(self, cert: Certificate) -> None:
        self._ledger().verify_certificate(cert)

    def _epoch(self) -> int:
        return int(self._ledger().current_epoch())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (nothing but the owner stream's refusal when not hosting)."""
        self.overlay.set_stream_handler(PROTOCOL_ID, self.serve_owner)
        if not self.enabled:
            task_status.started()
            return
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, self.gate.serve, 0)
            port = listeners[0].socket.getsockname()[1]
            self.address = self._add_service(port)
            nursery.start_soon(self._offer_loop)
            nursery.start_soon(self._expire_loop)
            task_status.started()

    async def _offer_loop(self) -> None:
        while True:
            market = market_api(self.services)
            if market is None:
                await trio.sleep(2.0)
                continue
            free_mib = max(0, (self.quota - self.store.used) // MIB)
            try:
                market.register_service_offering(id=OFFER_ID, service="fog.hosting", cores=1, memory_mib=0,
                                                 disk_mib=free_mib, prices={"gb_h": self.price}, ttl=OFFER_TTL)
            except FognodeError as e:
                log.warning("fog.hosting offer not published: %s", e)
                await trio.sleep(30.0)
                continue
            await trio.sleep(OFFER_EVERY)

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(EXPIRE_EVERY)
            for lease in self.store.expire(self.clock(), self.grace):
                log.info("hosted shard %s of service %s deleted: its hosting is no longer paid",
                         lease.shard.hex()[:16], lease.sid.hex()[:16])

    # -- owners ------------------------------------------------------------------------------

    async def serve_owner(self, stream: FramedStream) -> None:
        raw = await stream.recv(max_size=MAX_META)
        t = message_type(raw)
        try:
            if not self.enabled:
                raise StoreError("this node does not host (protocols.onion.hosting_quota_mib = 0)")
            if t == "quote":
                ledger = self._ledger()
                reply: dict[str, Any] = Quoted(ledger.default_wallet(), self.price,
                                               max(0, self.quota - self.store.used)).to_wire()
            elif t == "store":
                reply = await self._store(stream, raw)
            elif t == "note":
                reply = await self._note(raw, stream.remote_peer)
            else:
                raise HostingWireError(f"hosting message: unknown type {t!r}", peer=stream.remote_peer)
        except (StoreError, AccessRefused) as e:
            self.owners_refused[t or "?"] += 1
            log.info("hosting %s from %s refused: %s", t, stream.remote_peer, e)
            reply = Refused("store", str(e)).to_wire()
        except FognodeError as e:
            if isinstance(e, RemoteProtocolError):
                raise
            self.owners_refused[t or "?"] += 1
            log.info("hosting %s from %s failed: %s", t, stream.remote_peer, e)
            reply = Refused("ledger", str(e)).to_wire()
        await stream.send(reply)
        await stream.close()

    async def _store(self, stream: FramedStream, raw: Any) -> dict[str, Any]:
        req = decode_store_request(raw, peer=stream.remote_peer)
        self.store.check_room(req.shard, req.size)
        chunks: list[bytes] = []
        got = 0
        with trio.fail_after(STEP_TIMEOUT):
            while got < req.size:
                chunk = await stream.recv_bytes(max_size=min(CHUNK, req.size - got))
                if not chunk:
                    raise HostingWireError("hosting store: an empty chunk", peer=stream.remote_peer)
                chunks.append(chunk)
                got += len(chunk)
        data = b"".join(chunks)
        ledger = self._ledger()
        me = ledger.default_wallet()
        if req.rate < hosting_rate(self.price, req.size):
            raise StoreError(f"rate {req.rate}/h is below this host's price ({hosting_rate(self.price, req.size)}/h "
                             f"for {req.size} bytes at {self.price} per GB-hour)")
        escrow = None
        with trio.move_on_after(ESCROW_WAIT):
            while (escrow := ledger.escrow(req.escrow)) is None:
                await trio.sleep(0.2)
        if escrow is None:
            raise StoreError(f"escrow {req.escrow.hex()[:16]} is not on this node's ledger")
        if escrow.payee != me or escrow.closed or escrow.deadline != req.deadline or escrow.amount < req.rate:
            raise StoreError(f"escrow {req.escrow.hex()[:16]} does not pay this host the hosting "
                             "(payee, deadline, amount or state differ)")
        if req.note.escrow != req.escrow or not req.note.signed_by(escrow.customer):
            raise StoreError("the debit note is not the escrow customer's, for this escrow")
        lease = Lease(req.sid, req.shard, req.size, req.payee, req.fee, escrow.customer, req.escrow, req.rate,
                      self.clock(), escrow.deadline, 0)
        self.store.put(lease, data)          # StoreError when the bytes are not the named shard
        try:
            await self._collect_first_note(ledger, req.note)
        except FognodeError as e:
            self.store.remove(req.shard)
            raise StoreError(f"the first debit note could not be collected: {e}") from None
        self.store.credit(req.shard, req.note.due)
        assert self.address is not None
        log.info("hosting shard %s of service %s (%d bytes, %d/h, paid %d)", req.shard.hex()[:16],
                 req.sid.hex()[:16], req.size, req.rate, req.note.due)
        return {"v": 1, "t": "stored", "host": self.address.host}

    async def _collect_first_note(self, ledger: LedgerApi, note: DebitNote) -> None:
        """Collect `note` (module doc: driven again after a NotCertified until PAY_TIMEOUT)."""
        give_up = trio.current_time() + PAY_TIMEOUT
        while True:
            e = ledger.escrow(note.escrow)
            if e is not None and e.paid >= note.due:       # certified by an earlier drive
                return
            left = give_up - trio.current_time()
            if left <= 0:
                raise StoreError(f"the payout order was not certified within {PAY_TIMEOUT:g} s")
            try:
                await ledger.pay_debit_note(note, timeout=min(STEP_TIMEOUT / 2, left))
                return
            except NotCertified as err:
                self.metrics.order_redrives.labels("first_note").inc()
                log.info("first debit note of escrow %s not collected yet, driving it again: %s",
                         note.escrow.hex()[:16], err)
            except OrderRejected:
                e = ledger.escrow(note.escrow)
                if e is None or e.paid < note.due:
                    raise

    async def _note(self, raw: Any, peer: str) -> dict[str, Any]:
        msg = decode_note_message(raw, peer=peer)
        lease = self.store.leases.get(msg.shard)
        if lease is None or msg.note.escrow != lease.escrow or not msg.note.signed_by(lease.customer):
            raise StoreError("no lease of that shard under that note's escrow here")
        if msg.note.due > lease.paid:
            await self._ledger().pay_debit_note(msg.note, timeout=STEP_TIMEOUT / 2)
            lease = self.store.credit(msg.shard, msg.note.due)
        return {"v": 1, "t": "credited", "paid": lease.paid, "paid_until": int(lease.paid_until())}

    def view(self) -> dict[str, Any]:
        now = self.clock()
        return {"address": self.address.host if self.address else None, **self.store.view(now),
                "price_gb_h": format_amount(self.price), "refused": dict(self.gate.refused),
                "owners_refused": dict(self.owners_refused),
                "services": {sid.hex(): st.view() for sid, st in self.gate.served.items()}}
