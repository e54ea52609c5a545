"""Transfer sessions (`/fognode/fl/xfer/1.0.0`), the sending side: one long-lived stream per
peer, reused for successive model fetches and update pushes, so that the FL critical path does
not wait for a stream open (multistream-select over Yamux: 0.9-7 s when the event loop is busy;
issue 16 item 3).

Wire: the opener writes one `XferRequest` frame (id, kind) per request, then, for "model" and
"update", exactly the exchange of the per-transfer stream of that kind (transfer/models.py,
transfer/updates.py); "hello" has no exchange; "result" (an aggregator's push, transfer/push.py)
has no per-transfer stream: it goes over a session or not at all. Requests on one session are strictly one after
the other. The receiver (transfer/xfer.py) serves them in a loop and closes the session after a
refused update (it never read the tensor's chunks), so a refusal also ends the session here.

`TransferSessions.run(peer, kind, exchange)`:
- an idle session to `peer` is reused; a transfer already running on it (or a session being
  opened ahead, `warm`) makes the next one wait for it, except that a transfer never waits
  behind another *transfer*: it goes over its per-transfer stream instead;
- a reused session that turns out dead (the peer closed it, the connection dropped) is
  reopened once and the request sent again; a fresh session that closes under its request
  (the peer's resource manager refused it, the connection dropped) is given up for the
  per-transfer stream, also once. Sending again is safe: a model fetch is idempotent, and an
  update that did arrive is answered "duplicate update", which the participant takes as
  delivered;
- when a session cannot be opened at all (a peer without this protocol: an older node; or the
  open failed) the transfer goes over the per-transfer stream at once, and that peer is served
  that way for `NO_SESSION_FOR` seconds: an older peer costs one refused negotiation a minute,
  a transient failure a minute of the per-transfer behaviour that ran before.
`warm(peer)` opens a session ahead of its first transfer (while this node trains) and writes
"hello" at once, so the receiver's first-frame deadline (overlay.stream_first_frame_timeout) is
met; an idle session is closed after `idle` seconds (`protocols.fl.transfer_session_idle`,
below the receiver's overlay.stream_idle_timeout), so the receiver never holds a stream slot
for a session nobody uses. With `idle` = 0 every transfer opens its own stream (the old path).

Every stream this module opens is counted (`fognode_fl_stream_opens_total{stream, outcome}`)
and timed (`fognode_fl_stream_open_seconds{stream}`). All methods are cancellable; a transfer
cut by its caller's deadline resets its session. Nothing here raises except what `exchange`
and the per-transfer stream's open raise."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, TypeVar

import trio

from fognode.node.errors import StreamClosed
from fognode.node.overlay import FramedStream, Overlay
from fognode.protocols.fl.messages import XferRequest
from fognode.protocols.fl.metrics import FlMetrics
from fognode.protocols.fl.wire_names import XFER_STREAM

log = logging.getLogger("fognode.fl")

NO_SESSION_FOR = 60.0       # seconds a peer whose session open failed gets per-transfer streams

T = TypeVar("T")


class NoSession(Exception):
    """A session-only request (`legacy` "": a result push) found no usable session."""


Exchange = Callable[[FramedStream], Awaitable[T]]


@dataclass
class _Peer:
    lock: trio.Lock = field(default_factory=trio.Lock)
    stream: FramedStream | None = None
    last_used: float = 0.0
    next_id: int = 0
    opening: bool = False          # `warm` holds the lock to open the session


class TransferSessions:
    """The sending side's sessions of one node, by peer (see the module docstring)."""

    def __init__(self, overlay: Overlay, metrics: FlMetrics, *, idle: float,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.overlay = overlay
        self.metrics = metrics
        self.idle = idle
        self._clock = clock
        self._peers: dict[str, _Peer] = {}
        self._no_session: dict[str, float] = {}     # peer -> until (clock)

    @property
    def enabled(self) -> bool:
        return self.idle > 0

    def has_session(self, peer: str) -> bool:
        p = self._peers.get(peer)
        return p is not None and p.stream is not None

    def _usable(self, peer: str) -> bool:
        if not self.enabled or peer == self.overlay.peer_id:
            return False
        until = self._no_session.get(peer)
        if until is not None and self._clock() >= until:
            del self._no_session[peer]
            until = None
        return until is None

    async def open(self, peer: str, protocol: str) -> FramedStream:
        """Open a stream on `protocol`, counted and timed (raises what Overlay.open_stream
        raises)."""
        label = protocol.rsplit("/", 2)[-2]
        t0 = trio.current_time()
        try:
            st = await self.overlay.open_stream(peer, protocol)
        except BaseException:
            self.metrics.stream_opens.labels(label, "failed").inc()
            raise
        self.metrics.stream_opens.labels(label, "ok").inc()
        self.metrics.stream_open.labels(label).observe(trio.current_time() - t0)
        return st

    async def run(self, peer: str, kind: str, legacy: str, exchange: Exchange[T],
                  reusable: Callable[[T], bool] = lambda _: True) -> T:
        """Carry one exchange of `kind` to `peer`: on its session, else on a stream of the
        per-transfer protocol `legacy` ("": none, NoSession is raised instead: a result push).
        `reusable(result)` False ends the session after it (a refused update). Raises what `exchange` raises (StreamClosed, RemoteProtocolError)
        and DialError when no stream can be opened."""
        if not self._usable(peer):
            return await self._per_transfer(peer, legacy, exchange)
        p = self._peers.setdefault(peer, _Peer())
        if p.lock.locked() and not p.opening:
            return await self._per_transfer(peer, legacy, exchange)   # busy with a transfer
        async with p.lock:
            reused = p.stream is not None
            if reused:
                self.metrics.sessions.labels("reused").inc()
            elif not await self._open_session(peer, p):
                return await self._per_transfer(peer, legacy, exchange)
            try:
                result = await self._on_session(p, kind, exchange)
            except StreamClosed as e:
                await self._drop(p)
                if not (reused and await self._open_session(peer, p)):
                    # a fresh session closed at once (the peer's resource manager refused
                    # it, the connection dropped) or no second one: the per-transfer stream
                    return await self._per_transfer(peer, legacy, exchange)
                log.debug("fl: transfer session to %s was closed (%s); opened it again", peer, e)
                try:
                    result = await self._on_session(p, kind, exchange)
                except StreamClosed:
                    await self._drop(p)
                    return await self._per_transfer(peer, legacy, exchange)
                except BaseException:
                    await self._drop(p)
                    raise
            except BaseException:
                await self._drop(p)      # cut or failed mid-request: its state is unknown
                raise
            if reusable(result):
                p.last_used = self._clock()
            else:
                await self._drop(p)
            return result

    def warm(self, nursery: trio.Nursery, peer: str) -> None:
        """Open a session to `peer` ahead of its first transfer, in `nursery` (nothing if one
        is open or opening, or sessions are off or refused for that peer)."""
        if not self._usable(peer):
            return
        p = self._peers.setdefault(peer, _Peer())
        if p.stream is not None or p.lock.locked():
            return
        nursery.start_soon(self._warm, peer, p)

    async def _warm(self, peer: str, p: _Peer) -> None:
        async with p.lock:
            if p.stream is not None:
                return
            p.opening = True
            try:
                if not await self._open_session(peer, p):
                    return
                assert p.stream is not None
                try:
                    await p.stream.send(XferRequest(p.next_id, "hello").to_wire())
                    p.next_id += 1
                    p.last_used = self._clock()
                except StreamClosed:
                    await self._drop(p)
            except BaseException:
                await self._drop(p)
                raise
            finally:
                p.opening = False

    async def _open_session(self, peer: str, p: _Peer) -> bool:
        try:
            p.stream = await self.open(peer, XFER_STREAM)
        except Exception as e:
            self._no_session[peer] = self._clock() + NO_SESSION_FOR
            log.debug("fl: no transfer session to %s (%s); per-transfer streams for %g s",
                      peer, e, NO_SESSION_FOR)
            return False
        p.next_id, p.last_used = 0, self._clock()
        self.metrics.sessions.labels("opened").inc()
        return True

    async def _on_session(self, p: _Peer, kind: str, exchange: Exchange[T]) -> T:
        assert p.stream is not None
        await p.stream.send(XferRequest(p.next_id, kind).to_wire())
        p.next_id += 1
        return await exchange(p.stream)

    async def _per_transfer(self, peer: str, legacy: str, exchange: Exchange[T]) -> T:
        if not legacy:
            raise NoSession(f"no transfer session to {peer} for this request")
        st = await self.open(peer, legacy)
        try:
            return await exchange(st)
        finally:
            await st.close()

    async def _drop(self, p: _Peer) -> None:
        st, p.stream = p.stream, None
        if st is not None:
            await st.reset()

    async def reap(self) -> None:
        """Close idle sessions and forget expired per-transfer fallbacks, forever (every
        idle/4 s); cancel to stop. Closes every session when cancelled."""
        try:
            while True:
                await trio.sleep(max(self.idle / 4, 0.05))
                now = self._clock()
                for peer, p in list(self._peers.items()):
                    if p.stream is not None and not p.lock.locked() and now - p.last_used >= self.idle:
                        st, p.stream = p.stream, None
                        await st.close()
                    if p.stream is None and not p.lock.locked():
                        self._peers.pop(peer, None)
                for peer, until in list(self._no_session.items()):
                    if now >= until:
                        del self._no_session[peer]
        finally:    # a cancelled task's closes still go out (FramedStream.close)
            for p in list(self._peers.values()):
                st, p.stream = p.stream, None
                if st is not None:
                    await st.close()
