"""Catch-up between replicas: the sync stream `/fognode/ledger/sync/1.0.0`, client and server,
and anti-entropy.

    {"v", "after", "limit", "committees_after"?} -> {"v", "certs": [[position, certificate]...],
                                                     "end", "committees"?}

repeated on one stream until the client has read the server's apply log up to its end. The
client keeps a cursor per peer (in memory and in the store; not part of the state); the
committee certificates after "committees_after" come first, as the certificates may be of
their epochs. A replica syncs with a peer when it connects, when a certificate from it cannot
apply yet (`sync_soon`), and every `sync_interval` (randomised) with one connected peer.
A peer whose answer is malformed has its cursor reset; a stopped ledger (storage failure,
service.py) neither serves nor pulls. The server sends the certificates as the store holds
them (their canonical encodings), without decoding them. The client skips a pulled certificate
that is byte for byte the one it applied for that (sender, sequence) (`stored_already`: two
store reads and a compare instead of a decode and a duplicate check; anti-entropy pulls every
peer's log, so most of what it reads is already applied) and decodes the rest through the
certificate memo (certmemo.py): one this node decoded recently costs a lookup.
"""
from __future__ import annotations

import logging
import random
from typing import Any

import msgpack
import trio

from fognode.ledger.certmemo import decode_certificate_once
from fognode.ledger.ports import Applier, CommitteeExchange
from fognode.ledger.settings import Settings
from fognode.ledger.state import LedgerState
from fognode.ledger.store import LedgerStore
from fognode.node.errors import FognodeError, RemoteProtocolError, StreamClosed
from fognode.node.events import PeerConnected
from fognode.node.overlay import FramedStream
from fognode.node.role import NodeContext
from fognode.node.wire import Fields, pack

log = logging.getLogger("fognode.ledger")

SYNC_STREAM = "/fognode/ledger/sync/1.0.0"
MAX_SYNC_BATCH = 1024
MAX_CERT_FRAME = 1 << 20


def sync_response(certs: list[tuple[int, bytes]], end: int, committees: list[Any] | None) -> bytes:
    """pack({"v": 1, "certs": [[position, certificate]...], "end": end, "committees"?}), the
    sync stream's response, built around the certificates' stored encodings (canonical:
    `Certificate.encoded()`) instead of decoding each and walking it again to pack it (keys
    "certs" < "committees" < "end" < "v"; tests check it equals pack())."""
    p = msgpack.Packer(use_bin_type=True)
    out = [b"\x83" if committees is None else b"\x84", p.pack("certs"), p.pack_array_header(len(certs))]
    for position, cert in certs:
        out += (b"\x92", p.pack(position), cert)
    if committees is not None:
        out += (p.pack("committees"), pack(committees))
    out += (p.pack("end"), p.pack(end), p.pack("v"), p.pack(1))
    return b"".join(out)


def stored_already(store: LedgerStore, raw: Any) -> bool:
    """True if `raw` (one certificate of a sync response, as unpacked) is byte for byte the
    stored encoding of the certificate this replica applied for its (sender, sequence): its
    decode would give that very certificate, which the replica would count as a duplicate, so
    the client skips both. Anything else (another certificate for the sequence, a malformed
    one, one not applied here) is False: it is decoded and checked as before."""
    try:
        o = raw["order"]["order"]
        sender, seq = o["sender"], o["sequence"]
    except (TypeError, KeyError, IndexError):
        return False
    if not isinstance(sender, bytes) or len(sender) != 32 or type(seq) is not int or not 0 <= seq < 2**63:
        return False
    tx = store.tx_at(sender, seq)
    if tx is None:
        return False
    try:
        return store.certificate_bytes(tx) == msgpack.packb(raw, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return False


class LedgerSync:
    """The sync stream of one replica. `run()` (in the ledger's nursery) serves until cancelled;
    `serve` is the stream handler."""

    def __init__(self, ctx: NodeContext, settings: Settings, store: LedgerStore, state: LedgerState,
                 ledger: Applier, rotation: CommitteeExchange) -> None:
        self.ctx = ctx
        self.s = settings
        self.store = store
        self.state = state
        self.ledger = ledger
        self.rotation = rotation
        self._cursors: dict[str, int] = {}
        self._syncing: set[str] = set()
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        """Anti-entropy and the syncs on connect; background syncs run here. Until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._anti_entropy)
                nursery.start_soon(self._sync_on_connect)
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def cursor(self, peer: str) -> int:
        """How far this replica has read `peer`'s apply log."""
        return self._cursors[peer] if peer in self._cursors else self.store.cursor(peer)

    def reset_cursor(self, peer: str) -> None:
        """Read `peer`'s apply log from its start at the next sync."""
        self.store.set_cursor(peer, 0)
        self._cursors[peer] = 0

    def is_syncing(self, peer: str) -> bool:
        return peer in self._syncing

    def connected_peers(self) -> list[str]:
        return [p.peer_id for p in self.ctx.overlay.peers() if p.connected]

    # -- server ----------------------------------------------------------------------------------

    async def serve(self, stream: FramedStream) -> None:
        while True:
            try:
                req = await stream.recv(max_size=1024)
            except StreamClosed:
                return
            if not self.ledger.serving():    # serve nothing from a failed or closed store
                await stream.reset()
                return
            f = Fields(req, "ledger.SyncRequest", versions={1}, peer=stream.remote_peer)
            after = f.int("after", lo=0, hi=2**62)
            limit = f.int("limit", lo=1, hi=MAX_SYNC_BATCH)
            committees_after = f.int("committees_after", lo=0, hi=2**40, optional=True)
            f.done()
            items = self.store.log_after(after, limit)
            committees = self.rotation.serve(committees_after) if committees_after is not None else None
            await stream.send_bytes(sync_response(items, self.store.log_length(), committees))

    # -- client ----------------------------------------------------------------------------------

    def sync_soon(self, peer: str) -> None:
        if self._nursery is not None and peer and peer != self.ctx.peer_id and peer not in self._syncing:
            self._nursery.start_soon(self.sync_with, peer)

    async def sync_with(self, peer: str) -> int:
        """Pull `peer`'s apply log from our cursor; returns certificates applied. Errors are
        logged (the next round retries)."""
        if peer in self._syncing or not self.ledger.serving():
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
                            if not stored_already(self.store, item[1]):
                                certs.append(decode_certificate_once(item[1], peer=peer))
                        deltas, _ = self.ledger.ingest(peer, certs, via=SYNC_STREAM)
                        applied += len(deltas)
                        self.ledger.note_cursor(peer, last)    # in the certificates' group or later
                        self._cursors[peer] = last
                        if not items or last >= end:
                            break
                finally:
                    await stream.close()
        except (FognodeError, trio.TooSlowError) as e:
            log.debug("sync with %s stopped: %s", peer, e)
            if isinstance(e, RemoteProtocolError):
                self.ctx.overlay.penalize(peer, str(e), protocol=SYNC_STREAM)
                if self.ledger.serving():
                    self.store.set_cursor(peer, 0)
                    self._cursors[peer] = 0
        finally:
            self._syncing.discard(peer)
        if applied:
            log.info("synced %d certificates from %s", applied, peer)
        return applied

    async def _anti_entropy(self) -> None:
        while True:
            await trio.sleep(self.s.sync_interval * (0.5 + random.random()))
            peers = self.connected_peers()
            if peers:
                await self.sync_with(random.choice(peers))

    async def _sync_on_connect(self) -> None:
        async with self.ctx.events.subscribe("ledger-sync", [PeerConnected]) as sub:
            for p in self.connected_peers():
                self.sync_soon(p)
            async for ev in sub:
                assert isinstance(ev, PeerConnected)
                self.sync_soon(ev.peer_id)
