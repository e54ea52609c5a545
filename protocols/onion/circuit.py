"""A client circuit: telescoping build, streams over it, flow control and optional padding.

Sans-IO, after Arti's layering (tor-proto: a channel carries circuits, a circuit carries
streams; tor-circmgr decides which paths to build and when to give up): this module is one
circuit of the client side; the links (channels) are the adapter's libp2p streams, and
choosing paths and timeouts is pathsel.py and cbt.py, handed in by the owner.

Build: CREATE(ntor onionskin for hop 0) to the guard; on CREATED the first hop's keys are set;
for each further hop an EXTEND(next peer id, onionskin) goes to the current last hop, which
creates the next link and answers EXTENDED(reply), so each relay only ever learns the peer
before and after it. The circuit is open once every hop answered with a valid AUTH; if it is
not open by `deadline` (the owner sets it from the adaptive build timeout) `tick` tears it
down with TIMEOUT.

Streams end at the last hop: BEGIN("host:port") -> CONNECTED, then DATA both ways under the
circuit and stream windows (flow.py), END to close. `send` queues data and sends what the
windows allow; a SENDME from the last hop sends more. With `padding_rate` > 0 nothing is sent
outside the constant-rate slots of `tick` (padding.py).

Hidden services (rendezvous.py): `send_meeting` sends the introduction and rendezvous requests
to the last relay, whose answers come back as `CircuitMessage`; once the rendezvous point has
joined the client's and the service's circuits, both call `add_virtual_hop` with the keys of
their end-to-end ntor handshake, and the far end becomes the last hop: the client opens streams
to it, the service (`serve=True`) answers their BEGIN with `OpenStream` like a relay does.

Every method returns a list of actions (actions.py); any protocol violation (a cell that fails
integrity, a bad handshake, a window overrun, an unexpected command) tears the circuit down:
a DESTROY to the guard and `CircuitClosed`.
"""
from __future__ import annotations

import enum
from collections import deque
from typing import Sequence

from fognode.node.errors import LocalProtocolError
from fognode.protocols.onion.actions import (Action, CircKey, CircuitBuilt, CircuitClosed, CircuitMessage, OpenStream,
                                             SendCell, SendCells, StreamConnected, StreamData, StreamEnded)
from fognode.protocols.onion.cells import (BODY_LEN, RUN_MAX, Cell, CellCommand, RelayCommand, RelayMsg, RelayRun, begin_data,
                                           create_body, decode_relay, destroy_body, extend_data, frame_relay_cells,
                                           padding_negotiate_data, parse_begin, parse_created, parse_destroy,
                                           parse_end)
from fognode.protocols.onion.errors import (DESTROY_CODES, CellError, CircuitProtocolError, HandshakeError,
                                            TeardownReason)
from fognode.protocols.onion.flow import FlowParams, StreamMux, StreamState
from fognode.protocols.onion.ntor import ClientHandshake
from fognode.protocols.onion.padding import ConstantRate
from fognode.protocols.onion.pathsel import RelayInfo
from fognode.protocols.onion.relay_crypto import ClientOnion, HopKeys


MEETING_REQUESTS = (RelayCommand.ESTABLISH_INTRO, RelayCommand.INTRODUCE1, RelayCommand.ESTABLISH_RENDEZVOUS,
                    RelayCommand.RENDEZVOUS1)
MEETING_REPLIES = (RelayCommand.INTRO_ESTABLISHED, RelayCommand.INTRODUCE2, RelayCommand.INTRODUCE_ACK,
                   RelayCommand.RENDEZVOUS_ESTABLISHED, RelayCommand.RENDEZVOUS2)


class CircuitState(enum.Enum):
    BUILDING = "building"
    OPEN = "open"
    CLOSED = "closed"


class ClientCircuit:
    def __init__(self, circ_id: int, path: Sequence[RelayInfo], flow: FlowParams, now: float,
                 build_timeout: float, padding_rate: float = 0.0) -> None:
        if not path:
            raise ValueError("a circuit needs at least one hop")
        self.path = tuple(path)
        self.key: CircKey = (path[0].peer_id, circ_id)
        self.state = CircuitState.BUILDING
        self.started = now
        self.deadline = now + build_timeout
        self.built_at: float | None = None
        self.onion = ClientOnion()
        self.mux = StreamMux(flow)
        self._handshake: ClientHandshake | None = None
        self._next_stream = 1
        self.padding_rate = padding_rate
        self._padding: ConstantRate | None = None
        self._control: deque[tuple[int, RelayMsg]] = deque()   # waiting for a padding slot
        self.cells_sent = 0
        self.cells_received = 0
        self.close_reason: TeardownReason | None = None
        self.virtual_hop = False      # joined at a rendezvous point: the far end is the last hop
        self.serving = False          # the service's end: accepts BEGIN from the far end

    # -- building ------------------------------------------------------------------------------

    def start(self) -> list[Action]:
        hop = self.path[0]
        self._handshake = ClientHandshake.start(hop.identity, hop.onion_key)
        return [self._cell(CellCommand.CREATE, create_body(self._handshake.onionskin()))]

    def _hop_done(self, reply: bytes, now: float) -> list[Action]:
        if self._handshake is None:
            raise CircuitProtocolError(TeardownReason.PROTOCOL, "a handshake reply nobody asked for")
        self.onion.add_hop(self._handshake.finish(reply))
        self._handshake = None
        n = len(self.onion.hops)
        if n == len(self.path):
            self.state = CircuitState.OPEN
            self.built_at = now
            out: list[Action] = [CircuitBuilt(self.key, tuple(h.peer_id for h in self.path), now - self.started)]
            if self.padding_rate > 0:
                self._padding = ConstantRate(self.padding_rate, now)
                self._control.append((n - 1, RelayMsg(RelayCommand.PADDING_NEGOTIATE, 0,
                                                      padding_negotiate_data(self.padding_rate))))
            return out
        nxt = self.path[n]
        self._handshake = ClientHandshake.start(nxt.identity, nxt.onion_key)
        return self._send_now(n - 1, RelayMsg(RelayCommand.EXTEND, 0,
                                              extend_data(nxt.peer_id, self._handshake.onionskin())))

    # -- input ---------------------------------------------------------------------------------

    def receive(self, cell: Cell, now: float) -> list[Action]:
        """A cell from the guard on this circuit's id."""
        if self.state is CircuitState.CLOSED:
            return []
        self.cells_received += 1
        try:
            return self._receive(cell, now)
        except CircuitProtocolError as e:
            return self._teardown(e.reason, str(e), now)
        except HandshakeError as e:
            return self._teardown(TeardownReason.HANDSHAKE, str(e), now)
        except CellError as e:
            return self._teardown(TeardownReason.PROTOCOL, str(e), now)

    def receive_run(self, run: RelayRun, now: float) -> list[Action]:
        """The cells of a RelayRun from the guard: the same as `receive` of each in order, with
        the untried middle layers (relay_crypto.py) removed from all of them in one cipher call
        per hop when the circuit is open."""
        n = run.count
        if n == 1 or self.state is not CircuitState.OPEN:
            out: list[Action] = []
            for cell in run.cells():
                out += self.receive(cell, now)
            return out
        first = self._first_tried()
        try:
            bodies = self.onion.strip_backward(run.bodies, n, first)
        except CircuitProtocolError as e:
            self.cells_received += n
            return self._teardown(e.reason, str(e), now)
        out = []
        for i in range(0, n * BODY_LEN, BODY_LEN):
            if self.state is CircuitState.CLOSED:
                break
            self.cells_received += 1
            try:
                hop, plain, tag = self.onion.open_backward(bodies[i:i + BODY_LEN], first, stripped=True)
                out += self._relay_msg(hop, decode_relay(plain), tag, now)
            except CircuitProtocolError as e:
                out += self._teardown(e.reason, str(e), now)
            except HandshakeError as e:
                out += self._teardown(TeardownReason.HANDSHAKE, str(e), now)
            except CellError as e:
                out += self._teardown(TeardownReason.PROTOCOL, str(e), now)
        return out

    def _first_tried(self) -> int:
        """The first hop whose tag a cell from the guard is tried against: only the last relay
        and, once joined, the far end speak to us (relay_crypto.py): the middle hops' layers go
        untried, and so does a joined meeting point's unless it pads for us."""
        if self.virtual_hop and self.padding_rate <= 0:
            return len(self.onion.hops) - 1
        return min(len(self.path), len(self.onion.hops)) - 1

    def _receive(self, cell: Cell, now: float) -> list[Action]:
        cmd = cell.command
        if cmd is CellCommand.PADDING:
            return []
        if cmd is CellCommand.DESTROY:
            why = parse_destroy(cell.body).value
            return self._closed(TeardownReason.DESTROYED, f"destroyed by the guard or a later hop ({why})", now)
        if cmd is CellCommand.CREATED:
            if self.onion.hops:
                raise CircuitProtocolError(TeardownReason.PROTOCOL, "CREATED after the first hop")
            return self._hop_done(parse_created(cell.body), now)
        if cmd is not CellCommand.RELAY:
            raise CircuitProtocolError(TeardownReason.PROTOCOL, f"unexpected {cmd.name} cell")
        if not self.onion.hops:
            raise CircuitProtocolError(TeardownReason.PROTOCOL, "RELAY before CREATED")
        hop, plain, tag = self.onion.open_backward(cell.body, self._first_tried())
        return self._relay_msg(hop, decode_relay(plain), tag, now)

    def _relay_msg(self, hop: int, msg: RelayMsg, tag: bytes, now: float) -> list[Action]:
        cmd, last = msg.command, len(self.onion.hops) - 1
        if cmd is RelayCommand.DROP:
            return []
        if cmd is RelayCommand.EXTENDED:
            if self.state is not CircuitState.BUILDING or hop != last:
                raise CircuitProtocolError(TeardownReason.PROTOCOL, f"EXTENDED from hop {hop}")
            return self._hop_done(parse_created(msg.data), now)    # EXTENDED's data is a CREATED body
        if cmd in MEETING_REPLIES and self.state is CircuitState.OPEN and hop == len(self.path) - 1:
            return [CircuitMessage(self.key, cmd, msg.data)]
        if self.state is not CircuitState.OPEN or hop != last:
            raise CircuitProtocolError(TeardownReason.PROTOCOL, f"{cmd.name} from hop {hop} of {last + 1}")
        if cmd is RelayCommand.BEGIN and self.serving:
            target = parse_begin(msg.data)
            if msg.stream_id in self.mux.streams:
                raise CircuitProtocolError(TeardownReason.PROTOCOL, f"BEGIN on stream {msg.stream_id} in use")
            self.mux.add(msg.stream_id, target, StreamState.CONNECTING)
            return [OpenStream(self.key, msg.stream_id, target)]
        if cmd is RelayCommand.SENDME:
            self.mux.on_sendme(msg.stream_id, msg.data)
            return self._pump(now)
        if cmd is RelayCommand.CONNECTED:
            s = self.mux.streams.get(msg.stream_id)
            if s is None or s.state is not StreamState.CONNECTING or self.serving:
                raise CircuitProtocolError(TeardownReason.PROTOCOL, f"CONNECTED for stream {msg.stream_id}")
            s.state = StreamState.OPEN
            return [StreamConnected(self.key, msg.stream_id), *self._pump(now)]
        if cmd is RelayCommand.DATA:
            s = self.mux.streams.get(msg.stream_id)
            if s is not None and s.state is not StreamState.OPEN:
                raise CircuitProtocolError(TeardownReason.PROTOCOL, f"DATA on stream {msg.stream_id} before CONNECTED")
            deliver, sendmes = self.mux.on_data(msg.stream_id, msg.data, tag)
            out: list[Action] = [StreamData(self.key, msg.stream_id, msg.data)] if deliver else []
            for m in sendmes:
                out += self._send_control(last, m)
            return out
        if cmd is RelayCommand.END:
            if self.mux.remove(msg.stream_id) is None:
                return []
            return [StreamEnded(self.key, msg.stream_id, parse_end(msg.data))]
        raise CircuitProtocolError(TeardownReason.PROTOCOL, f"unexpected relay {cmd.name} at the client")

    # -- streams -------------------------------------------------------------------------------

    def open_stream(self, target: str, now: float) -> tuple[int, list[Action]]:
        """Ask the last hop to connect `target` ("host:port"): (stream id, actions)."""
        if self.state is not CircuitState.OPEN or self.serving:
            raise LocalProtocolError(f"circuit is {self.state.value}{' and serving' if self.serving else ''}: "
                                     f"it cannot open streams")
        if len(self.mux.streams) >= 0xFFFF:
            raise LocalProtocolError("no free stream id on this circuit")
        while self._next_stream in self.mux.streams or self._next_stream == 0:
            self._next_stream = self._next_stream % 0xFFFF + 1
        sid = self._next_stream
        self._next_stream = sid % 0xFFFF + 1
        self.mux.add(sid, target, StreamState.CONNECTING)
        return sid, self._send_control(self._end, RelayMsg(RelayCommand.BEGIN, sid, begin_data(target)))

    def send(self, stream_id: int, data: bytes, now: float) -> list[Action]:
        """Queue `data` on the stream; send what the windows allow (the rest on SENDMEs)."""
        if self.state is not CircuitState.OPEN or stream_id not in self.mux.streams:
            raise LocalProtocolError(f"no open stream {stream_id} on this circuit")
        self.mux.queue(stream_id, data)
        return self._pump(now)

    def end_stream(self, stream_id: int, now: float) -> list[Action]:
        """End the stream once its queued data is sent."""
        s = self.mux.streams.get(stream_id)
        if s is None or self.state is not CircuitState.OPEN:
            return []
        s.end_when_flushed = True
        return self._pump(now)

    def consumed(self, stream_id: int, now: float) -> list[Action]:
        """The adapter wrote one `StreamData` of this stream to its reader (stream SENDMEs
        follow consumption, so a slow reader holds the last hop back)."""
        if self.state is not CircuitState.OPEN:
            return []
        msg = self.mux.on_consumed(stream_id)
        return self._send_control(self._end, msg) if msg is not None else []

    def stream_opened(self, stream_id: int, now: float) -> list[Action]:
        """Serving end: the local service accepted the stream (after OpenStream)."""
        s = self.mux.streams.get(stream_id)
        if s is None or not self.serving or s.state is not StreamState.CONNECTING:
            return []
        s.state = StreamState.OPEN
        return self._send_control(self._end, RelayMsg(RelayCommand.CONNECTED, stream_id)) + self._pump(now)

    def stream_refused(self, stream_id: int, now: float) -> list[Action]:
        if self.mux.remove(stream_id) is None or not self.serving:
            return []
        return self._send_control(self._end, RelayMsg(RelayCommand.END, stream_id,
                                                      bytes([DESTROY_CODES[TeardownReason.REFUSED]])))

    # -- meeting points (rendezvous.py) -----------------------------------------------------------

    def send_meeting(self, command: RelayCommand, data: bytes, now: float) -> list[Action]:
        """Send ESTABLISH_INTRO, INTRODUCE1, ESTABLISH_RENDEZVOUS or RENDEZVOUS1 to the last relay
        of the path; the answers come back as `CircuitMessage`."""
        if command not in MEETING_REQUESTS:
            raise LocalProtocolError(f"{command.name} is not a meeting-point request")
        if self.state is not CircuitState.OPEN or self.virtual_hop:
            raise LocalProtocolError("meeting-point requests need an open circuit not yet joined")
        return self._send_control(len(self.path) - 1, RelayMsg(command, 0, data))

    def add_virtual_hop(self, keys: HopKeys, *, serve: bool) -> None:
        """After RENDEZVOUS2 (client) or RENDEZVOUS1 (service): the far end becomes the last hop,
        with the keys of the end-to-end handshake; `serve` on the service's side (it accepts
        streams, and its directions are the client's mirrored)."""
        if self.state is not CircuitState.OPEN or self.virtual_hop or self.mux.streams:
            raise LocalProtocolError("a virtual hop goes on an open circuit without streams, once")
        self.onion.add_hop(keys, mirrored=serve)
        self.virtual_hop = True
        self.serving = serve

    @property
    def _end(self) -> int:
        """The hop streams go to: the last relay, or the far end once joined."""
        return len(self.onion.hops) - 1

    def queued_bytes(self, stream_id: int) -> int:
        """Bytes waiting for window or padding slots (the adapter's backpressure signal)."""
        return self.mux.queued_bytes(stream_id)

    # -- time ----------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        if self.state is CircuitState.BUILDING and now >= self.deadline:
            return self._teardown(TeardownReason.TIMEOUT, f"not built after {now - self.started:.3f} s", now)
        if self.state is not CircuitState.OPEN or self._padding is None:
            return []
        out: list[Action] = []
        for _ in range(self._padding.due(now)):
            out += self._slot(now)
        return out

    def next_wakeup(self) -> float | None:
        if self.state is CircuitState.BUILDING:
            return self.deadline
        if self.state is CircuitState.OPEN and self._padding is not None:
            return self._padding.next_at
        return None

    def link_lost(self, now: float) -> list[Action]:
        """The link to the guard broke: closed without a DESTROY (there is nowhere to send it)."""
        if self.state is CircuitState.CLOSED:
            return []
        return self._closed(TeardownReason.LINK, f"the link to the guard {self.key[0]} broke", now)

    def close(self, now: float, reason: TeardownReason = TeardownReason.NONE, detail: str = "closed") -> list[Action]:
        if self.state is CircuitState.CLOSED:
            return []
        return self._teardown(reason, detail, now)

    # -- output --------------------------------------------------------------------------------

    def _cell(self, command: CellCommand, body: bytes) -> SendCell:
        self.cells_sent += 1
        return SendCell(self.key[0], Cell(self.key[1], command, body))

    def _send_now(self, dest: int, msg: RelayMsg) -> list[Action]:
        body, _tag = self.onion.seal_forward(dest, msg.encode())
        return [self._cell(CellCommand.RELAY, body)]

    def _send_control(self, dest: int, msg: RelayMsg) -> list[Action]:
        if self._padding is not None:
            self._control.append((dest, msg))
            return []
        return self._send_now(dest, msg)

    def _slot(self, now: float) -> list[Action]:
        """One padding slot: a control message, else a DATA cell, else a DROP."""
        last = self._end
        if self._control:
            return self._send_now(*self._control.popleft())
        out = self._next_data(now)
        self._queue_flushed_ends()
        return out or self._send_now(last, RelayMsg(RelayCommand.DROP))

    def _queue_flushed_ends(self) -> list[Action]:
        out: list[Action] = []
        for sid in self.mux.flushed_ends():
            self.mux.remove(sid)
            out += self._send_control(self._end, RelayMsg(RelayCommand.END, sid,
                                                                   bytes([DESTROY_CODES[TeardownReason.NONE]])))
        return out

    def _next_data(self, now: float) -> list[Action]:
        msg = self.mux.next_data()
        if msg is None:
            return []
        body, tag = self.onion.seal_forward(self._end, msg.encode())
        self.mux.sent_data(msg.stream_id, len(msg.data), tag)
        return [self._cell(CellCommand.RELAY, body)]

    def _pump(self, now: float) -> list[Action]:
        """Send every DATA cell the windows allow (no padding): each sealed for the last hop
        in turn, then the relays' layers added RUN_MAX cells at a time, one SendCells each."""
        out: list[Action] = []
        if self._padding is None:
            dest = self._end
            seal = self.onion.hops[dest].forward.seal
            mux = self.mux
            bodies: list[bytes] = []
            while (msg := mux.next_data()) is not None:
                body, tag = seal(msg.encode())
                mux.sent_data(msg.stream_id, len(msg.data), tag)
                bodies.append(body)
            for i in range(0, len(bodies), RUN_MAX):
                part = bodies[i:i + RUN_MAX]
                n = len(part)
                layered = self.onion.layer_forward(dest, part[0] if n == 1 else b"".join(part), n)
                self.cells_sent += n
                out.append(SendCells(self.key[0], frame_relay_cells(self.key[1], layered, n), n))
        return out + self._queue_flushed_ends()

    def _teardown(self, reason: TeardownReason, detail: str, now: float) -> list[Action]:
        out: list[Action] = [self._cell(CellCommand.DESTROY, destroy_body(reason))]
        return out + self._closed(reason, detail, now)

    def _closed(self, reason: TeardownReason, detail: str, now: float) -> list[Action]:
        was_built = self.state is CircuitState.OPEN
        self.state = CircuitState.CLOSED
        self.close_reason = reason
        out: list[Action] = [StreamEnded(self.key, sid, reason) for sid in list(self.mux.streams)]
        self.mux.streams.clear()
        return out + [CircuitClosed(self.key, reason, detail, was_built, now - self.started, len(self.onion.hops))]
