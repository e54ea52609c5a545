"""Certificates on gossip: topic `fognode/ledger/certs/1`, {"v", "certs": [...], "committees"?}.

Outgoing: certificates this node formed are batched (`publish_later`): a batch leaves
`batch_interval` seconds after its first certificate, at most `batch_max` per message.
Incoming: each batch is decoded, its committee certificates handed to the rotation adapter and
its certificates applied; the gossip layer numbers messages per origin and pulls gaps, and a
certificate that cannot apply yet (missing predecessors) makes the replica sync with the peer
it came from (and its origin). A stopped ledger (storage failure) drops gossip: peers sync later.
"""
from __future__ import annotations

import logging

import trio

from fognode.ledger.errors import LedgerStorageFailed
from fognode.ledger.messages import Certificate, decode_certificate
from fognode.ledger.ports import Applier, CommitteeExchange, SyncTrigger
from fognode.ledger.settings import Settings
from fognode.ledger.sync import MAX_CERT_FRAME, MAX_SYNC_BATCH
from fognode.node.errors import FognodeError, RemoteProtocolError
from fognode.node.overlay import GossipMessage
from fognode.node.role import NodeContext
from fognode.node.wire import Fields, pack, unpack

log = logging.getLogger("fognode.ledger")

CERT_TOPIC = "fognode/ledger/certs/1"


class CertGossip:
    """The certificate topic of one replica: `run()` publishes batches (until cancelled),
    `on_gossip` is the subscription handler."""

    def __init__(self, ctx: NodeContext, settings: Settings, ledger: Applier, rotation: CommitteeExchange,
                 sync: SyncTrigger) -> None:
        self.ctx = ctx
        self.s = settings
        self.ledger = ledger
        self.rotation = rotation
        self.sync = sync
        self._outbox: list[Certificate] = []
        self._outbox_ready = trio.Event()

    def publish_later(self, cert: Certificate) -> None:
        self._outbox.append(cert)
        self._outbox_ready.set()

    async def run(self) -> None:
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

    async def on_gossip(self, msg: GossipMessage) -> None:
        if not self.ledger.serving():
            return       # the ledger stopped (storage failure, or shut down): peers sync later
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
            _, queued = self.ledger.ingest(msg.origin, certs, via=CERT_TOPIC)
        except LedgerStorageFailed:
            return       # reported once by _storage_failed; the role is stopping
        if queued:
            self.sync.sync_soon(msg.received_from)
            if msg.origin != msg.received_from:
                self.sync.sync_soon(msg.origin)
