"""Our Kademlia DHT: py-libp2p 0.8.1's KadDHT on `/fognode/kad/1.0.0`, with PUT_VALUE admission.

Two things are done here, once, for the one DHT node/host.py builds (`FognodeKadDHT`):

1. **Our own protocol id** (bite 17 in node/host.py). KadDHT hard-codes `/ipfs/kad/1.0.0`, the
   public IPFS network's id: its `protocol_prefix` option is stored and ignored, and five of
   its modules import `PROTOCOL_ID` by name. A fognode node on that id would answer and query
   public IPFS peers with records they reject. Rather than patch a module global for the whole
   process, the DHT gets `KadHost`, the host as the DHT sees it: it rewrites the KAD id to
   `DHT_PROTOCOL` where the DHT registers its handler and opens streams, and in peers'
   protocol lists (the routing table admits only peers that list the KAD id, so a peer that
   speaks only `/ipfs/kad/1.0.0` never enters it). A peer asking for `/ipfs/kad/1.0.0` is
   refused by multistream: this node has no handler for it.
2. **PUT_VALUE admission** (node/dhtquota.py holds the policy). KadDHT handles PUT_VALUE in
   one long method that calls, with no await in between, the validator's `validate`, then
   `select` against a record already held, then the value store's `put_record`. The handler
   wrapper that `KadHost` installs records which peer opened the stream (a context variable,
   local to that handler's task), so those three calls know the source:
   `_AdmittingValidator.validate` checks the quota before the (costly) signature check and
   counts invalid records, `select` counts stale ones, `_AdmittingValueStore.put_record`
   charges the stored record to its source and keeps the books in step with every removal.
   A refusal is counted in `fognode_node_dht_put_refused_total{reason}`, logged as a WARNING
   at most once per `LOG_INTERVAL` per reason, and a peer's fault is charged to that peer
   (`penalize`). py-libp2p then resets the stream without an acknowledgement, as the spec
   asks. Only namespaces a role registers are accepted (no `/pk`, `/ipns` fallbacks).
3. **ADD_PROVIDER admission**, the same pattern: `_AdmittingProviderStore` books each peer's
   provider records with the same per-peer and total limits (refusals in
   `fognode_node_dht_provider_refused_total{reason}`); py-libp2p still echoes the request.
"""
from __future__ import annotations

import contextvars
import logging
import time
from typing import Any, Awaitable, Callable, Iterable, Sequence

from libp2p.custom_types import TProtocol
from libp2p.kad_dht.common import PROTOCOL_ID as IPFS_KAD_PROTOCOL
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.kad_dht.pb.kademlia_pb2 import Record
from libp2p.kad_dht.provider_store import ProviderStore
from libp2p.kad_dht.value_store import ValueStore
from libp2p.records.validator import NamespacedValidator
from prometheus_client import CollectorRegistry, Counter, Gauge

from fognode.node.dhtquota import LOCAL, DhtLimits, RecordQuota, Refusal
from fognode.node.errors import RemoteProtocolError
from fognode.node.faults import LogRateLimiter
from fognode.node.metrics import metric

log = logging.getLogger("fognode.dht")

DHT_PROTOCOL = "/fognode/kad/1.0.0"
LOG_INTERVAL = 30.0     # seconds between two WARNING lines about refused puts of one reason

# The peer whose inbound DHT stream the current task serves; None outside such a handler
# (this node's own puts and look-ups). Set only by KadHost's handler wrapper.
_PUT_SOURCE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fognode_dht_put_source", default=None)

Penalize = Callable[[str, str], None]


class RecordRefused(RemoteProtocolError):
    """A peer's PUT_VALUE was not stored; `reason` says why (node/dhtquota.py `Refusal`)."""

    def __init__(self, reason: Refusal, message: str, *, peer: str) -> None:
        self.reason = reason
        super().__init__(message, peer=peer)


def _ours(protocol_id: str) -> TProtocol:
    return TProtocol(DHT_PROTOCOL if protocol_id == IPFS_KAD_PROTOCOL else protocol_id)


def _with_put_source(handler: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    async def serve(stream: Any) -> None:
        token = _PUT_SOURCE.set(str(stream.muxed_conn.peer_id))
        try:
            await handler(stream)
        finally:
            _PUT_SOURCE.reset(token)
    return serve


class _KadPeerstore:
    """The peerstore as the DHT sees it: a peer lists the KAD id iff it speaks ours."""

    def __init__(self, peerstore: Any) -> None:
        self._ps = peerstore

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ps, name)

    def get_protocols(self, peer_id: Any) -> list[str]:
        protos = [p for p in self._ps.get_protocols(peer_id) if p != IPFS_KAD_PROTOCOL]
        if DHT_PROTOCOL in protos:
            protos.append(IPFS_KAD_PROTOCOL)
        return protos


class KadHost:
    """The libp2p host as KadDHT sees it: `/ipfs/kad/1.0.0` reads `/fognode/kad/1.0.0` (see
    the module docstring). Everything else is the host itself."""

    def __init__(self, host: Any) -> None:
        self._host = host

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    def set_stream_handler(self, protocol_id: str, handler: Any) -> None:
        self._host.set_stream_handler(_ours(protocol_id), _with_put_source(handler))

    def remove_stream_handler(self, protocol_id: str) -> None:
        self._host.remove_stream_handler(_ours(protocol_id))

    async def new_stream(self, peer_id: Any, protocol_ids: Sequence[str]) -> Any:
        return await self._host.new_stream(peer_id, [_ours(p) for p in protocol_ids])

    def get_peerstore(self) -> Any:
        return _KadPeerstore(self._host.get_peerstore())


_KINDS = {  # kind -> (message name, metric names: refused, stored, records)
    "value": ("PUT_VALUE", "fognode_node_dht_put_refused_total",
              "fognode_node_dht_put_stored_total", "fognode_node_dht_records"),
    "provider": ("ADD_PROVIDER", "fognode_node_dht_provider_refused_total",
                 "fognode_node_dht_provider_stored_total", "fognode_node_dht_provider_records"),
}


class PutAdmission:
    """Applies `RecordQuota` to peers' puts of one kind ("value": PUT_VALUE records, or
    "provider": ADD_PROVIDER records): counts, logs (rate-limited) and charges refusals."""

    def __init__(self, limits: DhtLimits, metrics: CollectorRegistry, penalize: Penalize, *,
                 kind: str = "value", clock: Callable[[], float] = time.monotonic) -> None:
        self.message, refused, stored, records = _KINDS[kind]
        self.quota = (RecordQuota(limits) if kind == "value" else
                      RecordQuota(limits, namespace=lambda key: kind))
        self.penalize = penalize
        self.clock = clock
        self._log_limit = LogRateLimiter(interval=LOG_INTERVAL)   # one WARNING per reason per interval
        self.m_refused = metric(metrics, Counter, refused,
                                f"Peers' DHT {self.message}s not stored, by reason", ["reason"])
        self.m_stored = metric(metrics, Counter, stored,
                               f"Peers' DHT {self.message}s stored (new records and updates)")
        self.m_records = metric(metrics, Gauge, records,
                                f"Records held in this node's DHT {kind} store")

    def admit(self, key: bytes, size: int, source: str) -> None:
        """Raise RecordRefused (after counting it) when `source` may not store `key`."""
        reason = self.quota.check(key, size, source)
        if reason is not None:
            detail = {Refusal.TOO_LARGE: f"{size} bytes, over {self.quota.limits.max_record_size}",
                      Refusal.PER_PEER: f"the peer already holds "
                                        f"{self.quota.held_by(source)} records here",
                      Refusal.NAMESPACE_FULL: f"{self.quota.limits.records_per_namespace} "
                                              f"records in its namespace",
                      Refusal.STORE_FULL: f"{len(self.quota)} records in the store"}[reason]
            raise self.refused(source, key, reason, detail)

    def refused(self, source: str, key: bytes, reason: Refusal, detail: str) -> RecordRefused:
        """Count and report one refusal; returns the error for the caller to raise."""
        err = RecordRefused(reason, f"DHT {self.message} of {key[:80]!r} refused "
                            f"({reason.value}): {detail}", peer=source)
        self.m_refused.labels(reason.value).inc()
        if reason.peer_fault:
            self.penalize(source, str(err))
        if reason is Refusal.STALE:
            log.debug("%s", err)
            return err
        held = self._log_limit.admit(reason, self.clock())
        if held is not None:
            log.warning("%s%s", err, f" ({held} more of this kind not logged)" if held else "")
        return err

    def stored(self, key: bytes, source: str) -> None:
        self.quota.charge(key, source)
        if source != LOCAL:
            self.m_stored.inc()
        self.m_records.set(len(self.quota))

    def released(self, key: bytes) -> None:
        self.quota.release(key)
        self.m_records.set(len(self.quota))

    def reconcile(self, stored: Iterable[bytes]) -> None:
        """The store dropped records by itself (expiry, eviction): forget those."""
        self.quota.reconcile(stored)
        self.m_records.set(len(self.quota))


class _AdmittingValidator(NamespacedValidator):
    """Strict namespaces (only those registered), with peers' puts admitted and counted."""

    def __init__(self, admission: PutAdmission) -> None:
        super().__init__({}, strict_validation=True)
        self._admission = admission

    def validate(self, key: str, value: bytes) -> None:
        source = _PUT_SOURCE.get()
        if source is None:
            return super().validate(key, value)
        key_bytes = key.encode("utf-8")
        self._admission.admit(key_bytes, len(value), source)   # before the signature check
        try:
            super().validate(key, value)
        except Exception as e:
            raise self._admission.refused(source, key_bytes, Refusal.INVALID,
                                          f"{type(e).__name__}: {e}") from None

    def select(self, key: str, values: list[bytes]) -> int:
        source = _PUT_SOURCE.get()
        if source is None:
            return super().select(key, values)
        # inside a DHT handler, select is only called by PUT_VALUE: [record held, new record]
        try:
            best = super().select(key, values)
        except Exception as e:
            raise self._admission.refused(source, key.encode("utf-8"), Refusal.INVALID,
                                          f"{type(e).__name__}: {e}") from None
        if best == 0 and len(values) == 2:
            self._admission.refused(source, key.encode("utf-8"), Refusal.STALE,
                                    "the record held is newer")
        return best


class _AdmittingValueStore(ValueStore):
    """py-libp2p's value store, keeping `PutAdmission`'s books in step with every change."""

    def __init__(self, host: Any, local_peer_id: Any, admission: PutAdmission) -> None:
        super().__init__(host=host, local_peer_id=local_peer_id)
        self.admission = admission

    def put(self, key: bytes, value: bytes, validity: float = 0.0) -> None:
        super().put(key, value, validity)
        self.admission.stored(key, LOCAL)

    def put_record(self, key: bytes, record: Record) -> None:
        source = _PUT_SOURCE.get() or LOCAL
        self.admission.admit(key, len(record.value), source)
        super().put_record(key, record)
        self.admission.stored(key, source)

    def remove(self, key: bytes) -> bool:
        removed = super().remove(key)
        self.admission.released(key)
        return removed

    def cleanup_expired(self) -> int:
        n = super().cleanup_expired()
        if n:
            self._reconcile()
        return n

    def _evict_if_full(self) -> None:
        # py-libp2p evicts only above 50,000 records; DhtLimits keeps peers' records far below
        # that, so only this node's own records could ever be evicted here
        before = len(self.store)
        super()._evict_if_full()
        if len(self.store) != before:
            self._reconcile()

    def _reconcile(self) -> None:
        self.admission.reconcile(self.store.keys())


class _AdmittingProviderStore(ProviderStore):
    """py-libp2p's provider store with a peer's ADD_PROVIDER records admitted by quota (one
    record per (key, provider); py-libp2p has checked that the provider is the sender)."""

    def __init__(self, host: Any, peer_routing: Any, admission: PutAdmission) -> None:
        super().__init__(host=host, peer_routing=peer_routing)
        self.admission = admission

    @staticmethod
    def _record(key: bytes, provider: str) -> bytes:
        return key + b"\0" + provider.encode()

    def add_provider(self, key: bytes, provider: Any) -> None:
        source = _PUT_SOURCE.get() or LOCAL
        if not provider or not provider.peer_id:
            return super().add_provider(key, provider)
        record = self._record(key, str(provider.peer_id))
        try:
            self.admission.admit(record, 0, source)
        except RecordRefused:
            return        # counted and reported; py-libp2p still echoes the request
        super().add_provider(key, provider)
        if str(provider.peer_id) in self.providers.get(key, {}):
            self.admission.stored(record, source)

    def get_providers(self, key: bytes) -> list[Any]:
        before = set(self.providers.get(key, {}))
        found = super().get_providers(key)              # drops expired providers of `key`
        for gone in before - set(self.providers.get(key, {})):
            self.admission.released(self._record(key, gone))
        return found

    def cleanup_expired(self) -> None:
        super().cleanup_expired()
        self.admission.reconcile(self._record(k, p) for k, ps in self.providers.items()
                                 for p in ps)


class FognodeKadDHT(KadDHT):
    """KadDHT in server mode on `DHT_PROTOCOL`, strict namespaces, admitted puts. `admission`
    holds the books (`admission.quota`). `penalize(peer, reason)` charges a peer's fault."""

    def __init__(self, host: Any, limits: DhtLimits, metrics: CollectorRegistry,
                 penalize: Penalize) -> None:
        self.admission = PutAdmission(limits, metrics, penalize)
        kad_host = KadHost(host)
        super().__init__(kad_host, DHTMode.SERVER,  # type: ignore[arg-type]  # IHost by delegation
                         validator=_AdmittingValidator(self.admission),
                         validator_changed=True, strict_validation=True)
        self.value_store = _AdmittingValueStore(kad_host, self.local_peer_id, self.admission)
        self.provider_admission = PutAdmission(limits, metrics, penalize, kind="provider")
        self.provider_store = _AdmittingProviderStore(kad_host, self.peer_routing,
                                                      self.provider_admission)


__all__ = ["DHT_PROTOCOL", "IPFS_KAD_PROTOCOL", "FognodeKadDHT", "KadHost", "PutAdmission",
           "RecordRefused"]
