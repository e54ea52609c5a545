"""The relay side: answers CREATE, extends on EXTEND, forwards cells, serves streams as last hop.

Sans-IO: `receive(peer, cell, now)` for each cell read from a neighbour's relay stream,
`garbage(peer, error)` for a frame that did not decode (cells.CellFramer), `link_failed(peer)`
when a link breaks, `tick(now)` for timers; the `stream_*` methods are the adapter's answers for
the streams this relay serves as the last hop (OpenStream). All return actions (actions.py).

A relay circuit knows exactly two links: `prev` (towards the client; the circuit id the
previous hop chose) and, once extended, `next` (the id this relay chose towards the next hop).
The relay never learns more of the path: EXTEND names only the next peer; its reply comes back
as a CREATED on the next link, turned into EXTENDED for the client. `snapshot()` shows this: per
circuit, the two neighbours and counters, nothing else.

As an introduction or rendezvous point (rendezvous.py) the last hop of a circuit keeps the
service's circuit under its auth key, hands INTRODUCE1 payloads over unread, and joins a
client's circuit to a service's on a matching cookie: then a cell that is not for this relay is
passed from one circuit into the other with the other's backward layer added. A joined relay
still knows one neighbour per circuit. Once a cell of a joined circuit has passed across the
join, nothing later on that circuit is for the meeting point (relay_crypto.py): the rest pass
untried. `receive_run` takes a RelayRun (cells.CellFramer.feed_runs) and passes a run that only
passes through in one cipher call per layer and one SendCells.

Robustness: garbage, short and oversize frames, cells for unknown circuits, and cells out of
protocol are dropped and reported as `PeerFault` (penalize only when surely the sender's fault:
a cell racing a DESTROY is not); the relay itself never raises on input. A circuit whose cell
fails integrity, whose client overruns a window or sends a wrong SENDME, or which breaks the
protocol is torn down: DESTROY both ways. Limits: `max_circuits`, a replay cache of client
ephemeral keys (a replayed CREATE is refused), EXTEND never back to the previous hop nor to this
relay, and a pending EXTEND that gets no CREATED within `extend_timeout` is torn down.
"""
from __future__ import annotations

from collections import OrderedDict

from fognode.protocols.onion.actions import (Action, CircKey, OpenStream, PeerFault, SendCell, SendCells,
                                             StreamConnected, StreamData, StreamEnded)
from fognode.protocols.onion.cells import (BODY_LEN, Cell, CellCommand, CellError, RelayCommand, RelayMsg, RelayRun,
                                           create_body, created_body, decode_relay, destroy_body, frame_relay_cells,
                                           parse_begin, parse_create, parse_created, parse_destroy, parse_end,
                                           parse_extend, parse_padding_negotiate)
from fognode.protocols.onion.errors import DESTROY_CODES, CircuitProtocolError, HandshakeError, TeardownReason
from fognode.protocols.onion.flow import StreamMux, StreamState
from fognode.protocols.onion.links import CircIdAllocator
from fognode.protocols.onion.ntor import server_handshake
from fognode.protocols.onion.padding import ConstantRate
from fognode.protocols.onion.relay_crypto import RelayHop
from fognode.protocols.onion.relay_state import RelayCircuit, RelayCircuitView, RelayParams
from fognode.protocols.onion.rendezvous import (AUTH_KEY_LEN, COOKIE_LEN, MeetingPoints, parse_establish_intro,
                                                split_keyed)

__all__ = ["MEETING_CMDS", "RelayCircuit", "RelayCircuitView", "RelayCore", "RelayParams"]


MEETING_CMDS = (RelayCommand.ESTABLISH_INTRO, RelayCommand.INTRODUCE1, RelayCommand.ESTABLISH_RENDEZVOUS,
                RelayCommand.RENDEZVOUS1)


class RelayCore:
    def __init__(self, self_peer: str, identity: bytes, onion_keys: dict[bytes, bytes],
                 ids: CircIdAllocator, params: RelayParams | None = None) -> None:
        self.self_peer = self_peer
        self.identity = identity
        self.onion_keys = dict(onion_keys)
        self.ids = ids
        self.params = params or RelayParams()
        self._links: dict[CircKey, RelayCircuit] = {}     # prev and next keys -> circuit
        self._by_prev: dict[CircKey, RelayCircuit] = {}
        self._replay: OrderedDict[bytes, None] = OrderedDict()
        self.meetings: MeetingPoints[RelayCircuit] = MeetingPoints()
        self.cells_relayed = 0
        self.dropped = 0

    def set_onion_keys(self, onion_keys: dict[bytes, bytes]) -> None:
        """Rotation: the keys answered for from now on (current and the previous one)."""
        self.onion_keys = dict(onion_keys)

    @property
    def circuits(self) -> list[RelayCircuit]:
        return list(self._by_prev.values())

    def owns(self, key: CircKey) -> bool:
        return key in self._links

    def snapshot(self, now: float) -> list[RelayCircuitView]:
        return [RelayCircuitView(c.prev[0], c.next[0] if c.next else None, c.joined.prev[0] if c.joined else None,
                                 now - c.created_at, c.cells_forward,
                                 c.cells_backward, len(c.mux.streams) if c.mux else 0) for c in self.circuits]

    # -- input ---------------------------------------------------------------------------------

    def garbage(self, peer: str, error: CellError) -> list[Action]:
        self.dropped += 1
        return [PeerFault(peer, "malformed_cell", str(error), penalize=True)]

    def receive(self, peer: str, cell: Cell, now: float) -> list[Action]:
        key = (peer, cell.circ_id)
        cmd = cell.command
        if cmd is CellCommand.PADDING:
            return []
        circ = self._links.get(key)
        if cmd is CellCommand.CREATE:
            if circ is not None:
                return self._drop(peer, "duplicate_create", f"CREATE on circuit {cell.circ_id:#x} in use", True)
            return self._create(key, cell.body, now)
        if circ is None:
            # a cell racing a DESTROY is normal; anything else on an unknown id is counted only
            return self._drop(peer, "unknown_circuit", f"{cmd.name} for unknown circuit {cell.circ_id:#x}", False)
        from_prev = key == circ.prev
        try:
            if cmd is CellCommand.RELAY:
                return self._relay(circ, from_prev, cell.body, now)
            if cmd is CellCommand.DESTROY:       # passed on with its reason (informational only)
                return self._destroy(circ, parse_destroy(cell.body), now, tell_prev=not from_prev,
                                     tell_next=from_prev)
            if cmd is CellCommand.CREATED:
                if from_prev or circ.extend_since is None:
                    raise CircuitProtocolError(TeardownReason.PROTOCOL, "CREATED nobody asked for")
                reply = parse_created(cell.body)
                circ.extend_since = None
                return self._originate(circ, RelayMsg(RelayCommand.EXTENDED, 0, created_body(reply)))
            raise CircuitProtocolError(TeardownReason.PROTOCOL, f"unexpected {cmd.name}")
        except CircuitProtocolError as e:
            return [PeerFault(peer, e.reason.value, str(e), penalize=False),
                    *self._destroy(circ, e.reason, now)]
        except CellError as e:
            return [PeerFault(peer, "protocol", str(e), penalize=False),
                    *self._destroy(circ, TeardownReason.PROTOCOL, now)]

    def receive_run(self, peer: str, run: RelayRun, now: float) -> list[Action]:
        """The cells of a RelayRun from `peer` (cells.CellFramer.feed_runs): the same as
        `receive` of each in order, but a run that only passes through (any hop's backward
        cells, a middle hop's forward ones, a joined meeting point's towards the other
        circuit) is layered in one cipher call and sent on as one SendCells."""
        key = (peer, run.circ_id)
        circ = self._links.get(key)
        n = run.count
        if circ is None or n == 1:
            return self._each(peer, run, now)
        try:
            if key != circ.prev:
                self.cells_relayed += n
                circ.cells_backward += n
                return [SendCells(circ.prev[0], frame_relay_cells(circ.prev[1], circ.hop.from_next_many(run.bodies, n),
                                                                  n), n)]
            if circ.next is not None and circ.extend_since is None:
                self.cells_relayed += n
                circ.cells_forward += n
                return [SendCells(circ.next[0], frame_relay_cells(circ.next[1], circ.hop.pass_forward_many(run.bodies, n),
                                                                  n), n)]
            j = circ.joined
            if j is not None and circ.through:
                self.cells_relayed += n
                circ.cells_forward += n
                j.cells_backward += n
                bodies = j.hop.from_next_many(circ.hop.pass_forward_many(run.bodies, n), n)
                return [SendCells(j.prev[0], frame_relay_cells(j.prev[1], bodies, n), n)]
        except CircuitProtocolError as e:
            return [PeerFault(peer, e.reason.value, str(e), penalize=False), *self._destroy(circ, e.reason, now)]
        if circ.joined is not None:
            return self._joined_run(peer, circ, run, now)
        return self._each(peer, run, now)

    def _each(self, peer: str, run: RelayRun, now: float) -> list[Action]:
        out: list[Action] = []
        for cell in run.cells():
            out += self.receive(peer, cell, now)
        return out

    def _joined_run(self, peer: str, circ: RelayCircuit, run: RelayRun, now: float) -> list[Action]:
        """A run from the previous hop of a joined meeting point that has not yet passed a
        cell across the join: its cells go through `receive` (each tries this relay's tag)
        until one passes, the rest as a run untried (`RelayCircuit.through`)."""
        out: list[Action] = []
        for i in range(run.count):
            if circ.through and self._links.get((peer, run.circ_id)) is circ:
                rest = RelayRun(run.circ_id, run.bodies[i * BODY_LEN:], run.count - i)
                return out + self.receive_run(peer, rest, now)
            out += self.receive(peer, Cell(run.circ_id, CellCommand.RELAY, run.body(i)), now)
        return out

    def _drop(self, peer: str, reason: str, detail: str, penalize: bool) -> list[Action]:
        self.dropped += 1
        return [PeerFault(peer, reason, detail, penalize)]

    def _create(self, key: CircKey, body: bytes, now: float) -> list[Action]:
        peer, cid = key
        if len(self._by_prev) >= self.params.max_circuits:
            return [SendCell(peer, Cell(cid, CellCommand.DESTROY, destroy_body(TeardownReason.REFUSED)))]
        problem = self.ids.accept(peer, cid)
        if problem:
            return self._drop(peer, "bad_circ_id", problem, True)
        try:
            onionskin = parse_create(body)
            x_pub = onionskin[64:]
            if x_pub in self._replay:
                raise HandshakeError("a replayed onionskin")
            reply, keys = server_handshake(self.identity, self.onion_keys, onionskin)
        except (CellError, HandshakeError) as e:
            self.ids.release(peer, cid)
            return [PeerFault(peer, "handshake", str(e), penalize=False),
                    SendCell(peer, Cell(cid, CellCommand.DESTROY, destroy_body(TeardownReason.HANDSHAKE)))]
        self._replay[x_pub] = None
        while len(self._replay) > self.params.replay_cache:
            self._replay.popitem(last=False)
        circ = RelayCircuit(key, RelayHop(keys), now)
        self._links[key] = circ
        self._by_prev[key] = circ
        return [SendCell(peer, Cell(cid, CellCommand.CREATED, created_body(reply)))]

    def _relay(self, circ: RelayCircuit, from_prev: bool, body: bytes, now: float) -> list[Action]:
        self.cells_relayed += 1
        if not from_prev:
            circ.cells_backward += 1
            return [SendCell(circ.prev[0], Cell(circ.prev[1], CellCommand.RELAY, circ.hop.from_next(body)))]
        circ.cells_forward += 1
        if circ.next is not None and circ.extend_since is None:      # a middle hop: passed on untried
            return [SendCell(circ.next[0], Cell(circ.next[1], CellCommand.RELAY, circ.hop.pass_forward(body)))]
        j = circ.joined
        if j is not None and circ.through:        # joined, and the far ends talk: passed on untried
            j.cells_backward += 1
            return [SendCell(j.prev[0], Cell(j.prev[1], CellCommand.RELAY, j.hop.from_next(circ.hop.pass_forward(body))))]
        plain, rest, tag = circ.hop.from_previous(body)
        if plain is None:
            if j is not None:                     # rendezvous: on into the other circuit, towards its origin
                circ.through = True
                j.cells_backward += 1
                return [SendCell(j.prev[0], Cell(j.prev[1], CellCommand.RELAY, j.hop.from_next(rest)))]
            raise CircuitProtocolError(TeardownReason.INTEGRITY,
                                       "a relay cell that is not for this hop and has nowhere to go")
        return self._message(circ, decode_relay(plain), tag, now)

    def _message(self, circ: RelayCircuit, msg: RelayMsg, tag: bytes, now: float) -> list[Action]:
        cmd = msg.command
        if cmd is RelayCommand.DROP:
            return []
        if cmd is RelayCommand.EXTEND:
            return self._extend(circ, msg.data, now)
        if cmd is RelayCommand.PADDING_NEGOTIATE:
            rate = min(parse_padding_negotiate(msg.data), self.params.max_padding_rate)
            circ.padding = ConstantRate(rate, now) if rate > 0 else None
            return []
        if circ.next is not None or circ.joined is not None:
            raise CircuitProtocolError(TeardownReason.PROTOCOL, f"{cmd.name} for a middle hop")
        if cmd in MEETING_CMDS:
            return self._meeting(circ, msg)
        if circ.mux is None:
            circ.mux = StreamMux(self.params.flow)
        mux = circ.mux
        if cmd is RelayCommand.BEGIN:
            target = parse_begin(msg.data)
            if msg.stream_id in mux.streams:
                raise CircuitProtocolError(TeardownReason.PROTOCOL, f"BEGIN on stream {msg.stream_id} in use")
            mux.add(msg.stream_id, target, StreamState.CONNECTING)
            return [OpenStream(circ.prev, msg.stream_id, target)]
        if cmd is RelayCommand.DATA:
            deliver, sendmes = mux.on_data(msg.stream_id, msg.data, tag)
            s = mux.streams.get(msg.stream_id)
            if s is not None and s.state is not StreamState.OPEN:
                raise CircuitProtocolError(TeardownReason.PROTOCOL, f"DATA on stream {msg.stream_id} before CONNECTED")
            out: list[Action] = [StreamData(circ.prev, msg.stream_id, msg.data)] if deliver else []
            for m in sendmes:
                out += self._originate(circ, m)
            return out
        if cmd is RelayCommand.SENDME:
            mux.on_sendme(msg.stream_id, msg.data)
            return self._pump(circ)
        if cmd is RelayCommand.END:
            if mux.remove(msg.stream_id) is None:
                return []
            return [StreamEnded(circ.prev, msg.stream_id, parse_end(msg.data))]
        raise CircuitProtocolError(TeardownReason.PROTOCOL, f"unexpected relay {cmd.name} at a relay")

    def _meeting(self, circ: RelayCircuit, msg: RelayMsg) -> list[Action]:
        """Introduction and rendezvous (rendezvous.py); payloads are passed on unread."""
        if circ.mux is not None and circ.mux.streams:
            raise CircuitProtocolError(TeardownReason.PROTOCOL, f"{msg.command.name} on a circuit serving streams")
        cmd, data = msg.command, msg.data
        if cmd is RelayCommand.ESTABLISH_INTRO:
            self.meetings.establish_intro(parse_establish_intro(data, self.identity), circ)
            circ.meeting = True
            return self._originate(circ, RelayMsg(RelayCommand.INTRO_ESTABLISHED))
        if cmd is RelayCommand.INTRODUCE1:
            key, payload = split_keyed(data, AUTH_KEY_LEN, "introduce1")
            service = self.meetings.intro.get(key)
            if service is None or service is circ:
                return self._originate(circ, RelayMsg(RelayCommand.INTRODUCE_ACK, 0, b"\x01"))
            return (self._originate(service, RelayMsg(RelayCommand.INTRODUCE2, 0, payload))
                    + self._originate(circ, RelayMsg(RelayCommand.INTRODUCE_ACK, 0, b"\x00")))
        if cmd is RelayCommand.ESTABLISH_RENDEZVOUS:
            self.meetings.establish_rendezvous(data, circ)
            circ.meeting = True
            return self._originate(circ, RelayMsg(RelayCommand.RENDEZVOUS_ESTABLISHED))
        cookie, payload = split_keyed(data, COOKIE_LEN, "rendezvous1")
        client = self.meetings.take_rendezvous(cookie)
        if client is None or client is circ or client.joined is not None:
            raise CircuitProtocolError(TeardownReason.PROTOCOL, "RENDEZVOUS1 with no waiting cookie")
        out = self._originate(client, RelayMsg(RelayCommand.RENDEZVOUS2, 0, payload))
        client.joined, circ.joined = circ, client
        return out

    def _extend(self, circ: RelayCircuit, data: bytes, now: float) -> list[Action]:
        if circ.next is not None:
            raise CircuitProtocolError(TeardownReason.PROTOCOL, "EXTEND on a circuit already extended")
        if (circ.mux is not None and circ.mux.streams) or circ.meeting or circ.joined is not None:
            raise CircuitProtocolError(TeardownReason.PROTOCOL, "EXTEND on a circuit serving streams or a meeting point")
        peer, onionskin = parse_extend(data)
        if peer in (self.self_peer, circ.prev[0]):
            raise CircuitProtocolError(TeardownReason.REFUSED, "EXTEND to this relay or back to the previous hop")
        cid = self.ids.allocate(peer)
        circ.next = (peer, cid)
        circ.extend_since = now
        self._links[circ.next] = circ
        return [SendCell(peer, Cell(cid, CellCommand.CREATE, create_body(onionskin)))]

    # -- the streams this relay serves (answers from the adapter) ---------------------------------

    def _served(self, key: CircKey, stream_id: int) -> tuple[RelayCircuit, StreamMux] | None:
        circ = self._links.get(key)
        if circ is None or circ.prev != key or circ.mux is None or stream_id not in circ.mux.streams:
            return None
        return circ, circ.mux

    def stream_target(self, key: CircKey, stream_id: int) -> str | None:
        """The "host:port" a served stream was opened for (None if no such stream)."""
        found = self._served(key, stream_id)
        return found[1].streams[stream_id].target if found else None

    def stream_opened(self, key: CircKey, stream_id: int, now: float) -> list[Action]:
        found = self._served(key, stream_id)
        if found is None:
            return []
        circ, mux = found
        mux.streams[stream_id].state = StreamState.OPEN
        return self._originate(circ, RelayMsg(RelayCommand.CONNECTED, stream_id)) + self._pump(circ)

    def stream_refused(self, key: CircKey, stream_id: int, now: float) -> list[Action]:
        found = self._served(key, stream_id)
        if found is None:
            return []
        circ, mux = found
        mux.remove(stream_id)
        return self._originate(circ, RelayMsg(RelayCommand.END, stream_id,
                                              bytes([DESTROY_CODES[TeardownReason.REFUSED]])))

    def send_stream(self, key: CircKey, stream_id: int, data: bytes, now: float) -> list[Action]:
        """Data from the local end of a served stream, towards the client."""
        found = self._served(key, stream_id)
        if found is None:
            return []
        circ, mux = found
        mux.queue(stream_id, data)
        return self._pump(circ)

    def end_stream(self, key: CircKey, stream_id: int, now: float) -> list[Action]:
        found = self._served(key, stream_id)
        if found is None:
            return []
        circ, mux = found
        mux.streams[stream_id].end_when_flushed = True
        return self._pump(circ)

    def stream_consumed(self, key: CircKey, stream_id: int, now: float) -> list[Action]:
        """The adapter wrote one `StreamData` of a served stream to the local end."""
        found = self._served(key, stream_id)
        if found is None:
            return []
        msg = found[1].on_consumed(stream_id)
        return self._originate(found[0], msg) if msg is not None else []

    def queued_bytes(self, key: CircKey, stream_id: int) -> int:
        found = self._served(key, stream_id)
        return found[1].queued_bytes(stream_id) if found else 0

    # -- output --------------------------------------------------------------------------------

    def _originate(self, circ: RelayCircuit, msg: RelayMsg, *, now_slot: bool = False) -> list[Action]:
        if circ.padding is not None and not now_slot:
            circ.backlog.append(msg)
            return []
        body, _tag = circ.hop.originate(msg.encode())
        circ.cells_backward += 1
        return [SendCell(circ.prev[0], Cell(circ.prev[1], CellCommand.RELAY, body))]

    def _data_cell(self, circ: RelayCircuit) -> list[Action]:
        assert circ.mux is not None
        msg = circ.mux.next_data()
        if msg is None:
            return []
        body, tag = circ.hop.originate(msg.encode())
        circ.mux.sent_data(msg.stream_id, len(msg.data), tag)
        circ.cells_backward += 1
        return [SendCell(circ.prev[0], Cell(circ.prev[1], CellCommand.RELAY, body))]

    def _ends(self, circ: RelayCircuit) -> list[Action]:
        out: list[Action] = []
        if circ.mux is not None:
            for sid in circ.mux.flushed_ends():
                circ.mux.remove(sid)
                out += self._originate(circ, RelayMsg(RelayCommand.END, sid, bytes([DESTROY_CODES[TeardownReason.NONE]])))
        return out

    def _pump(self, circ: RelayCircuit) -> list[Action]:
        out: list[Action] = []
        if circ.padding is None and circ.mux is not None:
            while True:
                step = self._data_cell(circ)
                if not step:
                    break
                out += step
        return out + self._ends(circ)

    # -- time and links ------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        for circ in self.circuits:
            if circ.extend_since is not None and now - circ.extend_since > self.params.extend_timeout:
                out += self._destroy(circ, TeardownReason.TIMEOUT, now)
                continue
            if circ.padding is not None:
                for _ in range(circ.padding.due(now)):
                    if circ.backlog:
                        out += self._originate(circ, circ.backlog.popleft(), now_slot=True)
                        continue
                    step = self._data_cell(circ) if circ.mux is not None else []
                    out += step or self._originate(circ, RelayMsg(RelayCommand.DROP), now_slot=True)
                    out += self._ends(circ)
        return out

    def next_wakeup(self) -> float | None:
        times = [c.padding.next_at for c in self.circuits if c.padding is not None]
        times += [c.extend_since + self.params.extend_timeout for c in self.circuits if c.extend_since is not None]
        return min(times) if times else None

    def link_failed(self, peer: str, now: float) -> list[Action]:
        """The link to `peer` broke: every circuit through it is destroyed on its other side."""
        out: list[Action] = []
        for key, circ in list(self._links.items()):
            if key[0] == peer and self._links.get(key) is circ:
                out += self._destroy(circ, TeardownReason.LINK, now,
                                     tell_prev=key != circ.prev, tell_next=key == circ.prev)
        return out

    def _destroy(self, circ: RelayCircuit, reason: TeardownReason, now: float, *,
                 tell_prev: bool = True, tell_next: bool = True) -> list[Action]:
        out: list[Action] = []
        body = destroy_body(reason)
        self._links.pop(circ.prev, None)
        self._by_prev.pop(circ.prev, None)
        self.ids.release(*circ.prev)
        if tell_prev:
            out.append(SendCell(circ.prev[0], Cell(circ.prev[1], CellCommand.DESTROY, body)))
        if circ.next is not None:
            self._links.pop(circ.next, None)
            self.ids.release(*circ.next)
            if tell_next:
                out.append(SendCell(circ.next[0], Cell(circ.next[1], CellCommand.DESTROY, body)))
        if circ.mux is not None:
            out += [StreamEnded(circ.prev, sid, reason) for sid in circ.mux.streams]
            circ.mux.streams.clear()
        if circ.meeting:
            self.meetings.forget(circ)
        joined, circ.joined = circ.joined, None
        if joined is not None and joined.prev in self._by_prev:
            joined.joined = None
            out += self._destroy(joined, reason, now)
        return out
