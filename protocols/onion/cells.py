"""Fixed-size cells: the link format between neighbours and the relay messages inside.

Cell size: 4096 bytes (Tor's is 514). In Tor a cell is small because it rides a TLS stream
where one more cell costs only its bytes. Here every write to a libp2p stream is a Yamux frame
inside a Noise frame and a trip through py-libp2p's Python layers: measured, one stream moves
16 MB/s with 4 KiB writes and 190-280 MB/s with 1 MiB writes (notes/py-libp2p-0.8.1.md), i.e.
about 0.25 ms per write whatever its size up to a few KiB. The link writer coalesces queued
cells into one write (linkmgr.py), so that cost is per batch, not per cell; what stays per cell
is the cores' Python work and the crypto calls. 4096 bytes puts 4066 bytes of payload in each
DATA cell (99.3 %), still fits a whole HTTP request or a DHT-sized message in one cell, and
keeps the cost of padding bounded: a small message wastes at most 4 KiB and a constant-rate
padding circuit at 10 cells/s costs 40 KiB/s. Measured in session 22 on the 5-daemon benchmark
(tools/bench/onion.py's CPU per MB; one run each, back to back, at load 21 and 19): 16 KiB cells (windows scaled to the
same bytes) cost 151 CPU ms per MB across the daemons against 145 for 4 KiB cells, i.e. no
gain, once the relay crypto stopped building a cipher per cell (relay_crypto.py): the per-cell
work is no longer what a byte costs, and larger cells would quadruple both padding costs. At
514 bytes the per-cell work would be eight times as many calls per byte (tools/bench/onion_cells.py
measures both sizes). The size is part of the protocol: every relay must use the same one.

Link cell (CELL_SIZE bytes): circ_id u32 | command u8 | body (BODY_LEN bytes, padded with
random bytes). On a stream each cell is framed by a u16 length that must equal CELL_SIZE, so
a short or oversize cell is skipped whole and the stream stays in step (`CellFramer`).

Relay message (the plaintext inside a RELAY cell's innermost layer, PLAIN_LEN bytes):
command u8 | stream_id u16 | length u16 | nonce 4 random bytes | data | random padding.
The nonce makes every cell's authentication tag unpredictable to its receiver even when the
data is known, so an authenticated SENDME proves the cell was received (Tor proposal 289).

Decoders are strict: anything else raises `CellError` naming the field, never another error.
"""
from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass

from fognode.protocols.onion.errors import DESTROY_CODES, DESTROY_REASONS, CellError, TeardownReason

CELL_SIZE = 4096
HEADER_LEN = 5                     # circ_id u32 + command u8
BODY_LEN = CELL_SIZE - HEADER_LEN  # 4091
TAG_LEN = 16                       # Poly1305 tag of the innermost layer
PLAIN_LEN = BODY_LEN - TAG_LEN     # 4075: relay message plaintext
RELAY_HEADER_LEN = 9               # command u8, stream_id u16, length u16, nonce 4
MAX_DATA = PLAIN_LEN - RELAY_HEADER_LEN   # 4066
FRAME_LEN = 2 + CELL_SIZE
RUN_MAX = 16                       # cells in one RelayRun at most (64 KiB): see RelayRun
MAX_CIRC_ID = 0xFFFFFFFF
MAX_STREAM_ID = 0xFFFF
NTOR_ONIONSKIN_LEN = 96            # relay identity 32 | onion key 32 | client ephemeral 32
NTOR_REPLY_LEN = 64                # relay ephemeral 32 | AUTH 32
HANDSHAKE_NTOR = 1
MAX_TARGET_LEN = 255
MAX_PEER_ID_LEN = 128


class CellCommand(enum.IntEnum):
    PADDING = 0      # link padding: the neighbour drops it
    CREATE = 1
    CREATED = 2
    RELAY = 3
    DESTROY = 4


class RelayCommand(enum.IntEnum):
    BEGIN = 1
    DATA = 2
    END = 3
    CONNECTED = 4
    SENDME = 5
    EXTEND = 6
    EXTENDED = 7
    DROP = 8                 # long-range padding: the hop it is addressed to drops it
    PADDING_NEGOTIATE = 9    # ask the last hop for constant-rate padding back (padding.py)
    # meeting points for hidden services (rendezvous.py): the relay-side mechanics only
    ESTABLISH_INTRO = 10     # service -> its introduction point: auth key | signature
    INTRO_ESTABLISHED = 11
    INTRODUCE1 = 12          # client -> introduction point: auth key | opaque payload for the service
    INTRODUCE2 = 13          # introduction point -> service: the payload
    INTRODUCE_ACK = 14       # introduction point -> client: status u8 (0 delivered, 1 unknown service)
    ESTABLISH_RENDEZVOUS = 15    # client -> rendezvous point: cookie (20 bytes)
    RENDEZVOUS_ESTABLISHED = 16
    RENDEZVOUS1 = 17         # service -> rendezvous point: cookie | opaque payload (handshake reply)
    RENDEZVOUS2 = 18         # rendezvous point -> client: the payload; the two circuits are joined


class _RandomPool:
    """os.urandom read 64 KiB at a time: one getrandom call costs 1-40 us whatever its size
    (the most under load), and most cells want only a few random bytes. Bytes are handed out
    once each, never reused."""

    CHUNK = 65536

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        if n > self.CHUNK // 4:
            return os.urandom(n)
        if self._pos + n > len(self._buf):
            self._buf, self._pos = os.urandom(self.CHUNK), 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out


random_bytes = _RandomPool().take


def _pad(data: bytes, size: int) -> bytes:
    return data + random_bytes(size - len(data)) if len(data) < size else data


@dataclass(frozen=True)
class Cell:
    circ_id: int
    command: CellCommand
    body: bytes

    def encode(self) -> bytes:
        if not 0 <= self.circ_id <= MAX_CIRC_ID:
            raise ValueError(f"circ_id {self.circ_id} out of range")
        if len(self.body) > BODY_LEN:
            raise ValueError(f"cell body of {len(self.body)} bytes exceeds {BODY_LEN}")
        return _CELL_HEAD.pack(self.circ_id, self.command) + _pad(self.body, BODY_LEN)

    def frame(self) -> bytes:
        """The cell with its u16 length prefix, as written on a relay stream."""
        if len(self.body) == BODY_LEN and 0 <= self.circ_id <= MAX_CIRC_ID:   # a RELAY cell: no padding
            return _FRAME_HEAD.pack(CELL_SIZE, self.circ_id, self.command) + self.body
        return _LEN.pack(CELL_SIZE) + self.encode()


_LEN = struct.Struct(">H")
_CELL_HEAD = struct.Struct(">IB")
_FRAME_HEAD = struct.Struct(">HIB")
_COMMANDS: dict[int, CellCommand] = {int(c): c for c in CellCommand}


def _decode_at(data: bytes | bytearray, start: int) -> Cell:
    """The link cell at data[start:start + CELL_SIZE] (the caller checked the length)."""
    circ_id, cmd = _CELL_HEAD.unpack_from(data, start)
    command = _COMMANDS.get(cmd)
    if command is None:
        raise CellError(f"command: unknown cell command {cmd}")
    if circ_id == 0 and command is not CellCommand.PADDING:
        raise CellError(f"circ_id: 0 is only for PADDING, got a {command.name} cell")
    return Cell(circ_id, command, bytes(data[start + HEADER_LEN:start + CELL_SIZE]))


def decode_cell(data: bytes) -> Cell:
    """A link cell from exactly CELL_SIZE bytes (CellError otherwise)."""
    if len(data) != CELL_SIZE:
        raise CellError(f"cell is {len(data)} bytes, want {CELL_SIZE}")
    return _decode_at(data, 0)


@dataclass(frozen=True, slots=True)
class RelayRun:
    """`count` RELAY cells of one circuit that came back to back in one link frame, their
    bodies concatenated (`count` x BODY_LEN bytes). Most of a busy link's cells come so (a
    neighbour's link write carries a burst of one circuit's cells): the cores forward or open
    a run with one keystream update per layer and one framed write (`frame_relay_cells`)
    instead of one object, one cipher call and one write per cell. `cells()` splits it.

    A run holds at most RUN_MAX (16) cells: a middle relay passes a 64-cell frame on at about
    2 us of CPU per cell in runs of 16, against 4.8 cell by cell and 5.3 in runs of 64
    (tools/bench/onion_cells.py, "middle relay" rows): buffers of 256 KiB and more cost more
    than the calls they save (glibc serves them from fresh pages past its mmap threshold)."""

    circ_id: int
    bodies: bytes
    count: int

    def body(self, i: int) -> bytes:
        return self.bodies[i * BODY_LEN:(i + 1) * BODY_LEN]

    def cells(self) -> list[Cell]:
        return [Cell(self.circ_id, CellCommand.RELAY, self.body(i)) for i in range(self.count)]


def frame_relay_cells(circ_id: int, bodies: bytes, count: int) -> bytes:
    """`count` RELAY cells on `circ_id` with these bodies (back to back), each framed as
    `Cell.frame()` frames it: what one `SendCells` writes."""
    head = _FRAME_HEAD.pack(CELL_SIZE, circ_id, CellCommand.RELAY)
    if count == 1:
        return head + bodies
    mv = memoryview(bodies)
    parts: list[bytes | memoryview] = []
    for i in range(0, count * BODY_LEN, BODY_LEN):
        parts.append(head)
        parts.append(mv[i:i + BODY_LEN])
    return b"".join(parts)


def _length_error(n: int) -> CellError:
    return CellError(f"length: a {'short' if n < CELL_SIZE else 'oversize'} cell of {n} bytes, want {CELL_SIZE}")


class CellFramer:
    """Splits a relay stream into cells: `feed(bytes)` returns the cells completed, and a
    CellError for each frame that was short, oversize or did not decode (that frame is skipped
    whole; the stream stays in step). Buffers at most one frame (64 KiB). A link frame of many
    cells is parsed in place, each cell copied out once (no buffer shifting per cell).
    `feed_runs` is the same with consecutive RELAY cells of one circuit as one `RelayRun`."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def _take(self, data: bytes) -> bytes | bytearray:
        if self._buf:
            self._buf += data
            return self._buf
        return data

    def _keep(self, view: bytes | bytearray, pos: int) -> None:
        self._buf = bytearray(view[pos:]) if pos < len(view) else bytearray()

    def feed(self, data: bytes) -> list[Cell | CellError]:
        view = self._take(data)
        end = len(view)
        pos = 0
        out: list[Cell | CellError] = []
        while end - pos >= 2:
            (n,) = _LEN.unpack_from(view, pos)
            if end - pos - 2 < n:
                break
            start, pos = pos + 2, pos + 2 + n
            if n != CELL_SIZE:
                out.append(_length_error(n))
                continue
            try:
                out.append(_decode_at(view, start))
            except CellError as e:
                out.append(e)
        self._keep(view, pos)
        return out

    def feed_runs(self, data: bytes) -> list[Cell | RelayRun | CellError]:
        """As `feed`, but each maximal sequence of RELAY cells of one circuit is one RelayRun
        (their bodies copied out once, together); every other cell is a Cell. Order kept."""
        view = self._take(data)
        end = len(view)
        pos = 0
        out: list[Cell | RelayRun | CellError] = []
        mv = memoryview(view)
        run_id = -1
        parts: list[memoryview] = []
        relay = int(CellCommand.RELAY)
        while end - pos >= 2:
            (n,) = _LEN.unpack_from(view, pos)
            if end - pos - 2 < n:
                break
            start, pos = pos + 2, pos + 2 + n
            if n == CELL_SIZE:
                circ_id, cmd = _CELL_HEAD.unpack_from(view, start)
                if cmd == relay and circ_id:
                    if (circ_id != run_id or len(parts) >= RUN_MAX) and parts:
                        out.append(RelayRun(run_id, b"".join(parts), len(parts)))
                        parts = []
                    run_id = circ_id
                    parts.append(mv[start + HEADER_LEN:start + CELL_SIZE])
                    continue
            if parts:
                out.append(RelayRun(run_id, b"".join(parts), len(parts)))
                parts = []
            if n != CELL_SIZE:
                out.append(_length_error(n))
                continue
            try:
                out.append(_decode_at(view, start))
            except CellError as e:
                out.append(e)
        if parts:
            out.append(RelayRun(run_id, b"".join(parts), len(parts)))
            parts = []
        mv.release()
        self._keep(view, pos)
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)


# -- link cell bodies ------------------------------------------------------------------------

def create_body(onionskin: bytes) -> bytes:
    return struct.pack(">HH", HANDSHAKE_NTOR, len(onionskin)) + onionskin


def parse_create(body: bytes) -> bytes:
    """The ntor onionskin of a CREATE body (or of an EXTEND's handshake part)."""
    if len(body) < 4:
        raise CellError("create: body shorter than its header")
    htype, hlen = struct.unpack_from(">HH", body)
    if htype != HANDSHAKE_NTOR:
        raise CellError(f"create.htype: unknown handshake type {htype}")
    if hlen != NTOR_ONIONSKIN_LEN or len(body) < 4 + hlen:
        raise CellError(f"create.hlen: {hlen}, want {NTOR_ONIONSKIN_LEN}")
    return body[4:4 + hlen]


def created_body(reply: bytes) -> bytes:
    return struct.pack(">H", len(reply)) + reply


def parse_created(body: bytes) -> bytes:
    if len(body) < 2:
        raise CellError("created: body shorter than its header")
    (hlen,) = struct.unpack_from(">H", body)
    if hlen != NTOR_REPLY_LEN or len(body) < 2 + hlen:
        raise CellError(f"created.hlen: {hlen}, want {NTOR_REPLY_LEN}")
    return body[2:2 + hlen]


def destroy_body(reason: TeardownReason) -> bytes:
    return bytes([DESTROY_CODES[reason]])


def parse_destroy(body: bytes) -> TeardownReason:
    if not body:
        raise CellError("destroy: empty body")
    return DESTROY_REASONS.get(body[0], TeardownReason.PROTOCOL)


# -- relay messages --------------------------------------------------------------------------

@dataclass(frozen=True)
class RelayMsg:
    command: RelayCommand
    stream_id: int = 0
    data: bytes = b""

    def encode(self) -> bytes:
        """The PLAIN_LEN-byte plaintext (header, nonce, data, random padding)."""
        if len(self.data) > MAX_DATA:
            raise ValueError(f"relay data of {len(self.data)} bytes exceeds {MAX_DATA}")
        if not 0 <= self.stream_id <= MAX_STREAM_ID:
            raise ValueError(f"stream_id {self.stream_id} out of range")
        head = struct.pack(">BHH", self.command, self.stream_id, len(self.data)) + random_bytes(4)
        return _pad(head + self.data, PLAIN_LEN)


_RELAY_HEAD = struct.Struct(">BHH")
_RELAY_COMMANDS: dict[int, RelayCommand] = {int(c): c for c in RelayCommand}
_STREAM_CMDS = frozenset({RelayCommand.BEGIN, RelayCommand.DATA, RelayCommand.END, RelayCommand.CONNECTED})
_ANY_STREAM_ID = frozenset({RelayCommand.SENDME, RelayCommand.DROP})     # circuit- or stream-level


def decode_relay(plain: bytes) -> RelayMsg:
    if len(plain) != PLAIN_LEN:
        raise CellError(f"relay message is {len(plain)} bytes, want {PLAIN_LEN}")
    cmd, stream_id, length = _RELAY_HEAD.unpack_from(plain)
    command = _RELAY_COMMANDS.get(cmd)
    if command is None:
        raise CellError(f"relay.command: unknown relay command {cmd}")
    if length > MAX_DATA:
        raise CellError(f"relay.length: {length} exceeds {MAX_DATA}")
    if command in _STREAM_CMDS:
        if stream_id == 0:
            raise CellError(f"relay.stream_id: {command.name} needs a stream id")
    elif stream_id and command not in _ANY_STREAM_ID:
        raise CellError(f"relay.stream_id: {command.name} is circuit-level, got stream {stream_id}")
    return RelayMsg(command, stream_id, bytes(plain[RELAY_HEADER_LEN:RELAY_HEADER_LEN + length]))


def extend_data(peer_id: str, onionskin: bytes) -> bytes:
    pid = peer_id.encode("ascii")
    if not 0 < len(pid) <= MAX_PEER_ID_LEN:
        raise ValueError("peer id must be 1..128 ASCII characters")
    return bytes([len(pid)]) + pid + create_body(onionskin)


def parse_extend(data: bytes) -> tuple[str, bytes]:
    """(next peer id, onionskin) of an EXTEND message."""
    if not data:
        raise CellError("extend: empty")
    n = data[0]
    if not 0 < n <= MAX_PEER_ID_LEN or len(data) < 1 + n:
        raise CellError(f"extend.peer_id: length {n} out of range")
    raw = data[1:1 + n]
    if not all(0x21 <= c < 0x7F for c in raw):
        raise CellError("extend.peer_id: not printable ASCII")
    return raw.decode("ascii"), parse_create(data[1 + n:])


def begin_data(target: str) -> bytes:
    raw = target.encode("utf-8")
    if not 0 < len(raw) <= MAX_TARGET_LEN:
        raise ValueError(f"target must be 1..{MAX_TARGET_LEN} bytes of UTF-8")
    return raw


def parse_begin(data: bytes) -> str:
    """The target "host:port" of a BEGIN message."""
    if not 0 < len(data) <= MAX_TARGET_LEN:
        raise CellError(f"begin.target: {len(data)} bytes, want 1..{MAX_TARGET_LEN}")
    try:
        target = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CellError("begin.target: not UTF-8") from None
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CellError(f"begin.target: {target!r} is not host:port")
    if any(c.isspace() or not c.isprintable() for c in host):
        raise CellError("begin.target: host has spaces or control characters")
    return target


SENDME_V1 = 1


def sendme_data(tag: bytes) -> bytes:
    return bytes([SENDME_V1, len(tag)]) + tag


def parse_sendme(data: bytes) -> bytes:
    """The authentication tag of a circuit-level SENDME (b"" for a stream-level one)."""
    if not data:
        return b""
    if len(data) < 2 or data[0] != SENDME_V1 or data[1] != TAG_LEN or len(data) < 2 + TAG_LEN:
        raise CellError("sendme: want version 1 with a 16-byte tag")
    return data[2:2 + TAG_LEN]


def parse_end(data: bytes) -> TeardownReason:
    return DESTROY_REASONS.get(data[0], TeardownReason.PROTOCOL) if data else TeardownReason.NONE


def padding_negotiate_data(rate: float) -> bytes:
    return struct.pack(">I", int(round(rate * 1000)))


def parse_padding_negotiate(data: bytes) -> float:
    """The asked rate in cells per second (0: stop)."""
    if len(data) != 4:
        raise CellError("padding_negotiate: want a u32 rate in millicells/s")
    return struct.unpack(">I", data)[0] / 1000.0
