"""SENDME flow control: circuit and stream windows, and the stream multiplexer of an endpoint.

As in tor-spec "Flow control" (SENDME v1, proposal 289), counted in DATA cells only: a sender
may have `window` DATA cells unacknowledged; the receiver answers every `increment` cells with
a SENDME, which opens the sender's window by `increment`: circuit SENDMEs as the cells arrive
(as in Tor), stream SENDMEs as the owner reports the data consumed by its local reader
(`on_consumed`), so a slow reader holds its sender back and a sender that ignores its window
overruns the receiver's and is caught. Circuit-level SENDMEs are
authenticated: they carry the tag of the DATA cell that triggered them, which the sender
recorded when it sealed that cell; the tag is unpredictable without the cell itself (cells.py:
each relay message has a random nonce), so a SENDME proves receipt and a peer cannot inflate
our window to make us flood the circuit. Stream-level SENDMEs carry no tag. A sender that
overruns a receive window, a SENDME that would open a window past its start, or a wrong tag
raises CircuitProtocolError(WINDOW): the circuit is torn down.

Window sizes (FlowParams, the `protocols.onion.*window*` keys): a circuit may have 1024 DATA
cells (4 MiB) in flight, acknowledged 256 at a time, a stream 512 (2 MiB) acknowledged 128 at a
time. Tor's are 1000/100 and 500/50 cells of 498 bytes; ours were 256/32 and 128/16 until
session 23. What a SENDME costs here is not its bytes but a link write of its own at every link
it crosses (a py-libp2p write and read cost about the same whatever their size, cells.py), and
the burst a SENDME releases is what the sender's links write at once: with the old windows a MB
through the 5-relay rendezvous path took about 24 SENDMEs, 144 single-cell link writes, and the
data went in frames of about 75 kB; now about 3 SENDMEs and frames of 190-250 kB, which cut the
CPU a circuit byte costs across the daemons by about a quarter (tools/bench/onion.py, "CPU per
MB"). Every node of a network must use the same windows: a receiver tears a circuit down when
its sender overruns the window it expects or sends a SENDME it did not owe. A relay's link queue
(`link_queue_bytes`, 32 MiB) keeps room for eight full circuit windows.

`StreamMux` is what both endpoints of a circuit share (the client, and the last hop serving
the streams): the stream table, the per-stream send queues and both levels of windows. It
never seals anything: the owner asks it for the next DATA message, seals it, and reports the
tag (`sent_data`).
"""
from __future__ import annotations

import enum
import hmac
from collections import deque
from dataclasses import dataclass, field

from fognode.node.errors import LocalProtocolError
from fognode.protocols.onion.cells import MAX_DATA, RelayCommand, RelayMsg, parse_sendme, sendme_data
from fognode.protocols.onion.errors import CircuitProtocolError, TeardownReason


@dataclass(frozen=True)
class FlowParams:
    circuit_window: int = 1024      # DATA cells (4 KiB each) in flight per circuit: 4 MiB
    circuit_increment: int = 256
    stream_window: int = 512
    stream_increment: int = 128


class SendWindow:
    def __init__(self, start: int, increment: int, authenticated: bool) -> None:
        self.start, self.increment, self.window = start, increment, start
        self.authenticated = authenticated
        self.sent = 0
        self.tags: deque[bytes] = deque()

    def can_send(self) -> bool:
        return self.window > 0

    def on_sent(self, tag: bytes) -> None:
        if self.window <= 0:
            raise LocalProtocolError("a DATA cell was sent on a closed window")
        self.window -= 1
        self.sent += 1
        if self.authenticated and self.sent % self.increment == 0:
            self.tags.append(tag)

    def on_sendme(self, tag: bytes) -> None:
        if self.window + self.increment > self.start:
            raise CircuitProtocolError(TeardownReason.WINDOW,
                                       f"a SENDME would open the window past {self.start}")
        if self.authenticated:
            expect = self.tags.popleft() if self.tags else b""
            if not expect or not hmac.compare_digest(expect, tag):
                raise CircuitProtocolError(TeardownReason.WINDOW, "a SENDME carries the wrong tag")
        self.window += self.increment


class RecvWindow:
    def __init__(self, start: int, increment: int) -> None:
        self.start, self.increment, self.window = start, increment, start
        self.received = 0
        self.consumed = 0

    def on_received(self) -> None:
        """Count one DATA cell arriving (WINDOW error if the sender overran the window)."""
        if self.window <= 0:
            raise CircuitProtocolError(TeardownReason.WINDOW, "the sender overran the receive window")
        self.window -= 1
        self.received += 1

    def on_consumed(self) -> bool:
        """One received cell was consumed; True when a SENDME is due (the window reopens)."""
        self.consumed += 1
        if self.consumed % self.increment == 0:
            self.window += self.increment
            return True
        return False


class StreamState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"


@dataclass
class Stream:
    stream_id: int
    target: str
    state: StreamState
    send: SendWindow
    recv: RecvWindow
    queue: deque[bytes] = field(default_factory=deque)
    end_when_flushed: bool = False
    bytes_in: int = 0
    bytes_out: int = 0

    @property
    def queued(self) -> int:
        return sum(len(c) for c in self.queue)


class StreamMux:
    def __init__(self, params: FlowParams) -> None:
        self.params = params
        self.circ_send = SendWindow(params.circuit_window, params.circuit_increment, authenticated=True)
        self.circ_recv = RecvWindow(params.circuit_window, params.circuit_increment)
        self.streams: dict[int, Stream] = {}
        self._rr: deque[int] = deque()      # round robin over streams with queued data

    def add(self, stream_id: int, target: str, state: StreamState) -> Stream:
        p = self.params
        s = Stream(stream_id, target, state, SendWindow(p.stream_window, p.stream_increment, False),
                   RecvWindow(p.stream_window, p.stream_increment))
        self.streams[stream_id] = s
        return s

    def remove(self, stream_id: int) -> Stream | None:
        return self.streams.pop(stream_id, None)

    def queue(self, stream_id: int, data: bytes) -> None:
        s = self.streams[stream_id]
        for i in range(0, len(data), MAX_DATA):
            s.queue.append(data[i:i + MAX_DATA])
        if s.queue and stream_id not in self._rr:
            self._rr.append(stream_id)

    def queued_bytes(self, stream_id: int) -> int:
        s = self.streams.get(stream_id)
        return s.queued if s else 0

    def next_data(self) -> RelayMsg | None:
        """The next DATA message the windows allow (round robin over open streams), or None.
        The caller must seal it and call `sent_data(stream_id, tag)`."""
        if not self.circ_send.can_send():
            return None
        for _ in range(len(self._rr)):
            sid = self._rr[0]
            self._rr.rotate(-1)
            s = self.streams.get(sid)
            if s is None or not s.queue:
                self._rr.remove(sid)
                continue
            if s.state is not StreamState.OPEN or not s.send.can_send():
                continue
            chunk = s.queue.popleft()
            if not s.queue:
                self._rr.remove(sid)
            return RelayMsg(RelayCommand.DATA, sid, chunk)
        return None

    def sent_data(self, stream_id: int, size: int, tag: bytes) -> None:
        self.circ_send.on_sent(tag)
        s = self.streams.get(stream_id)
        if s is not None:
            s.send.on_sent(tag)
            s.bytes_out += size

    def flushed_ends(self) -> list[int]:
        """Streams whose owner asked to end them and whose queue is now empty."""
        return [sid for sid, s in self.streams.items() if s.end_when_flushed and not s.queue]

    def on_data(self, stream_id: int, data: bytes, tag: bytes) -> tuple[bool, list[RelayMsg]]:
        """Count a DATA cell: (deliver it?, circuit SENDME due). The circuit window is
        credited on arrival (as in Tor), the stream window only when the owner says the data
        was consumed (`on_consumed`), so a slow local reader holds the sender back and a sender
        that ignores the window is caught. Data for an unknown stream (one just ended: a normal
        race) still counts on the circuit window and is not delivered."""
        out: list[RelayMsg] = []
        self.circ_recv.on_received()
        if self.circ_recv.on_consumed():
            out.append(RelayMsg(RelayCommand.SENDME, 0, sendme_data(tag)))
        s = self.streams.get(stream_id)
        if s is None:
            return False, out
        s.recv.on_received()
        s.bytes_in += len(data)
        return True, out

    def on_consumed(self, stream_id: int) -> RelayMsg | None:
        """The data of one DATA cell of the stream was consumed: the stream SENDME, if due."""
        s = self.streams.get(stream_id)
        if s is not None and s.recv.consumed < s.recv.received and s.recv.on_consumed():
            return RelayMsg(RelayCommand.SENDME, stream_id)
        return None

    def on_sendme(self, stream_id: int, data: bytes) -> None:
        tag = parse_sendme(data)
        if stream_id == 0:
            if not tag:
                raise CircuitProtocolError(TeardownReason.WINDOW, "a circuit SENDME without a tag")
            self.circ_send.on_sendme(tag)
            return
        s = self.streams.get(stream_id)
        if s is not None:
            s.send.on_sendme(b"")
