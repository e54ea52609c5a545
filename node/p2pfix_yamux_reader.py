"""py-libp2p 0.8.1 fix: plain DATA and WINDOW_UPDATE frames handled without the per-frame
Python of Yamux's frame reader.

Symptom (upstream report form). `libp2p/stream_muxer/yamux/yamux.py: Yamux.handle_incoming`
reads each frame's header with `read_exactly(secured_conn, 12)` (a bytearray, its `bytes()`
and the session's read loop) and then, for every frame, builds a dict of type names and a list
of flag names and formats four to six debug f-strings (`self.peer_id` among their arguments)
whether or not debug logging is on, before the few lines that put a DATA frame's bytes in the
stream's buffer or add a WINDOW_UPDATE's increment to the send window. With 200-byte frames on
one stream (`python -m fognode.tools.bench.stream_msgs`, both ends in one trio loop) its own
time was 5.8 % of the CPU and the header's `read_exactly` 1.2 % more (py-spy); the ledger's
votes and certificates and every gossip RPC are such frames. Reproduction: py-spy on that
benchmark, or on the validators of `python -m fognode.tools.bench.ledger`.

Fix, without a copy of handle_incoming's 500 lines: handle_incoming reads its headers through
the name `read_exactly` of the yamux module, and nothing else in that module uses the name on a
node/p2pfix_noiseio.py `QuickNoiseSession` (node/p2pfix_yamux.py's `_read_data_body` reads
bodies from the session itself). `install()` rebinds that name to `read_header`, which for a
session whose Yamux connection registered itself (`serve(session, yamux)`, done by
node/p2pfix_yamux.py's QuickYamux) hands out only the headers handle_incoming must see, and
handles the others itself, in the order they arrive: a DATA frame without flags whose body the
session has already decrypted (a small frame comes in one Noise message with its header), and
a WINDOW_UPDATE without flags. For those it does what handle_incoming's DATA and WINDOW_UPDATE
branches do for a frame without flags (under the same locks: buffer the bytes, take them from
the receive window, a window overflow reset and reported as before, node/p2pfix_yamux_window.py;
wake the reader; finalize a closed stream; the body is copied into the
stream's buffer from a view of the decrypted message, node/p2pfix_noiseio.py `take_view`; or add the increment under the window lock), minus
the debug messages and the bookkeeping for flags it does not see. Every other frame (SYN, ACK,
FIN, RST, PING, GO_AWAY, a DATA frame whose body is not decrypted yet or is over the 16 MiB
cap) goes to handle_incoming unchanged. Once the connection is shutting down after a handled
frame, `read_header` returns a WINDOW_UPDATE of increment 0 for stream 0, which
handle_incoming ignores (no stream has id 0) before it checks the flag and stops, as it would
have before reading another header. Hosts of py-libp2p's own Yamux, and any other reader, get
py-libp2p's `read_exactly`. The bytes on the wire are unchanged. A monkeypatch (a module name
rebound), pinned with handle_incoming in tests/node/test_p2pfix.py.
"""
from __future__ import annotations

import logging
import struct
from typing import Any

import libp2p.stream_muxer.yamux.yamux as _yamux_mod
from libp2p.io.utils import read_exactly
from libp2p.stream_muxer.yamux.yamux import (HEADER_SIZE, MAX_WINDOW_SIZE, TYPE_DATA,
                                             TYPE_WINDOW_UPDATE, YAMUX_HEADER_FORMAT)

from fognode.node.p2pfix_noiseio import QuickNoiseSession

log = logging.getLogger("fognode.host")

_HEADER = struct.Struct(YAMUX_HEADER_FORMAT)
# handle_incoming's no-op: a WINDOW_UPDATE without flags for stream 0, which no stream has
_NOOP = _HEADER.pack(0, TYPE_WINDOW_UPDATE, 0, 0, 0)



def serve(session: QuickNoiseSession, yamux: Any) -> None:
    """Let `read_header` handle plain frames of `yamux`, whose secured connection is
    `session` (called by QuickYamux when it is built)."""
    session.muxer = yamux


async def read_header(reader: Any, n: int, retry_count: int = 100) -> bytes:
    """Stands in for `read_exactly` in py-libp2p's yamux module (module doc)."""
    if n != HEADER_SIZE or type(reader) is not QuickNoiseSession:
        return await read_exactly(reader, n, retry_count)
    yamux = reader.muxer
    if yamux is None:
        return await read_exactly(reader, n, retry_count)
    handled = False
    while True:
        if handled and yamux.event_shutting_down.is_set():
            return _NOOP
        header = reader.take(HEADER_SIZE)
        if header is None:
            header = await reader.read(HEADER_SIZE)   # all 12, or fewer at the end only
            if len(header) < HEADER_SIZE:       # read_exactly's next read, as it would
                header += await read_exactly(reader, HEADER_SIZE - len(header), retry_count)
        version, typ, flags, stream_id, length = _HEADER.unpack(header)
        if flags or version:
            return header
        if typ == TYPE_DATA:
            if length == 0 or length > MAX_WINDOW_SIZE:
                return header
            body = reader.take_view(length)     # copied once, into the stream's buffer
            if body is None:
                return header       # handle_incoming reads it (QuickYamux._read_data_body)
            await _data(yamux, stream_id, body)
        elif typ == TYPE_WINDOW_UPDATE:
            await _window_update(yamux, stream_id, length)
        else:
            return header
        handled = True


async def _data(yamux: Any, stream_id: int, data: bytes | memoryview) -> None:
    """handle_incoming's DATA branch for a frame without flags."""
    async with yamux.streams_lock:
        stream = yamux.streams.get(stream_id)
        if stream is None:
            return
        yamux.stream_buffers[stream_id].extend(data)
        stream.recv_window -= len(data)         # below 0: p2pfix_yamux_window resets, reports
        if stream.recv_window < 0:
            log.debug("yamux: stream %d: peer exceeded the receive window by %d bytes",
                      stream_id, -stream.recv_window)
            stream.recv_window = 0
        yamux.stream_events[stream_id].set()
        if stream.closed:
            yamux._finalize_stream_locked(stream, fully_closed=True)


async def _window_update(yamux: Any, stream_id: int, increment: int) -> None:
    """handle_incoming's WINDOW_UPDATE branch for a frame without flags."""
    async with yamux.streams_lock:
        stream = yamux.streams.get(stream_id)
        if stream is None:
            return
        async with stream.window_lock:
            stream.send_window += increment
        if stream.closed:
            yamux._finalize_stream_locked(stream, fully_closed=True)


def install() -> None:
    """Rebind `read_exactly` in libp2p.stream_muxer.yamux.yamux (idempotent)."""
    setattr(_yamux_mod, "read_exactly", read_header)
