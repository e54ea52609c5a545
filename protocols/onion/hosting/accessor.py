"""Accessing hosted data: anyone who knows its `.fog` address.

`HostedAccessor.access(address, wallet)` (the seed's `access_hidden_service(service_id,
accessor_wallet)`): the manifest from the DHT (opened with the address; forged or corrupt
ones refused), the fee paid from `wallet` to the owner (a transfer whose memo names the
service id and a fresh access key: fees.py), then the shards fetched from the hosts' hosting
services over rendezvous circuits of the level's hops, k at a time; a shard that fails its
hash is reported and another host tried. Any k verified shards give the content back.

Everything awaited is bounded (STEP_TIMEOUT per host step); HostingError says what failed.
"""
from __future__ import annotations

import logging
import random
from collections import deque
from typing import Any, Callable

import trio
from nacl.signing import SigningKey

from fognode.ledger.address import encode_address
from fognode.ledger.amounts import format_amount
from fognode.ledger.api import LedgerApi, ledger_api
from fognode.node.errors import FognodeError, StreamClosed
from fognode.node.overlay import Overlay
from fognode.node.role import Services
from fognode.protocols.onion.address import FogAddress, parse_address
from fognode.protocols.onion.hosting.errors import HostingError
from fognode.protocols.onion.hosting.fees import AccessRequest, access_memo
from fognode.protocols.onion.hosting.framing import FrameReader, send_obj
from fognode.protocols.onion.hosting.levels import PrivacyLevel, privacy_level
from fognode.protocols.onion.hosting.manifest import Manifest, ManifestError, dht_key, open_envelope, service_id
from fognode.protocols.onion.hosting.metrics import HostingMetrics
from fognode.protocols.onion.hosting.shards import ContentError, ShardMismatch, join, shard_size, verify_shard
from fognode.protocols.onion.hosting.wire import CHUNK, HOSTING_PORT, MAX_META, Refused, decode_reply

log = logging.getLogger("fognode.onion.hosted")

STEP_TIMEOUT = 90.0
DHT_TIMEOUT = 20.0
MANIFEST_WAIT = 60.0
FETCH_TRIES = 4           # attempts per host whose .fog service could not be reached
RETRY_PAUSE = 5.0         # seconds before the next attempt, times the attempts so far

Connector = Callable[[int, FogAddress, int], Any]   # (hops, address, port) -> awaitable trio stream


async def fetch_shard(stream: Any, request: AccessRequest, index: int, manifest: Manifest) -> bytes:
    """Ask for one shard on `stream` and return its verified bytes. HostingError with the
    host's refusal; ShardMismatch when the bytes are not the named shard; RemoteProtocolError
    or StreamClosed when the host breaks the wire."""
    reader = FrameReader(stream)
    await send_obj(stream, request.to_wire())
    head = decode_reply(await reader.recv_obj(MAX_META, "hosted shard reply"), "shard", {"size": "int"})
    if isinstance(head, Refused):
        raise HostingError(f"refused ({head.reason}): {head.message}")
    want = shard_size(manifest.size, manifest.k)
    if head["size"] != want:
        raise ShardMismatch(index, f"shard {index}: the host announces {head['size']} bytes, the manifest says {want}")
    parts, got = [], 0
    while got < want:
        chunk = await reader.recv(min(CHUNK, want - got))
        parts.append(chunk)
        got += len(chunk)
    data = b"".join(parts)
    verify_shard(index, data, manifest.shards[index].hash, manifest.size, manifest.k)
    return data


class HostedAccessor:
    def __init__(self, *, overlay: Overlay, services: Services, clock: Callable[[], float], metrics: HostingMetrics,
                 connect: Connector, forget_circuit: Callable[[int, FogAddress], None],
                 rng: random.Random | None = None) -> None:
        """`connect(hops, address, port)` opens a stream to a `.fog` service through circuits of
        `hops` hops; `forget_circuit(hops, address)` closes the one kept for `address`; `rng`
        orders the hosts (random, so that accessors spread over them)."""
        self.rng = rng or random.Random()
        self.overlay = overlay
        self.services = services
        self.clock = clock
        self.metrics = metrics
        self.connect = connect
        self.forget_circuit = forget_circuit
        self.accessed: dict[str, dict[str, Any]] = {}    # by address: this node's own accesses

    def _ledger(self) -> LedgerApi:
        ledger = ledger_api(self.services)
        if ledger is None:
            raise HostingError("no ledger runs on this node: nothing can be paid")
        return ledger

    # -- accessing ---------------------------------------------------------------------------

    async def manifest(self, address: FogAddress) -> Manifest:
        key = dht_key(service_id(address.pubkey))
        bad = ""
        with trio.move_on_after(MANIFEST_WAIT):
            while True:
                try:
                    with trio.fail_after(DHT_TIMEOUT):
                        value = await self.overlay.dht_get(key)
                except (FognodeError, trio.TooSlowError, OSError, ValueError) as e:
                    value, bad = None, str(e)
                if value is not None:
                    try:
                        return open_envelope(value, address)[1]
                    except ManifestError as e:
                        raise HostingError(f"the manifest of {address.host} is refused: {e}") from None
                await trio.sleep(1.0)
        raise HostingError(f"no manifest of {address.host} in the DHT" + (f" ({bad})" if bad else ""))

    async def access(self, address: FogAddress, *, wallet: bytes | None = None) -> tuple[bytes, dict[str, Any]]:
        t0 = trio.current_time()
        man = await self.manifest(address)
        lvl = privacy_level(man.level)
        sid = service_id(address.pubkey)
        if man.expires < self.clock():
            raise HostingError(f"{address.host} expired at {man.expires}: its hosting was paid until then")
        ledger = self._ledger()
        payer = wallet or ledger.default_wallet()
        access_key = SigningKey.generate()
        cert = None
        if man.fee > 0:
            if not ledger.verify_payment_capability(payer, man.fee):
                raise HostingError(f"refused: wallet {encode_address(payer)} cannot pay the access fee of {man.fee} "
                                   f"micro-units plus the ledger fee of {ledger.order_fee()}")
            cert = await ledger.pay(man.payee, man.fee, access_memo(sid, bytes(access_key.verify_key)), wallet=payer)
        got, report = await self.fetch_shards(man, lvl, sid, access_key, cert)
        if len(got) < man.k:
            raise HostingError(f"only {len(got)} of the {man.k} shards needed could be fetched: " +
                               "; ".join(f"shard {r['shard']}: {r['error']}" for r in report))
        try:
            content = join(got, man.hashes, key=man.key, k=man.k, size=man.size)
        except ContentError as e:
            raise HostingError(f"the content of {address.host} does not reassemble: {e}") from None
        info = {"address": address.host, "name": man.name, "bytes": len(content), "fee_paid": man.fee if cert else 0,
                "payment_tx": cert.tx_id.hex() if cert else None, "privacy": lvl.to_json(),
                "shards_used": sorted(got), "failed": report, "seconds": round(trio.current_time() - t0, 2)}
        st = self.accessed.setdefault(address.host, {"accesses": 0, "fees_paid": 0})
        st["accesses"] += 1
        st["fees_paid"] += info["fee_paid"]
        return content, info

    async def fetch_shards(self, man: Manifest, lvl: PrivacyLevel, sid: bytes, access_key: SigningKey,
                           cert: Any) -> tuple[dict[int, bytes], list[dict[str, Any]]]:
        """Verified shards {index: bytes} (k of them when enough hosts answer), and what failed
        per host: bad bytes (`bad`: skipped, another host asked), refusals, unreachable hosts
        (tried again after the others and a pause, FETCH_TRIES in all). k fetches run at once."""
        order = list(range(man.n))
        self.rng.shuffle(order)
        pending = deque(order)
        tries = dict.fromkeys(order, 0)
        got: dict[int, bytes] = {}
        report: list[dict[str, Any]] = []

        async def worker() -> None:
            while pending and len(got) < man.k:
                i = pending.popleft()
                tries[i] += 1
                ref = man.shards[i]
                host = parse_address(ref.host)
                outcome = "ok"
                try:
                    got[i] = await self._fetch_one(lvl, host, i, man, AccessRequest.make(
                        access_key, host.pubkey, sid, ref.hash, cert))
                except ShardMismatch as e:
                    outcome = "bad_shard"
                    log.warning("host %s returned a bad shard %d of %s: %s", ref.host, i, man.name, e)
                    report.append({"shard": i, "host": ref.host, "error": str(e), "bad": True})
                except HostingError as e:           # the host refused (its reason), or broke the stream twice
                    outcome = "refused"
                    report.append({"shard": i, "host": ref.host, "error": str(e)})
                except (FognodeError, trio.TooSlowError, OSError, trio.BrokenResourceError) as e:
                    outcome = "failed"               # not reached: again after the others, after a pause
                    if tries[i] < FETCH_TRIES:      # (a host re-publishes when its introduction points move)
                        log.info("host %s of shard %d not reached (%s); trying again", ref.host, i, e)
                        await trio.sleep(RETRY_PAUSE * tries[i])
                        pending.append(i)
                    else:
                        report.append({"shard": i, "host": ref.host, "error": str(e) or type(e).__name__})
                self.metrics.fetches.labels(outcome).inc()
                if lvl.fresh_circuits:
                    self.forget_circuit(lvl.hops, host)

        async with trio.open_nursery() as nursery:
            for _ in range(man.k):
                nursery.start_soon(worker)
        return got, report

    async def _fetch_one(self, lvl: PrivacyLevel, host: FogAddress, i: int, man: Manifest,
                         req: AccessRequest) -> bytes:
        last: Exception | None = None
        for _ in range(2):
            with trio.fail_after(STEP_TIMEOUT):
                stream = await self.connect(lvl.hops, host, HOSTING_PORT)
                try:
                    return await fetch_shard(stream, req, i, man)
                except (StreamClosed, trio.BrokenResourceError) as e:
                    last = e                     # the circuit broke: once more over a fresh one
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await stream.aclose()
        raise HostingError(f"the stream to {host.host} broke twice: {last}")

    # -- views -------------------------------------------------------------------------------

    def stats(self, address: FogAddress | None = None) -> dict[str, Any]:
        """This node's own accesses (count and fees paid) per address."""
        return {a: {"my_accesses": st["accesses"], "my_fees_paid": format_amount(st["fees_paid"])}
                for a, st in self.accessed.items() if address is None or a == address.host}
