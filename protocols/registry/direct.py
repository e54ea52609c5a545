"""The registry's direct stream (`/fognode/registry/1.0.0`): ping, and pull a device's record.

One request per stream, one msgpack frame each way::

    {"v": 1, "t": "ping"}  ->  {"v": 1, "t": "pong"}
    {"v": 1, "t": "get"}   ->  {"v": 1, "t": "record", "record": <signed record bytes>}
    {"v": 1, "t": "sync", "epoch": <8 bytes or empty>, "after": <int>}
        ->  {"v": 1, "t": "records", "epoch": <8 bytes>, "next": <int>, "more": <bool>,
             "records": [<signed record bytes>, ... at most SYNC_PAGE]}

    {"v": 1, "t": "osync", "epoch": <8 bytes or empty>, "after": <int>}
        ->  {"v": 1, "t": "observations", "epoch": <8 bytes>, "next": <int>, "more": <bool>,
             "items": [<signed observation bytes>, ... at most OBS_PAGE]}

`sync` is anti-entropy: every record the responder stored or replaced after its local change
counter `after` (from the start when `epoch` is not its current run), so a node that missed
announcements (joined late, gossip dropped) catches up from any connected peer. Records are
signed by their devices and validated one by one by the asker; `osync` does the same for
reputation observations (signed by their observers), so scores converge even when gossip
dropped some.

A ping proves the role is alive (not only the connection); `get` is the pull path when a
record announcement was lost on gossip (a heartbeat names a newer sequence than we hold) and
faster than a DHT look-up. Requests go only over existing connections: a dial cut short by a
deadline leaks its socket in py-libp2p 0.8.1, and peers we are not connected to are reached
through gossip and the DHT.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import trio

from fognode.node.errors import FognodeError, RemoteProtocolError, StreamClosed
from fognode.node.overlay import FramedStream, Overlay
from fognode.node.wire import Fields
from fognode.protocols.registry.observation import MAX_OBSERVATION_BYTES
from fognode.protocols.registry.record import MAX_RECORD_BYTES

log = logging.getLogger("fognode.registry")

DIRECT_PROTOCOL = "/fognode/registry/1.0.0"
MAX_REQUEST = 128
SYNC_PAGE = 64
OBS_PAGE = 128
MAX_REPLY = max(SYNC_PAGE * (MAX_RECORD_BYTES + 8), OBS_PAGE * (MAX_OBSERVATION_BYTES + 8)) + 256


def connected(overlay: Overlay, peer: str) -> bool:
    return any(p.peer_id == peer and p.connected for p in overlay.peers())


async def _ask(overlay: Overlay, peer: str, kind: str, timeout: float,
               **fields: Any) -> Fields | None:
    if not connected(overlay, peer):
        return None
    with trio.move_on_after(timeout):
        try:
            s = await overlay.open_stream(peer, DIRECT_PROTOCOL)
            try:
                await s.send({"v": 1, "t": kind, **fields})
                return Fields(await s.recv(max_size=MAX_REPLY), f"registry {kind} reply",
                              versions={1}, peer=peer)
            finally:
                await s.close()
        except (FognodeError, OSError) as e:
            log.debug("registry %s to %s failed: %r", kind, peer, e)
    return None


async def ping(overlay: Overlay, peer: str, timeout: float) -> bool:
    """True when `peer`'s registry answers a ping within `timeout` seconds."""
    f = await _ask(overlay, peer, "ping", timeout)
    if f is None:
        return False
    try:
        ok = f.str("t", max_len=8) == "pong"
        f.done()
        return ok
    except RemoteProtocolError as e:
        log.info("bad pong from %s: %s", peer, e)
        return False


async def pull_record(overlay: Overlay, peer: str, timeout: float) -> bytes | None:
    """`peer`'s current record bytes straight from it (None when not connected, no answer,
    or a malformed reply); the caller validates the record."""
    f = await _ask(overlay, peer, "get", timeout)
    if f is None:
        return None
    try:
        if f.str("t", max_len=8) != "record":
            raise RemoteProtocolError("registry get: reply is not a record", peer=peer)
        data = f.bytes("record", max_len=MAX_RECORD_BYTES)
        f.done()
        return data
    except RemoteProtocolError as e:
        log.info("bad record reply from %s: %s", peer, e)
        return None


@dataclass(frozen=True)
class SyncReply:
    epoch: bytes
    next: int
    more: bool
    records: list[bytes]


async def pull_sync(overlay: Overlay, peer: str, epoch: bytes, after: int, timeout: float,
                    *, observations: bool = False) -> SyncReply | None:
    """One page of `peer`'s records (or observations) changed after its counter `after`
    (None: no answer or a malformed reply); the caller validates every item."""
    kind, reply_kind, field, page, item_max = (
        ("osync", "observations", "items", OBS_PAGE, MAX_OBSERVATION_BYTES) if observations
        else ("sync", "records", "records", SYNC_PAGE, MAX_RECORD_BYTES))
    f = await _ask(overlay, peer, kind, timeout, epoch=epoch, after=after)
    if f is None:
        return None
    try:
        if f.str("t", max_len=16) != reply_kind:
            raise RemoteProtocolError(f"registry {kind}: reply is not a page of {reply_kind}", peer=peer)
        reply = SyncReply(epoch=f.bytes("epoch", max_len=8), next=f.int("next", lo=0, hi=2**63 - 1),
                          more=f.bool("more"), records=f.list(field, max_len=page))
        f.done()
        if not all(isinstance(r, bytes) and len(r) <= item_max for r in reply.records):
            raise RemoteProtocolError(f"registry {kind}: an item is not bytes or is oversize", peer=peer)
        return reply
    except RemoteProtocolError as e:
        log.info("bad sync reply from %s: %s", peer, e)
        return None


Syncer = Callable[[bytes, int, int], "tuple[bytes, list[bytes], int, bool]"]


async def serve(s: FramedStream, own_record: Callable[[], bytes | None],
                stopped: Callable[[], bool], sync: Syncer, obs_sync: Syncer) -> None:
    """Answer one request. Raises RemoteProtocolError for anything else (the overlay resets
    the stream and counts it against the peer). A stopped role answers nothing (the overlay
    keeps the handler after the role is gone)."""
    if stopped():
        await s.reset()
        return
    try:
        f = Fields(await s.recv(max_size=MAX_REQUEST), "registry request", versions={1},
                   peer=s.remote_peer)
        kind = f.str("t", max_len=8)
        if kind in ("sync", "osync"):
            epoch = f.bytes("epoch", max_len=8)
            after = f.int("after", lo=0, hi=2**63 - 1)
            f.done()
            if kind == "sync":
                ep, recs, nxt, more = sync(epoch, after, SYNC_PAGE)
                await s.send({"v": 1, "t": "records", "epoch": ep, "next": nxt, "more": more,
                              "records": recs})
            else:
                ep, items, nxt, more = obs_sync(epoch, after, OBS_PAGE)
                await s.send({"v": 1, "t": "observations", "epoch": ep, "next": nxt,
                              "more": more, "items": items})
            return
        f.done()
        if kind == "ping":
            await s.send({"v": 1, "t": "pong"})
        elif kind == "get":
            rec = own_record()
            if rec is None:
                await s.reset()
                return
            await s.send({"v": 1, "t": "record", "record": rec})
        else:
            raise RemoteProtocolError(f"registry request: unknown type {kind!r}", peer=s.remote_peer)
    except StreamClosed:
        return        # the asker gave up; nothing to answer (the overlay closes the stream)
