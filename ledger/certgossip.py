"""Certificates on gossip: topic `fognode/ledger/certs/1`, {"v", "certs": [...], "committees"?}.

Outgoing: certificates this node formed are batched (`publish_later`): a batch leaves
`batch_interval` seconds after its first certificate, at most `batch_max` per message.
Incoming: each batch is decoded, its committee certificates handed to the rotation adapter and
its certificates applied; the gossip layer numbers messages per origin and pulls gaps, and a
certificate that cannot apply yet (missing predecessors) makes the replica sync with the peer
it came from (and its origin). A stopped ledger (storage failure) drops gossip: peers sync later.

Before a batch is relayed, cached for pulls or handled, the gossip layer runs `check` on it
(node/gossip.py `subscribe(..., check=)`): `check_batch` decodes it and judges its content
only (sans-IO, no state that can be stale on one node and not another): each certificate is
for our chain, names no validator twice, and every vote signature (and the sender's, when the
replica checks it: `verify_sender`) verifies. Committee membership, quorum and funds depend on
state and stay with the replica. A batch that fails is not relayed, and the peer that relayed
it to us is charged: its origin may be a throw-away key that no charge reaches, and every node
checks before relaying, so an honest relayer never passes a bad batch on. The batch `check`
decoded is handed to `on_gossip` (the last CHECKED_KEPT, by their bytes) instead of being
decoded a second time; certificates are decoded through the certificate memo (certmemo.py).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Callable

import trio

from fognode.ledger.committee import CommitteeCertificate
from fognode.ledger.errors import LedgerStorageFailed
from fognode.ledger.genesis import Genesis
from fognode.ledger.certmemo import decode_certificate_once
from fognode.ledger.messages import Certificate, cert_batch
from fognode.ledger.ports import Applier, CommitteeExchange, SyncTrigger
from fognode.ledger.quorum import check_signature
from fognode.ledger.settings import Settings
from fognode.ledger.sync import MAX_CERT_FRAME, MAX_SYNC_BATCH
from fognode.node.errors import FognodeError, RemoteProtocolError
from fognode.node.overlay import GossipMessage
from fognode.node.role import NodeContext
from fognode.node.wire import Fields, unpack

log = logging.getLogger("fognode.ledger")

CERT_TOPIC = "fognode/ledger/certs/1"
CHECKED_KEPT = 16       # decoded batches `check` passed, waiting for `on_gossip`

DecodeCommittees = Callable[[list[Any], str], list[CommitteeCertificate]]


def decode_batch(data: bytes, peer: str, decode_committees: DecodeCommittees
                 ) -> tuple[list[Certificate], list[CommitteeCertificate]]:
    """Decode one batch of the certificate topic: (certificates, committee certificates).
    Raises RemoteProtocolError naming what was wrong."""
    f = Fields(unpack(data, max_size=MAX_CERT_FRAME, what="ledger certificate batch"),
               "ledger.CertBatch", versions={1}, peer=peer)
    certs = [decode_certificate_once(c, peer=peer) for c in f.list("certs", max_len=MAX_SYNC_BATCH)]
    committees = decode_committees(f.list("committees", optional=True) or [], peer)
    f.done()
    return certs, committees


Batch = tuple[list[Certificate], list[CommitteeCertificate]]


def check_batch(data: bytes, peer: str, decode_committees: DecodeCommittees, *, chain: str,
                verify_sender: bool) -> Batch:
    """The certificate topic's content check (module doc): decode, then per certificate its
    chain, distinct signers, vote signatures and (with `verify_sender`) the sender's signature.
    Returns the decoded batch; raises RemoteProtocolError naming the certificate and what was
    wrong."""
    batch = decode_batch(data, peer, decode_committees)
    certs = batch[0]
    for i, cert in enumerate(certs):
        what = f"ledger certificate batch: certs[{i}] ({cert.tx_id.hex()[:16]})"
        if cert.order.order.chain != chain:
            raise RemoteProtocolError(f"{what} is for chain {cert.order.order.chain!r}, not {chain!r}",
                                      peer=peer)
        signers = [v for v, _ in cert.votes]
        if len(set(signers)) != len(signers):
            raise RemoteProtocolError(f"{what} lists a validator twice", peer=peer)
        if verify_sender and not cert.order.signature_ok():
            raise RemoteProtocolError(f"{what}: the sender's signature is invalid", peer=peer)
        msg = cert.vote_message
        for validator, sig in cert.votes:
            if not check_signature(validator, msg, sig):
                raise RemoteProtocolError(f"{what}: the vote of {validator.hex()[:16]} is invalid",
                                          peer=peer)
    return batch


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
        self.chain = Genesis.from_node_genesis(ctx.genesis).chain_id
        self._outbox: list[Certificate] = []
        self._outbox_ready = trio.Event()
        self._checked: OrderedDict[bytes, Batch] = OrderedDict()    # by data: what `check` decoded

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
                    await self.ctx.overlay.publish(CERT_TOPIC, cert_batch(batch))
                except FognodeError as e:
                    log.warning("could not publish %d certificates: %s (peers will sync them)", len(batch), e)

    def check(self, msg: GossipMessage) -> bool:
        """The topic's `check=` (module doc): False refuses the batch before relay, and the
        peer that relayed it to us is charged."""
        try:
            batch = check_batch(msg.data, msg.origin, self.rotation.decode_list, chain=self.chain,
                                verify_sender=self.s.verify_sender)
        except RemoteProtocolError as e:
            self.ctx.overlay.penalize(msg.received_from or msg.origin,
                                      f"relayed a bad certificate batch of {msg.origin}: {e}",
                                      protocol=CERT_TOPIC)
            return False
        self._checked[msg.data] = batch
        while len(self._checked) > CHECKED_KEPT:
            self._checked.popitem(last=False)
        return True

    async def on_gossip(self, msg: GossipMessage) -> None:
        if not self.ledger.serving():
            return       # the ledger stopped (storage failure, or shut down): peers sync later
        try:
            checked = self._checked.pop(msg.data, None)
            certs, committees = checked or decode_batch(msg.data, msg.origin, self.rotation.decode_list)
        except RemoteProtocolError as e:   # `check` refused it already; kept for safety
            self.ctx.overlay.penalize(msg.received_from or msg.origin, str(e), protocol=CERT_TOPIC)
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
