"""The onion cores of one node, driven by trio: cells in from the links, actions out.

`OnionEngine` owns the relay core (relay.py), the client side (manager.OnionClient), their
shared CircIdAllocator and the LinkManager (linkmgr.py), and is the `ActionHandler`
(dispatch.py) that carries the cores' actions out. Every call into a core goes through
`_call`, which carries the whole action list out before the next call starts (a handler that
must answer a core, e.g. consume data or refuse a stream, queues its call: actions.py's order
rule). A cell read from `peer` goes to the client when it owns `(peer, circ_id)`, else to the
relay; a frame that does not split into cells goes to `relay.garbage`. The cells of one link
frame go through one `_call` (their actions are carried out in order after the last cell), a
circuit's consecutive RELAY cells as one RelayRun (`receive_run`: forwarded or opened with one
cipher call per layer and written as one SendCells).
Timers: one task sleeps until the earliest `next_wakeup()` of both cores and ticks them.

For the layers above (the role's RPC, the hidden-service client and host) it offers:
`build` (awaits the circuit, BuildFailed when it closes first), `connect_stream` (awaits
CONNECTED: a `CircuitStream`), `accept_stream` (the serving side's answer to OpenStream),
`send_meeting` / `MessageBox` for the meeting-point messages, `close`, and a view of what the
relay knows (`relay_view`: per circuit its two neighbours, nothing else).
"""
from __future__ import annotations

import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import trio
from nacl.signing import SigningKey

from fognode.node.datadir import write_atomic
from fognode.node.events import EventBus
from fognode.node.overlay import Overlay
from fognode.protocols.onion.actions import (Action, CircKey, CircuitBuilt, CircuitClosed, CircuitMessage, OpenStream,
                                             PeerFault, PersistState, SendCell, SendCells, StreamConnected,
                                             StreamData, StreamEnded)
from fognode.protocols.onion.cbt import BuildTimeEstimator
from fognode.protocols.onion.cells import Cell, CellError, CellFramer, RelayCommand, RelayRun
from fognode.protocols.onion.circuit import CircuitState, ClientCircuit
from fognode.protocols.onion.config import OnionConfig
from fognode.protocols.onion.cstream import CircuitStream
from fognode.protocols.onion.dispatch import carry_out
from fognode.protocols.onion.errors import OnionError, OnionStateError, TeardownReason
from fognode.protocols.onion.events import CircuitEstablished
from fognode.protocols.onion.linkmgr import PROTOCOL_ID, LinkManager
from fognode.protocols.onion.links import CircIdAllocator
from fognode.protocols.onion.manager import OnionClient
from fognode.protocols.onion.metrics import OnionMetrics
from fognode.protocols.onion.pathsel import GuardSet, RelayInfo
from fognode.protocols.onion.relay import RelayCore
from fognode.protocols.onion.relay_crypto import HopKeys

log = logging.getLogger("fognode.onion")

STATE_FILES = {"guards": "guards", "build_times": "build_times"}


class BuildFailed(OnionError):
    """A circuit closed before it was built (the message says why)."""


class StreamFailed(OnionError):
    """The far end refused or ended a stream before it connected, or its circuit closed."""


def circuit_name(key: CircKey) -> str:
    return f"{key[0]}:{key[1]:08x}"


class Waiter:
    """One result handed from a handler to a task."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.error: str | None = None

    def done(self, error: str | None = None) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()


class MessageBox:
    """Meeting-point messages of one circuit: awaited by command, or handed to `handler`."""

    def __init__(self, handler: Callable[[RelayCommand, bytes], None] | None = None) -> None:
        self.handler = handler
        self.items: dict[RelayCommand, deque[bytes]] = {}
        self.changed = trio.Event()
        self.closed = ""

    def put(self, cmd: RelayCommand, data: bytes) -> None:
        if self.handler is not None:
            self.handler(cmd, data)
            return
        self.items.setdefault(cmd, deque()).append(data)
        self.changed.set()

    def close(self, why: str) -> None:
        self.closed = why
        self.changed.set()

    async def get(self, cmd: RelayCommand) -> bytes:
        """The next `cmd` message; BuildFailed when the circuit closes first."""
        while True:
            q = self.items.get(cmd)
            if q:
                return q.popleft()
            if self.closed:
                raise BuildFailed(f"circuit closed while waiting for {cmd.name}: {self.closed}")
            self.changed = trio.Event()
            await self.changed.wait()


@dataclass
class CircuitInfo:
    purpose: str
    created: float


class OnionEngine:
    def __init__(self, *, peer_id: str, identity: SigningKey, overlay: Overlay, config: OnionConfig,
                 metrics: OnionMetrics, events: EventBus, state_dir: Path,
                 relays: Callable[[], Sequence[RelayInfo]], clock: Callable[[], float] = time.time) -> None:
        self.peer_id = peer_id
        self.overlay = overlay
        self.config = config
        self.metrics = metrics
        self.events = events
        self.state_dir = state_dir
        self.relays = relays
        self.clock = clock
        self.ids = CircIdAllocator(peer_id)
        self.relay = RelayCore(peer_id, bytes(identity.verify_key), {}, self.ids, config.relay_params())
        guards = GuardSet(config.num_guards, config.guard_lifetime, config.guard_retry)
        build_times = BuildTimeEstimator(config.cbt_params())
        self._load_state(guards, build_times)
        self.client = OnionClient(peer_id, self.ids, config, guards, build_times, random.SystemRandom())
        self.links = LinkManager(overlay, self._on_bytes, self._on_link_down, queue_limit=config.link_queue_bytes)
        self.streams: dict[tuple[CircKey, int], CircuitStream] = {}
        self.info: dict[CircKey, CircuitInfo] = {}
        self.boxes: dict[CircKey, MessageBox] = {}
        self.on_open_stream: Callable[[OpenStream], None] | None = None   # a service's OpenStream
        self.on_circuit_closed: list[Callable[[CircuitClosed], None]] = []
        self._built: dict[CircKey, Waiter] = {}
        self._connecting: dict[tuple[CircKey, int], Waiter] = {}
        self._later: deque[Callable[[], list[Action]]] = deque()
        self._busy = False
        self._timer = trio.Event()
        self._progress = trio.Event()
        self._relayed = 0
        # per-cell counters: the labelled children looked up once (a lookup costs more than the inc)
        self._link_in, self._link_out = metrics.link_bytes.labels("in"), metrics.link_bytes.labels("out")
        self._stream_in, self._stream_out = metrics.stream_bytes.labels("in"), metrics.stream_bytes.labels("out")
        self._out_bytes = 0          # link bytes sent and stream bytes delivered during one _call:
        self._delivered = 0          # counted once per call, not per cell

    # -- state ---------------------------------------------------------------------------------

    def _load_state(self, guards: GuardSet, build_times: BuildTimeEstimator) -> None:
        for what, target in (("guards", guards), ("build_times", build_times)):
            path = self.state_dir / STATE_FILES[what]
            try:
                target.load(path.read_bytes())
            except FileNotFoundError:
                continue
            except (OnionStateError, OSError) as e:
                log.warning("onion %s state in %s not loaded, starting afresh: %s", what, path, e)

    # -- running -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.links.run)
            self.overlay.set_stream_handler(PROTOCOL_ID, self.links.serve_inbound)
            nursery.start_soon(self._timers)
            task_status.started()

    async def _timers(self) -> None:
        while True:
            times = [t for t in (self.client.next_wakeup(), self.relay.next_wakeup()) if t is not None]
            self._timer = trio.Event()
            if not times:
                await self._timer.wait()
                continue
            delay = min(times) - self.clock()
            if delay > 0:
                with trio.move_on_after(delay):
                    await self._timer.wait()
                continue
            now = self.clock()
            self._call(lambda: self.client.tick(now))
            self._call(lambda: self.relay.tick(now))
            await trio.sleep(0.005)

    def _call(self, fn: Callable[[], list[Action]]) -> None:
        """Run `fn` (a core call) and carry its actions out; calls made meanwhile by the
        handlers run after the whole list, in order."""
        self._later.append(fn)
        if self._busy:
            return
        self._busy = True
        try:
            while self._later:
                carry_out(self, self._later.popleft()())
        finally:
            self._busy = False
            self._later.clear()
            if self._out_bytes:
                self._link_out.inc(self._out_bytes)
                self._out_bytes = 0
            if self._delivered:
                self._stream_in.inc(self._delivered)
                self._delivered = 0
        self._timer.set()
        self._progress.set()
        self._progress = trio.Event()
        relayed = self.relay.cells_relayed
        if relayed != self._relayed:
            self.metrics.cells_relayed.inc(relayed - self._relayed)
            self._relayed = relayed

    async def wait_progress(self) -> None:
        await self._progress.wait()

    # -- links ---------------------------------------------------------------------------------

    def _on_bytes(self, peer: str, data: bytes, framer: CellFramer) -> None:
        self._link_in.inc(len(data))
        now = self.clock()
        items = framer.feed_runs(data)
        if items:      # one core call for the frame's cells: its actions run in order after it
            self._call(lambda: self._route(peer, items, now))

    def _route(self, peer: str, items: list[Cell | RelayRun | CellError], now: float) -> list[Action]:
        out: list[Action] = []
        own = self.client.circuits
        for item in items:
            if type(item) is RelayRun:
                if (peer, item.circ_id) in own:
                    out += self.client.receive_run(peer, item, now)
                else:
                    out += self.relay.receive_run(peer, item, now)
            elif isinstance(item, CellError):
                out += self.relay.garbage(peer, item)
            elif (peer, item.circ_id) in own:
                out += self.client.receive(peer, item, now)
            else:
                out += self.relay.receive(peer, item, now)
        return out

    def _on_link_down(self, peer: str, why: str) -> None:
        now = self.clock()
        self._call(lambda: self.client.link_failed(peer, now))
        self._call(lambda: self.relay.link_failed(peer, now))

    # -- the action handlers (dispatch.ActionHandler) -------------------------------------------

    def send_cell(self, a: SendCell) -> None:
        frame = a.cell.frame()
        self._out_bytes += len(frame)
        self.links.send(a.peer, frame)

    def send_cells(self, a: SendCells) -> None:
        self._out_bytes += len(a.frames)
        self.links.send(a.peer, a.frames)

    def circuit_built(self, a: CircuitBuilt) -> None:
        self.metrics.build_seconds.observe(a.build_time)
        info = self.info.get(a.circuit)
        self.events.publish(CircuitEstablished(circuit_name(a.circuit), len(a.path), a.build_time,
                                               info.purpose if info else "general"))
        w = self._built.pop(a.circuit, None)
        if w is not None:
            w.done()

    def circuit_closed(self, a: CircuitClosed) -> None:
        self.metrics.circuits_closed.labels(a.reason.value, str(a.built).lower()).inc()
        self.info.pop(a.circuit, None)
        why = f"{a.reason.value}: {a.detail}"
        w = self._built.pop(a.circuit, None)
        if w is not None:
            w.done(why)
        box = self.boxes.pop(a.circuit, None)
        if box is not None:
            box.close(why)
        for k in [k for k in self._connecting if k[0] == a.circuit]:
            self._connecting.pop(k).done(why)
        for k in [k for k in self.streams if k[0] == a.circuit]:
            self.streams.pop(k).feed_end(why)
        for cb in list(self.on_circuit_closed):
            cb(a)

    def stream_connected(self, a: StreamConnected) -> None:
        w = self._connecting.pop((a.circuit, a.stream_id), None)
        if w is not None:
            w.done()

    def stream_data(self, a: StreamData) -> None:
        s = self.streams.get((a.circuit, a.stream_id))
        if s is not None and not s.closed:
            self._delivered += len(a.data)
            s.feed(a.data)
            return
        if self.client.owns(a.circuit):       # nobody reads it (closed locally): keep the window open
            circ = self.client.circuits[a.circuit]
            self._later.append(lambda: circ.consumed(a.stream_id, self.clock()))
        else:
            self._later.append(lambda: self.relay.stream_consumed(a.circuit, a.stream_id, self.clock()))

    def stream_ended(self, a: StreamEnded) -> None:
        w = self._connecting.pop((a.circuit, a.stream_id), None)
        if w is not None:
            w.done(f"stream refused or ended: {a.reason.value}")
        s = self.streams.pop((a.circuit, a.stream_id), None)
        if s is not None:
            s.feed_end(a.reason.value)

    def open_stream(self, a: OpenStream) -> None:
        if self.client.owns(a.circuit):
            if self.on_open_stream is not None:
                self.on_open_stream(a)
            else:
                circ = self.client.circuits[a.circuit]
                self._later.append(lambda: circ.stream_refused(a.stream_id, self.clock()))
            return
        # no exit: a relay serves no targets of its own; hidden services are reached by rendezvous
        self._later.append(lambda: self.relay.stream_refused(a.circuit, a.stream_id, self.clock()))

    def peer_fault(self, a: PeerFault) -> None:
        self.metrics.peer_faults.labels(a.reason).inc()
        if a.penalize:
            self.overlay.penalize(a.peer, f"{a.reason}: {a.detail}", protocol=PROTOCOL_ID)
        else:
            log.debug("onion: %s from %s: %s", a.reason, a.peer, a.detail)

    def persist_state(self, a: PersistState) -> None:
        name = STATE_FILES.get(a.what)
        if name is None:
            log.error("onion: unknown state %r not persisted", a.what)
            return
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(self.state_dir / name, a.data, 0o600)
        except OSError as e:
            log.warning("onion: could not save %s state: %s", a.what, e)

    def circuit_message(self, a: CircuitMessage) -> None:
        box = self.boxes.get(a.circuit)
        if box is not None:
            box.put(a.command, a.data)
        else:
            log.debug("onion: %s on circuit %s nobody waits for", a.command.name, circuit_name(a.circuit))

    # -- for the layers above ------------------------------------------------------------------

    def set_onion_keys(self, keys: dict[bytes, bytes]) -> None:
        self.relay.set_onion_keys(keys)

    async def build(self, *, hops: int | None = None, last: RelayInfo | None = None, exclude: Sequence[str] = (),
                    purpose: str = "general", box: MessageBox | None = None) -> ClientCircuit:
        """Build a circuit and await it (PathError at once when no path; BuildFailed when it
        closes first, e.g. the adaptive timeout). `box` receives its meeting-point messages."""
        now = self.clock()
        circ, actions = self.client.build(self.relays(), now, hops=hops, last=last, exclude=exclude)
        w = Waiter()
        self._built[circ.key] = w
        self.info[circ.key] = CircuitInfo(purpose, now)
        if box is not None:
            self.boxes[circ.key] = box
        self._call(lambda: actions)
        await w.event.wait()
        if w.error is not None:
            raise BuildFailed(f"circuit through {', '.join(h.peer_id for h in circ.path)} failed: {w.error}")
        return circ

    def circuit(self, key: CircKey) -> ClientCircuit | None:
        c = self.client.circuits.get(key)
        return c if c is not None and c.state is not CircuitState.CLOSED else None

    def send_meeting(self, circ: ClientCircuit, cmd: RelayCommand, data: bytes,
                     then_join: tuple[HopKeys, bool] | None = None) -> None:
        """Send a meeting-point request; with `then_join` (keys, serve) add the virtual hop
        right after it (the service's RENDEZVOUS1)."""
        def go() -> list[Action]:
            out = circ.send_meeting(cmd, data, self.clock())
            if then_join is not None:
                circ.add_virtual_hop(then_join[0], serve=then_join[1])
            return out
        self._call(go)

    def close(self, key: CircKey) -> None:
        self._call(lambda: self.client.close(key, self.clock()))

    async def connect_stream(self, circ: ClientCircuit, target: str) -> CircuitStream:
        """Open a stream to `target` at the circuit's far end and await CONNECTED."""
        sid, actions = circ.open_stream(target, self.clock())
        key = (circ.key, sid)
        w = Waiter()
        self._connecting[key] = w
        stream = CircuitStream(self, circ.key, sid)
        self.streams[key] = stream
        self._call(lambda: actions)
        await w.event.wait()
        if w.error is not None:
            self.streams.pop(key, None)
            raise StreamFailed(w.error)
        return stream

    def accept_stream(self, key: CircKey, sid: int) -> CircuitStream | None:
        """A service accepts the stream of an OpenStream on its circuit (None: circuit gone)."""
        circ = self.circuit(key)
        if circ is None:
            return None
        stream = CircuitStream(self, key, sid)
        self.streams[(key, sid)] = stream
        self._call(lambda: circ.stream_opened(sid, self.clock()))
        return stream

    def refuse_stream(self, key: CircKey, sid: int) -> None:
        circ = self.circuit(key)
        if circ is not None:
            self._call(lambda: circ.stream_refused(sid, self.clock()))

    # StreamOps (cstream.py)
    def stream_send(self, key: CircKey, sid: int, data: bytes) -> None:
        circ = self.circuit(key)
        if circ is not None and sid in circ.mux.streams:
            self._stream_out.inc(len(data))
            self._call(lambda: circ.send(sid, data, self.clock()))

    def stream_consumed(self, key: CircKey, sid: int, chunks: int) -> None:
        circ = self.circuit(key)
        if circ is not None:
            now = self.clock()
            self._call(lambda: [a for _ in range(chunks) for a in circ.consumed(sid, now)])

    def stream_end(self, key: CircKey, sid: int) -> None:
        self.streams.pop((key, sid), None)
        circ = self.circuit(key)
        if circ is not None:
            self._call(lambda: circ.end_stream(sid, self.clock()))

    def stream_queued(self, key: CircKey, sid: int) -> int:
        circ = self.circuit(key)
        return circ.queued_bytes(sid) if circ is not None and sid in circ.mux.streams else 0

    # -- views ---------------------------------------------------------------------------------

    def circuits_view(self) -> list[dict[str, Any]]:
        now = self.clock()
        out = []
        for key, c in sorted(self.client.circuits.items()):
            info = self.info.get(key)
            out.append({"circuit": circuit_name(key), "state": c.state.value,
                        "purpose": info.purpose if info else "general",
                        "path": [h.peer_id for h in c.path], "joined": c.virtual_hop,
                        "streams": len(c.mux.streams), "age": round(now - c.started, 3),
                        "build_time": round(c.built_at - c.started, 4) if c.built_at is not None else None,
                        "cells_sent": c.cells_sent, "cells_received": c.cells_received})
        return out

    def relay_view(self) -> list[dict[str, Any]]:
        """What this relay knows of each circuit it carries: its neighbours, counters."""
        return [{"prev": v.prev, "next": v.next, "joined": v.joined, "age": round(v.age, 3),
                 "cells_forward": v.cells_forward, "cells_backward": v.cells_backward, "streams": v.streams}
                for v in self.relay.snapshot(self.clock())]

    def by_name(self, name: str) -> CircKey | None:
        for key in self.client.circuits:
            if circuit_name(key) == name:
                return key
        return None
