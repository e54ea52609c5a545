"""An in-memory onion network for the tests and the benchmark: N nodes, each with a relay core
and its own client circuits, wired through one FIFO of framed cells (no sockets).

Each node runs what protocol.py will run: cells read from a neighbour are framed by a
`CellFramer` per link; a cell on a (peer, circ_id) of one of the node's own circuits goes to
that `ClientCircuit`, anything else to its `RelayCore`; `SendCell` actions become frames on the
queue. A relay that is the last hop serves three targets: `echo.fog:80` (echoes what it gets),
`sink.fog:80` (keeps it) and `stall.fog:80` (keeps it but never consumes it: stream SENDMEs
stop), and refuses any other. Clients consume what they receive unless `stalled`. `intercept` lets a test tamper with,
replay, reorder or drop frames on a link.
"""
from __future__ import annotations

import random
from collections import deque
from typing import Callable

from nacl.signing import SigningKey

from fognode.protocols.onion.actions import (Action, CircKey, CircuitClosed, OpenStream, SendCell, StreamData,
                                             StreamEnded)
from fognode.protocols.onion.cells import CellError, CellFramer
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
        self.dispatch(client, circ.start(), relay_side=False)
        return circ

    def dispatch(self, peer: str, actions: list[Action], *, relay_side: bool) -> None:
        """Carry out one list of actions in order; calls back into a core (the echo service,
        accepting a stream) wait until the whole list is done, as in the real adapter: the cells
        of a list were sealed in that order and must leave in it."""
        node = self.nodes[peer]
        later: list[Callable[[], list[Action]]] = []
        for a in actions:
            if isinstance(a, SendCell):
                self.queue.append((peer, a.peer, a.cell.frame()))
            elif isinstance(a, OpenStream):
                host = a.target.rsplit(":", 1)[0]
                answer = (node.relay.stream_opened if host in ("echo.fog", "sink.fog", "stall.fog")
                          else node.relay.stream_refused)
                later.append(lambda a=a, answer=answer: answer(a.circuit, a.stream_id, self.now))  # type: ignore[misc]
            elif isinstance(a, StreamData) and relay_side:
                target = node.relay._served(a.circuit, a.stream_id)
                name = target[1].streams[a.stream_id].target if target is not None else ""
                if name.startswith("echo.fog"):
                    later.append(lambda a=a: node.relay.send_stream(  # type: ignore[misc]
                        a.circuit, a.stream_id, a.data, self.now))
                else:
                    node.sunk.setdefault((a.circuit, a.stream_id), bytearray()).extend(a.data)
                if not name.startswith("stall.fog"):
                    later.append(lambda a=a: node.relay.stream_consumed(  # type: ignore[misc]
                        a.circuit, a.stream_id, self.now))
            elif isinstance(a, StreamData) and peer not in self.stalled:
                self.events.append((peer, a))
                circ = node.circuits.get(a.circuit) or (node.client.circuits.get(a.circuit) if node.client else None)
                if circ is not None:
                    later.append(lambda a=a, circ=circ: circ.consumed(a.stream_id, self.now))  # type: ignore[misc]
            else:
                if isinstance(a, CircuitClosed):
                    node.circuits.pop(a.circuit, None)
                if not (relay_side and isinstance(a, StreamEnded)):
                    self.events.append((peer, a))
        for call in later:
            self.dispatch(peer, call(), relay_side=relay_side)

    def deliver(self, src: str, dst: str, frame: bytes) -> None:
        node = self.nodes[dst]
        framer = node.framers.setdefault(src, CellFramer())
        for item in framer.feed(frame):
            if isinstance(item, CellError):
                self.dispatch(dst, node.relay.garbage(src, item), relay_side=True)
                continue
            key = (src, item.circ_id)
            circ = node.circuits.get(key)
            if node.client is not None and node.client.owns(key):
                self.dispatch(dst, node.client.receive(src, item, self.now), relay_side=False)
            elif circ is not None:
                self.dispatch(dst, circ.receive(item, self.now), relay_side=False)
            else:
                self.dispatch(dst, node.relay.receive(src, item, self.now), relay_side=True)

    def run(self, max_frames: int = 1_000_000) -> int:
        """Deliver frames until the queue is empty; the number delivered."""
        n = 0
        while self.queue and n < max_frames:
            src, dst, frame = self.queue.popleft()
            frames = self.intercept(src, dst, frame) if self.intercept else [frame]
            for f in frames:
                self.deliver(src, dst, f)
            n += 1
        self.delivered += n
        return n

    def tick(self, now: float) -> None:
        self.now = now
        for peer, node in self.nodes.items():
            for circ in list(node.circuits.values()):
                self.dispatch(peer, circ.tick(now), relay_side=False)
            if node.client is not None:
                self.dispatch(peer, node.client.tick(now), relay_side=False)
            self.dispatch(peer, node.relay.tick(now), relay_side=True)

    def client_events(self, peer: str, kind: type) -> list[Action]:
        return [a for p, a in self.events if p == peer and isinstance(a, kind)]

    def received(self, peer: str, key: CircKey, stream_id: int) -> bytes:
        return b"".join(a.data for p, a in self.events
                        if p == peer and isinstance(a, StreamData) and a.circuit == key and a.stream_id == stream_id)
