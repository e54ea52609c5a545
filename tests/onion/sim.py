"""An in-memory onion network for the tests and the benchmark: N nodes, each with a relay core
and its own client circuits, wired through one FIFO of framed cells (no sockets).

Each node runs what protocol.py will run: cells read from a neighbour are framed by a
`CellFramer` per link; a cell (or a RelayRun) on a (peer, circ_id) of one of the node's own
circuits goes to that `ClientCircuit`, anything else to its `RelayCore`; `SendCell` and
`SendCells` actions become frames on the queue, one per cell (`coalesce` delivers a link's
consecutive frames as one, so runs of many cells are exercised). A relay that is the last hop serves three targets: `echo.fog:80` (echoes what it gets),
`sink.fog:80` (keeps it) and `stall.fog:80` (keeps it but never consumes it: stream SENDMEs
stop), and refuses any other. Clients consume what they receive unless `stalled`. `intercept` lets a test tamper with,
replay, reorder or drop frames on a link.
"""
from __future__ import annotations

import random
from collections import deque
from typing import Callable

from nacl.signing import SigningKey

from fognode.protocols.onion.actions import (Action, CircKey, CircuitBuilt, CircuitClosed, CircuitMessage, OpenStream,
                                             PeerFault, PersistState, SendCell, SendCells, StreamConnected,
                                             StreamData, StreamEnded)
from fognode.protocols.onion.cells import FRAME_LEN, CellError, CellFramer, RelayRun
from fognode.protocols.onion.dispatch import carry_out
from fognode.protocols.onion.circuit import ClientCircuit
from fognode.protocols.onion.flow import FlowParams
from fognode.protocols.onion.links import CircIdAllocator
from fognode.protocols.onion.manager import OnionClient
from fognode.protocols.onion.ntor import keypair
from fognode.protocols.onion.pathsel import RelayInfo
from fognode.protocols.onion.relay import RelayCore, RelayParams

Frame = tuple[str, str, bytes]           # (from, to, framed cell)
Intercept = Callable[[str, str, bytes], list[bytes]]


class SimNode:
    def __init__(self, peer: str, region: str, params: RelayParams, rng: random.Random) -> None:
        self.peer = peer
        self.region = region
        self.identity = bytes(SigningKey(rng.randbytes(32)).verify_key)
        self.onion_secret, self.onion_public = keypair(rng.randbytes(32))
        self.ids = CircIdAllocator(peer, rng)
        self.relay = RelayCore(peer, self.identity, {self.onion_public: self.onion_secret}, self.ids, params)
        self.circuits: dict[CircKey, ClientCircuit] = {}
        self.sunk: dict[tuple[CircKey, int], bytearray] = {}
        self.framers: dict[str, CellFramer] = {}
        self.client: OnionClient | None = None          # set by tests of the circuit manager

    def info(self, reputation: float = 0.5, bandwidth: float = 1e6) -> RelayInfo:
        return RelayInfo(self.peer, self.identity, self.onion_public, self.region, reputation, bandwidth)


class SimNet:
    def __init__(self, n: int, *, seed: int = 1, params: RelayParams | None = None, regions: int = 3) -> None:
        self.rng = random.Random(seed)
        self.params = params or RelayParams()
        self.nodes = {f"n{i}": SimNode(f"n{i}", f"r{i % regions}", self.params, self.rng) for i in range(n)}
        self.queue: deque[Frame] = deque()
        self.now = 0.0
        self.events: list[tuple[str, Action]] = []     # client-side and fault actions, per node
        self.intercept: Intercept | None = None
        self.delivered = 0
        self.stalled: set[str] = set()                   # clients that do not consume
        self.coalesce = False                            # deliver a link's queued cells as one frame

    def info(self, peer: str) -> RelayInfo:
        return self.nodes[peer].info()

    # -- driving -------------------------------------------------------------------------------

    def build(self, client: str, path: list[str], *, timeout: float = 10.0, padding_rate: float = 0.0,
              flow: FlowParams | None = None) -> ClientCircuit:
        node = self.nodes[client]
        cid = node.ids.allocate(path[0])
        circ = ClientCircuit(cid, [self.info(p) for p in path], flow or self.params.flow, self.now, timeout,
                             padding_rate)
        node.circuits[circ.key] = circ
        self.dispatch(client, circ.start())
        return circ

    def dispatch(self, peer: str, actions: list[Action]) -> None:
        """Carry out one list of actions of `peer`'s cores through the dispatch table; calls back
        into a core (the echo service, accepting a stream, consuming data) wait until the whole
        list is done, as in the real adapter: the cells of a list were sealed in that order and
        must leave in it."""
        handler = SimHandler(self, peer)
        carry_out(handler, actions)
        for call in handler.later:
            self.dispatch(peer, call())

    def deliver(self, src: str, dst: str, frame: bytes) -> None:
        """Feed `frame` (one or more framed cells) to `dst`'s framer for `src` and route what
        it splits into, as the engine does: RELAY runs as RelayRuns, other cells one by one."""
        node = self.nodes[dst]
        framer = node.framers.setdefault(src, CellFramer())
        for item in framer.feed_runs(frame):
            if isinstance(item, CellError):
                self.dispatch(dst, node.relay.garbage(src, item))
                continue
            key = (src, item.circ_id)
            circ = node.circuits.get(key)
            if node.client is not None and node.client.owns(key):
                self.dispatch(dst, node.client.receive_run(src, item, self.now) if isinstance(item, RelayRun)
                              else node.client.receive(src, item, self.now))
            elif circ is not None:
                self.dispatch(dst, circ.receive_run(item, self.now) if isinstance(item, RelayRun)
                              else circ.receive(item, self.now))
            elif isinstance(item, RelayRun):
                self.dispatch(dst, node.relay.receive_run(src, item, self.now))
            else:
                self.dispatch(dst, node.relay.receive(src, item, self.now))

    def run(self, max_frames: int = 1_000_000) -> int:
        """Deliver frames until the queue is empty; the number delivered. The queue holds one
        framed cell per entry (`intercept` sees each); with `coalesce` the consecutive entries
        of one link are delivered as one link frame, as a link writer batches them."""
        n = 0
        while self.queue and n < max_frames:
            src, dst, frame = self.queue.popleft()
            frames = self.intercept(src, dst, frame) if self.intercept else [frame]
            n += 1
            while self.coalesce and self.queue and self.queue[0][:2] == (src, dst) and n < max_frames:
                more = self.queue.popleft()[2]
                frames += self.intercept(src, dst, more) if self.intercept else [more]
                n += 1
            if self.coalesce:
                frames = [b"".join(frames)] if frames else []
            for f in frames:
                self.deliver(src, dst, f)
        self.delivered += n
        return n

    def tick(self, now: float) -> None:
        self.now = now
        for peer, node in self.nodes.items():
            for circ in list(node.circuits.values()):
                self.dispatch(peer, circ.tick(now))
            if node.client is not None:
                self.dispatch(peer, node.client.tick(now))
            self.dispatch(peer, node.relay.tick(now))

    def client_events(self, peer: str, kind: type) -> list[Action]:
        return [a for p, a in self.events if p == peer and isinstance(a, kind)]

    def received(self, peer: str, key: CircKey, stream_id: int) -> bytes:
        return b"".join(a.data for p, a in self.events
                        if p == peer and isinstance(a, StreamData) and a.circuit == key and a.stream_id == stream_id)


class SimHandler:
    """The simulator's `ActionHandler` for one node: cells go on the queue, the last hop's
    services answer, client-side outcomes are recorded in `SimNet.events`."""

    def __init__(self, net: SimNet, peer: str) -> None:
        self.net, self.peer = net, peer
        self.node = net.nodes[peer]
        self.later: list[Callable[[], list[Action]]] = []

    def _client_circuit(self, key: CircKey) -> ClientCircuit | None:
        node = self.node
        return node.circuits.get(key) or (node.client.circuits.get(key) if node.client else None)

    def _record(self, a: Action) -> None:
        self.net.events.append((self.peer, a))

    def send_cell(self, a: SendCell) -> None:
        self.net.queue.append((self.peer, a.peer, a.cell.frame()))

    def send_cells(self, a: SendCells) -> None:
        for i in range(0, len(a.frames), FRAME_LEN):
            self.net.queue.append((self.peer, a.peer, a.frames[i:i + FRAME_LEN]))

    def open_stream(self, a: OpenStream) -> None:
        own = self._client_circuit(a.circuit)
        if own is not None:                        # a hidden service's end of a joined circuit
            accept = own.stream_opened if a.target.startswith("svc.fog") else own.stream_refused
            self.later.append(lambda: accept(a.stream_id, self.net.now))
            return
        relay = self.node.relay
        host = a.target.rsplit(":", 1)[0]
        answer = relay.stream_opened if host in ("echo.fog", "sink.fog", "stall.fog") else relay.stream_refused
        self.later.append(lambda: answer(a.circuit, a.stream_id, self.net.now))

    def stream_data(self, a: StreamData) -> None:
        circ = self._client_circuit(a.circuit)
        if circ is not None and circ.serving:      # the hidden service echoes
            self.later.append(lambda: circ.send(a.stream_id, a.data, self.net.now))
            self.later.append(lambda: circ.consumed(a.stream_id, self.net.now))
            return
        if circ is not None:                       # data for one of our own circuits
            if self.peer not in self.net.stalled:
                self._record(a)
                self.later.append(lambda: circ.consumed(a.stream_id, self.net.now))
            return
        relay, now = self.node.relay, self.net.now
        name = relay.stream_target(a.circuit, a.stream_id) or ""
        if name.startswith("echo.fog"):
            self.later.append(lambda: relay.send_stream(a.circuit, a.stream_id, a.data, now))
        else:
            self.node.sunk.setdefault((a.circuit, a.stream_id), bytearray()).extend(a.data)
        if not name.startswith("stall.fog"):
            self.later.append(lambda: relay.stream_consumed(a.circuit, a.stream_id, now))

    def stream_ended(self, a: StreamEnded) -> None:
        if self._client_circuit(a.circuit) is not None:
            self._record(a)

    def circuit_closed(self, a: CircuitClosed) -> None:
        self.node.circuits.pop(a.circuit, None)
        self._record(a)

    def circuit_built(self, a: CircuitBuilt) -> None:
        self._record(a)

    def stream_connected(self, a: StreamConnected) -> None:
        self._record(a)

    def peer_fault(self, a: PeerFault) -> None:
        self._record(a)

    def persist_state(self, a: PersistState) -> None:
        self._record(a)

    def circuit_message(self, a: CircuitMessage) -> None:
        self._record(a)
