"""py-libp2p 0.8.1 fix: a Yamux stream whose peer writes past our receive window is reset and
the peer charged, instead of having its bytes buffered without bound.

Symptom (upstream report form), libp2p==0.8.1 pinned:
`libp2p/stream_muxer/yamux/yamux.py: Yamux.handle_incoming` appends every DATA frame of a
stream to `stream_buffers[stream_id]` and then subtracts its length from the stream's
`recv_window`; when that goes below zero it logs "peer exceeded receive window" (at WARNING,
on a logger fognode silences) and sets the window to 0, keeping the bytes. The same happens
for data carried by a SYN or ACK frame. A peer that ignores the window it was given (256 KiB
per stream) can thus make a host hold as much as it writes while the stream's reader is slow
or idle: one frame may carry 16 MiB and frames may follow without end. go-yamux answers the
same thing with ErrRecvWindowExceeded and closes the session.
Reproduction: a py-libp2p host opens a stream to a handler that does not read, sets its
stream's `send_window` to 1 GiB and writes 4 MiB; the receiver held all 4 MiB in the stream's
buffer (tests/node/test_yamux_window.py).

Fix. `install()` puts a data descriptor on `YamuxStream.recv_window` (so it also holds for
any subclass, such as node/p2pfix_yamux.py's, and needs no copy of handle_incoming): the moment
a frame drives the window below zero, the stream's buffered bytes are dropped, the stream is
marked reset (its reader gets StreamReset; the muxer's own clean-up then forgets it and
discards later frames for it), an RST frame is sent to the peer, and the peer is reported to
the callback that the local host registered with `watch()` (fognode: a rate-limited WARNING,
`fognode_node_remote_protocol_errors_total{protocol="/yamux/1.0.0"}` and a penalty). A peer that
keeps within the window, as every conforming implementation does, is never touched: the window
is only ever increased by the amount a WINDOW_UPDATE gives back, on both sides.
Limits: the frame that overflows has been read whole before the check (at most 16 MiB, 0.8.1's
cap per frame), so that much is held briefly; hosts that never called `watch()` get the reset
but report to nobody.
"""
from __future__ import annotations

import logging
import struct
from typing import Any, Callable

from libp2p.stream_muxer.yamux.yamux import (FLAG_RST, TYPE_WINDOW_UPDATE, YAMUX_HEADER_FORMAT,
                                             YamuxStream)

from fognode.node.faults import RemoteFaults

log = logging.getLogger("fognode.host")

PROTOCOL = "/yamux/1.0.0"

Report = Callable[[str, int], None]       # (remote peer id, bytes written past the window)
_watchers: dict[str, Report] = {}         # local peer id -> its host's report


def report_to(faults: RemoteFaults) -> Report:
    """A `watch` report that hands the overflow to node/faults.py: a rate-limited WARNING,
    fognode_node_remote_protocol_errors_total{protocol="/yamux/1.0.0"} and a penalty."""
    return lambda peer, excess: faults.report(
        peer, PROTOCOL, f"wrote {excess} bytes past a stream's receive window; stream reset")


def watch(local_peer: str, report: Report) -> Callable[[], None]:
    """Send the overflows on connections of the host `local_peer` (base58) to `report`;
    returns the function that stops it."""
    _watchers[local_peer] = report

    def unwatch() -> None:
        if _watchers.get(local_peer) is report:
            del _watchers[local_peer]
    return unwatch


class _RecvWindow:
    """`YamuxStream.recv_window`: stored as py-libp2p stores it; a negative value is a
    peer's overflow (module doc)."""

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        d = obj.__dict__
        # a stream made before install() keeps its plain attribute
        return d["_fognode_recv_window"] if "_fognode_recv_window" in d else d["recv_window"]

    def __set__(self, obj: Any, value: int) -> None:
        obj.__dict__["_fognode_recv_window"] = value
        if value < 0:
            _overflow(obj, -value)


def _overflow(stream: Any, excess: int) -> None:
    """Called synchronously by handle_incoming, which holds the connection's streams lock and
    goes on using the stream afterwards: only flags and buffers are changed here; the RST is
    written by a task of the connection."""
    conn = stream.conn
    buf = conn.stream_buffers.get(stream.stream_id)
    if buf is not None:
        buf.clear()
    first = not stream.__dict__.get("_fognode_overflowed", False)
    stream.__dict__["_fognode_overflowed"] = True
    was_closed = stream.closed
    stream.closed = stream.send_closed = stream.recv_closed = True
    stream.reset_received = True
    event = conn.stream_events.get(stream.stream_id)
    if event is not None:
        event.set()
    if not first:
        return
    peer = str(conn.peer_id)
    if not was_closed and conn._nursery is not None:
        conn._nursery.start_soon(_send_rst, conn, stream.stream_id)
    report = _watchers.get(_local_peer(conn))
    if report is not None:
        report(peer, excess)
    else:
        log.debug("yamux: peer %s wrote %d bytes past the receive window; stream reset",
                  peer, excess)


async def _send_rst(conn: Any, stream_id: int) -> None:
    try:
        await conn._write_frame(struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_WINDOW_UPDATE,
                                            FLAG_RST, stream_id, 0))
    except Exception:   # the connection is going away: nothing to tell the peer
        pass


def _local_peer(conn: Any) -> str:
    try:
        return str(conn.secured_conn.get_local_peer())
    except Exception:   # a connection without a secured layer (not ours)
        return ""


def install() -> None:
    """Put the window check on YamuxStream (idempotent)."""
    if not isinstance(YamuxStream.__dict__.get("recv_window"), _RecvWindow):
        setattr(YamuxStream, "recv_window", _RecvWindow())
