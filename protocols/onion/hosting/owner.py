"""Deploying hosted data: the owner's side.

`HostedOwner.deploy(data, ...)` (the seed's `deploy_hidden_service(data, privacy_level,
budget)`): the level (levels.py) gives k-of-n; the n cheapest `fog.hosting` offers of distinct
providers in the market's book are tried in order. The content is sealed with a fresh key and
cut into n shards (shards.py); a fresh service key A makes the `.fog` address and the service
id A' (manifest.py). For each shard, in parallel: the host quotes (its payee wallet, price,
room), the owner opens a ledger escrow paying that host `rate * hours` (rate from the host's
price and the shard's size) with the deadline `hours` from now, signs a debit note for the
first `hosting_interval`, and sends the shard, the fee terms and the note; the host collects
the note before keeping the shard and answers with its hosting `.fog` address. A host that
fails is replaced by the next offer. The escrows' amounts plus their order fees must fit the
`budget` (checked before anything is paid). The manifest is sealed into the DHT, the deploy
recorded in `<datadir>/onion/hosted/<label>` (0600: it holds the service key), and
`HiddenServiceDeployed` published. While the owner's node runs, `notes_loop` signs a debit
note for the next interval of each lease; when the owner stops, hosts stop serving once the
paid time runs out. After a lease's deadline (+ REFUND_MARGIN) the owner refunds what each
escrow still holds, also for the escrows of a deploy that failed half-way. `payments_loop`
counts the access fees paid to our deployments (the ledger's PaymentProcessed events).

Everything awaited is bounded (STEP_TIMEOUT per host step, ESCROW_TIMEOUT per escrow);
HostingError says what failed.

Escrows under load (session 22). The escrows of one deploy come from one wallet, so the
ledger certifies them one after another (the submitter serialises a sender's orders; so does
`_ledger_lock`). On a loaded devnet (load 34-37) an order sometimes gathered no quorum within
the STEP_TIMEOUT / 2 it was given: NotCertified, the order left in flight, the host counted as
failed, and the retry signed a second order for the same agreement after the ledger had
certified the first (the submitter drives a sender's in-flight order before its next one),
which the ledger refused: the deploy failed and that escrow was never refunded. Now a
NotCertified is not the host's fault: the order is driven again until ESCROW_TIMEOUT, and an
escrow of the agreement already on this replica (certified by such a drive) is used as it is.
Escrows that a later drive certified after their shard gave up are swept into the deploy's
orphans (refunded after the deadline). The host waits the same way for our escrow and for its
first debit note (host.py), so a store's answer is awaited STORE_TIMEOUT.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgpack
import trio
from nacl.signing import SigningKey

from fognode.ledger.address import encode_address
from fognode.ledger.amounts import format_amount
from fognode.ledger.api import LedgerApi, ledger_api
from fognode.ledger.errors import OrderRejected
from fognode.ledger.events import PaymentProcessed
from fognode.ledger.submit import NotCertified
from fognode.node.datadir import write_atomic
from fognode.node.wire import digest
from fognode.node.errors import FognodeError
from fognode.node.events import Event, EventBus
from fognode.node.overlay import Overlay
from fognode.node.role import Services
from fognode.protocols.market.api import market_api
from fognode.protocols.market.messages import Offer
from fognode.protocols.onion.address import FogAddress, address_from_pubkey, parse_address
from fognode.protocols.onion.events import HiddenServiceDeployed
from fognode.protocols.onion.hosting.errors import HostingError
from fognode.protocols.onion.hosting.fees import MEMO_PREFIX, parse_memo
from fognode.protocols.onion.hosting.host import hosting_rate
from fognode.protocols.onion.hosting.levels import privacy_level
from fognode.protocols.onion.hosting.manifest import Manifest, ShardRef, seal, service_id
from fognode.protocols.onion.hosting.metrics import HostingMetrics
from fognode.protocols.onion.hosting.shards import shard_hash, shard_size, split
from fognode.protocols.onion.hosting.wire import (CHUNK, MAX_META, PROTOCOL_ID, NoteMessage, Quoted, Refused,
                                                  StoreRequest, decode_quoted, decode_refused, decode_reply,
                                                  message_type)

log = logging.getLogger("fognode.onion.hosted")

STEP_TIMEOUT = 90.0
ESCROW_TIMEOUT = 240.0    # s for one shard's escrow order, driven again after each STEP_TIMEOUT / 2
STORE_TIMEOUT = 300.0     # s for a host's answer to a store: it waits for our escrow and collects the first note
DHT_TIMEOUT = 20.0
ESCROW_GRACE = 3600
MAX_HOURS = 24 * 366
PLACE_TRIES = 2           # attempts per host whose stream broke during a deploy
REFUND_MARGIN = 120       # seconds after a lease's deadline before its escrow is refunded (validators' clocks)
HOSTED_DIR = "hosted"


def _access_payment(ev: Event) -> bool:
    """payments_loop's filter on the event bus: only access-fee payments (their memo, fees.py)
    wake it; every other certified transfer of the network is not queued."""
    return isinstance(ev, PaymentProcessed) and ev.memo.startswith(MEMO_PREFIX)


@dataclass
class Placement:
    index: int
    peer: str
    host: str            # the host's hosting .fog address
    shard: bytes
    escrow: bytes
    rate: int
    amount: int
    start: float
    due: int             # the cumulative debit note the host holds
    refunded: bool = False


@dataclass
class Deployment:
    seed: bytes          # the service key's seed (secret)
    name: str
    level: int
    fee: int
    size: int
    created: int
    expires: int
    placements: list[Placement] = field(default_factory=list)
    accesses: int = 0
    fees_received: int = 0
    failed: bool = False  # the deploy failed: its escrows are only refunded
    orphans: list[bytes] = field(default_factory=list)   # escrows of hosts that failed after it was opened

    @property
    def address(self) -> FogAddress:
        return address_from_pubkey(bytes(SigningKey(self.seed).verify_key))

    def encode(self) -> bytes:
        return msgpack.packb({**asdict(self), "placements": [asdict(p) for p in self.placements]}, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "Deployment":
        raw = msgpack.unpackb(data, raw=False)
        raw["placements"] = [Placement(**p) for p in raw["placements"]]
        return cls(**raw)


class HostedOwner:
    def __init__(self, *, overlay: Overlay, services: Services, events: EventBus, datadir: Path,
                 interval: float, clock: Callable[[], float], metrics: HostingMetrics) -> None:
        self.overlay = overlay
        self.services = services
        self.events = events
        self.root = datadir / HOSTED_DIR
        self.interval = interval
        self.clock = clock
        self.metrics = metrics
        self.deployments: dict[bytes, Deployment] = {}    # by service id
        self._ledger_lock = trio.Lock()
        self._load()

    # -- records -----------------------------------------------------------------------------

    def _load(self) -> None:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.iterdir()):
            if path.name.startswith("."):
                continue
            try:
                d = Deployment.decode(path.read_bytes())
            except (OSError, ValueError, TypeError, KeyError, msgpack.UnpackException) as e:
                log.warning("hosted deploy record %s does not decode (%s); its notes are not signed", path, e)
                continue
            self.deployments[service_id(d.address.pubkey)] = d

    def _save(self, d: Deployment) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.root / d.address.label, d.encode(), 0o600)

    def _ledger(self) -> LedgerApi:
        ledger = ledger_api(self.services)
        if ledger is None:
            raise HostingError("no ledger runs on this node: nothing can be paid")
        return ledger

    # -- deploying ---------------------------------------------------------------------------

    async def deploy(self, data: bytes, *, name: str, level: int, budget: int, fee: int,
                     hours: int) -> dict[str, Any]:
        t0 = trio.current_time()
        try:
            out = await self._deploy(data, name=name, level=level, budget=budget, fee=fee, hours=hours)
        except BaseException:
            self.metrics.deploys.labels("failed").inc()
            raise
        self.metrics.deploys.labels("ok").inc()
        return {**out, "seconds": round(trio.current_time() - t0, 2)}

    async def _deploy(self, data: bytes, *, name: str, level: int, budget: int, fee: int,
                      hours: int) -> dict[str, Any]:
        lvl = privacy_level(level)
        if not 1 <= hours <= MAX_HOURS:
            raise HostingError(f"hours must be between 1 and {MAX_HOURS}, got {hours}")
        ledger = self._ledger()
        market = market_api(self.services)
        if market is None:
            raise HostingError("no market role runs on this node: hosts are found through its fog.hosting offers")
        by_provider: dict[bytes, Offer] = {}
        for o in market.find_offers("fog.hosting"):
            if o.price("gb_h") is not None and (o.provider not in by_provider or
                                                 o.price("gb_h") < by_provider[o.provider].price("gb_h")):
                by_provider[o.provider] = o
        offers = sorted(by_provider.values(), key=lambda o: (o.price("gb_h"), o.peer))
        if len(offers) < lvl.n:
            raise HostingError(f"privacy level {level} needs {lvl.n} hosts; the market knows {len(offers)} "
                               "fog.hosting offers of other nodes")
        sharded = split(data, lvl.k, lvl.n)
        size = shard_size(sharded.size, lvl.k)
        order_fee = ledger.order_fee()
        # the budget check, at the n cheapest offers' prices (a replacement host may cost more: checked again)
        cheapest = sum(hosting_rate(o.price("gb_h") or 0, size) * hours + order_fee for o in offers[:lvl.n])
        if cheapest > budget:
            raise HostingError(f"budget {budget} is below the cheapest hosting: {lvl.n} hosts x {hours} h of a "
                               f"{size}-byte shard plus the escrow fees cost {cheapest} micro-units")
        owner = ledger.default_wallet()
        if not ledger.verify_payment_capability(owner, cheapest):
            raise HostingError(f"this node's wallet cannot pay {cheapest} micro-units of hosting")
        key = SigningKey.generate()
        address = address_from_pubkey(bytes(key.verify_key))
        sid = service_id(address.pubkey)
        now = self.clock()
        deadline = int(now) + hours * 3600
        candidates = deque(offers)
        tries: dict[bytes, int] = {}
        placed: dict[int, Placement] = {}
        opened: list[bytes] = []        # every escrow opened, placed or not (all refunded in the end)
        held: dict[bytes, tuple[bytes, int, Any]] = {}   # agreement -> (escrow, first amount, its note)
        tried: set[bytes] = set()       # agreements an escrow order was signed for
        failures: list[str] = []
        spent = [0]

        async def place(i: int) -> None:
            while candidates:
                offer = candidates.popleft()
                tries[offer.provider] = tries.get(offer.provider, 0) + 1
                try:
                    placed[i] = await self._place(offer, i, sharded.shards[i], sid, owner, fee, hours, deadline,
                                                  budget, spent, opened, held, tried)
                    return
                except HostingError as e:               # the host refused, or no room, or over budget
                    failures.append(f"{offer.peer}: {e}")
                    log.info("hosting shard %d at %s refused: %s", i, offer.peer, e)
                except (FognodeError, trio.TooSlowError, OSError) as e:
                    failures.append(f"{offer.peer}: {e}")
                    log.info("hosting shard %d at %s failed: %s", i, offer.peer, e)
                    if tries[offer.provider] < PLACE_TRIES:     # a stream that broke: once more, after the others
                        candidates.append(offer)

        async with trio.open_nursery() as nursery:
            for i in range(lvl.n):
                nursery.start_soon(place, i)
        # an order whose shard gave up may have been certified by a later drive: refunded too
        opened += [e for a in tried if (e := ledger.escrow_id(owner, a)) not in opened
                   and ledger.escrow(e) is not None]
        orphans = sorted(set(opened) - {p.escrow for p in placed.values()})
        if len(placed) < lvl.n:
            if opened:         # refunded after their deadline by the notes loop
                gone = Deployment(bytes(key), name, level, fee, len(data), int(now), deadline,
                                  [placed[i] for i in sorted(placed)], failed=True, orphans=orphans)
                self.deployments[sid] = gone
                self._save(gone)
            raise HostingError(f"only {len(placed)} of {lvl.n} shards found a host ({spent[0]} micro-units spent on "
                               f"their escrows, refunded after {hours} h): " + "; ".join(failures[-5:]))
        manifest = Manifest(name, level, lvl.k, lvl.n, sharded.size, sharded.key, fee, owner, int(now), deadline,
                            tuple(ShardRef(placed[i].host, sharded.hashes[i]) for i in range(lvl.n)))
        dkey, value = seal(manifest, key, rev=int(now))
        d = Deployment(bytes(key), name, level, fee, len(data), int(now), deadline,
                       [placed[i] for i in range(lvl.n)], orphans=orphans)
        self.deployments[sid] = d
        self._save(d)
        await self._put(dkey, value)
        self.events.publish(HiddenServiceDeployed(name=name, address=address.host, intro_points=0, ports=(),
                                                  shards=lvl.n))
        return {"address": address.host, "service_id": sid.hex(), "name": name, "bytes": len(data),
                "privacy": lvl.to_json(), "fee": format_amount(fee), "hours": hours, "expires": deadline,
                "hosting_cost": format_amount(spent[0]), "hosts": [p.host for p in d.placements]}

    async def _put(self, key: str, value: bytes) -> None:
        last = ""
        for _ in range(5):
            try:
                with trio.fail_after(DHT_TIMEOUT):
                    await self.overlay.dht_put(key, value)
                return
            except (FognodeError, trio.TooSlowError, OSError, ValueError) as e:
                last = str(e) or type(e).__name__
                await trio.sleep(1.0)
        raise HostingError(f"the manifest could not be stored in the DHT: {last}")

    async def _ask(self, peer: str, msg: dict[str, Any], chunks: bytes = b"") -> Any:
        stream = await self.overlay.open_stream(peer, PROTOCOL_ID)
        try:
            await stream.send(msg)
            for i in range(0, len(chunks), CHUNK):
                await stream.send_bytes(chunks[i:i + CHUNK])
            return await stream.recv(max_size=MAX_META)
        finally:
            await stream.close()

    async def _place(self, offer: Offer, i: int, shard: bytes, sid: bytes, owner: bytes, fee: int, hours: int,
                     deadline: int, budget: int, spent: list[int], opened: list[bytes],
                     held: dict[bytes, tuple[bytes, int, Any]], tried: set[bytes]) -> Placement:
        ledger = self._ledger()
        with trio.fail_after(STEP_TIMEOUT):
            q = await self._ask(offer.peer, {"v": 1, "t": "quote"})
        if message_type(q) == "refused":
            raise HostingError(f"quote refused: {decode_refused(q, peer=offer.peer).message}")
        quote: Quoted = decode_quoted(q, peer=offer.peer)
        if quote.free < len(shard):
            raise HostingError(f"no room: {quote.free} bytes free, the shard is {len(shard)}")
        rate = hosting_rate(quote.price, len(shard))
        amount = rate * hours
        agreement = digest(sid + shard_hash(shard) + offer.provider)   # the escrow id mixes in the customer
        async with self._ledger_lock:
            if agreement in held:
                # this shard's retry at a host whose stream broke: its escrow is open already (opening
                # it again is refused by the ledger as a conflict: seen failing the devnet deploy)
                escrow, first, note = held[agreement]
            else:
                if spent[0] + amount + ledger.order_fee() > budget:
                    raise HostingError(f"over budget: this host costs {amount} (+ fee), {budget - spent[0]} left")
                tried.add(agreement)
                escrow = await self._open_escrow(ledger, owner, agreement, quote.payee, amount, deadline)
                spent[0] += amount + ledger.order_fee()
                opened.append(escrow)
                first = min(amount, math.ceil(rate * self.interval / 3600))
                note = await ledger.sign_debit_note(escrow, first)
                held[agreement] = (escrow, first, note)
        req = StoreRequest(sid, shard_hash(shard), len(shard), owner, fee, escrow, rate, deadline, note)
        with trio.fail_after(STORE_TIMEOUT):
            reply = decode_reply(await self._ask(offer.peer, req.to_wire(), shard), "stored", {"host": "str"},
                                 peer=offer.peer)
        if isinstance(reply, Refused):
            raise HostingError(f"the host refused the shard ({reply.reason}): {reply.message}")
        try:
            parse_address(reply["host"])
        except ValueError as e:
            raise HostingError(f"the host's hosting address: {e}") from None
        return Placement(i, offer.peer, reply["host"], shard_hash(shard), escrow, rate, amount, self.clock(), first)

    async def _open_escrow(self, ledger: LedgerApi, owner: bytes, agreement: bytes, payee: bytes, amount: int,
                           deadline: int) -> bytes:
        """The id of `agreement`'s escrow, opened now or found open on this replica (module
        doc: a NotCertified order is driven again until ESCROW_TIMEOUT)."""
        eid = ledger.escrow_id(owner, agreement)
        give_up = trio.current_time() + ESCROW_TIMEOUT
        while True:
            e = ledger.escrow(eid)
            if e is not None:
                if e.customer != owner or e.payee != payee or e.closed:
                    raise HostingError(f"escrow {eid.hex()[:16]} of this shard is open with other terms")
                return eid
            left = give_up - trio.current_time()
            if left <= 0:
                raise HostingError(f"the escrow order for this host was not certified within {ESCROW_TIMEOUT:g} s "
                                   "(it stays in flight; refunded after the deadline if it is certified later)")
            try:
                cert = await ledger.open_escrow(agreement, payee, amount, deadline, ESCROW_GRACE,
                                                timeout=min(STEP_TIMEOUT / 2, left))
                return bytes(cert.order.order.escrow)
            except NotCertified as err:
                self.metrics.order_redrives.labels("escrow").inc()
                log.info("hosting escrow %s not certified yet, driving it again: %s", eid.hex()[:16], err)
            except OrderRejected:
                if ledger.escrow(eid) is None:   # not "open already" after a drive certified it: a refusal
                    raise

    # -- paying the hosts --------------------------------------------------------------------

    async def notes_loop(self) -> None:
        """Every interval/2, sign each lease's debit note for the next interval and hand it
        over; after a lease's deadline, refund what its escrow still holds."""
        while True:
            await trio.sleep(max(5.0, self.interval / 2))
            for d in list(self.deployments.values()):
                if self.clock() >= d.expires + REFUND_MARGIN:
                    await self._refund(d)
                    continue
                for p in d.placements:
                    due = min(p.amount, math.ceil(p.rate * (self.clock() - p.start + self.interval) / 3600))
                    if d.failed or due <= p.due or self.clock() > d.expires:
                        continue
                    try:
                        with trio.fail_after(STEP_TIMEOUT):
                            note = await self._ledger().sign_debit_note(p.escrow, due)
                            reply = decode_reply(await self._ask(p.peer, NoteMessage(p.shard, note).to_wire()),
                                                 "credited", {"paid": "int", "paid_until": "int"}, peer=p.peer)
                    except (FognodeError, trio.TooSlowError, OSError) as e:
                        log.info("debit note for %s at %s not delivered: %s", p.host, p.peer, e)
                        continue
                    if isinstance(reply, Refused):
                        log.warning("host %s refused the debit note of shard %d: %s", p.peer, p.index, reply.message)
                        continue
                    p.due = due
                    self._save(d)

    async def _refund(self, d: Deployment) -> None:
        for escrow in list(d.orphans):          # opened for a host that then failed
            try:
                await self._ledger().refund_escrow(escrow, timeout=STEP_TIMEOUT / 2)
            except FognodeError as e:
                log.info("escrow %s of %s not refunded yet: %s", escrow.hex()[:16], d.address.host, e)
                continue
            d.orphans.remove(escrow)
            self._save(d)
        for p in d.placements:
            if p.refunded:
                continue
            try:
                await self._ledger().refund_escrow(p.escrow, timeout=STEP_TIMEOUT / 2)
            except FognodeError as e:
                log.info("escrow %s of %s not refunded yet: %s", p.escrow.hex()[:16], d.address.host, e)
                continue
            p.refunded = True
            self._save(d)

    async def payments_loop(self) -> None:
        """Count the access fees paid to our deployments (the ledger's PaymentProcessed events)."""
        async with self.events.subscribe("onion.hosted", [PaymentProcessed], size=1024,
                                         accept=_access_payment) as sub:
            async for ev in sub:
                assert isinstance(ev, PaymentProcessed)
                parsed = parse_memo(ev.memo)
                d = self.deployments.get(parsed[0]) if parsed is not None else None
                if d is None:
                    continue
                try:
                    owner = self._ledger().default_wallet()
                except FognodeError:
                    continue
                if ev.recipient == encode_address(owner) and ev.amount >= d.fee:
                    d.accesses += 1
                    d.fees_received += ev.amount
                    self._save(d)

    # -- views -------------------------------------------------------------------------------

    def stats(self, address: FogAddress | None = None) -> dict[str, Any]:
        """get_service_stats for our deployments: accesses and fees received, hosts and their pay."""
        out: dict[str, Any] = {}
        for sid, d in self.deployments.items():
            a = d.address.host
            if d.failed or (address is not None and a != address.host):
                continue
            out[a] = {"name": d.name, "service_id": sid.hex(), "level": d.level, "fee": format_amount(d.fee),
                      "bytes": d.size, "expires": d.expires, "accesses": d.accesses,
                      "fees_received": format_amount(d.fees_received),
                      "hosts": [{"host": p.host, "shard": p.index, "rate_per_hour": format_amount(p.rate),
                                 "paid": format_amount(p.due)}
                                for p in d.placements]}
        return out
