"""Yamux receive window opened ahead of a frame whose length the reader already knows.

Symptom (py-libp2p 0.8.1 and node/p2pfix_yamux.py's go-yamux-style updates). A new Yamux
stream lets its peer send 256 KiB (the protocol's initial window); after that the sender waits
for WINDOW_UPDATEs, which the receiver sends each time its reader has taken half of the target
window, and auto-tuning doubles the window at most once per update, one round trip each. A
frame of a few MB on a new stream (an FL model over 1 MiB, in 1 MiB frames; a bulk reply)
therefore waits for the link's round trip several times: 3 MB over a 20 ms RTT took 4 window
waits and 143-150 ms. Reproduction: 0.58-3 MB frames on fresh streams between two overlays
through a TCP proxy that delays each direction by 10 ms (the sender's `_wait_for_window`
calls counted). On loopback, and for one 0.58 MB frame at any RTT, it makes no difference: one
update already covers that frame (one wait, 70-74 ms at 20 ms RTT either way).

What go-yamux does: a stream's receive window starts at its configured
`InitialStreamWindowSize`, announced by the window update sent with its SYN or ACK, reserved
from go-libp2p's resource manager. An initial window that large for every stream would hold
the per-peer share of fognode's buffer budget (node/rcmgr.py WINDOW_SHARE: 2 MiB a peer) on
idle gossip and DHT streams.

Fix. node/streams.py's framed stream reads a frame's 4-byte length before its body; when the
rest of the body is more than the peer may still send (`recv_window`) by at least the
stream's update threshold, `open_ahead` grows the window at once, with one WINDOW_UPDATE, so
that the whole frame (up to MAX_WINDOW_SIZE, 16 MiB) can come without another update (3 MB at
20 ms RTT: 2 waits, 97-98 ms). The
growth is charged to the peer as auto-tuning's is (node/p2pfix_yamux.py, node/resources.py
`WindowBudget`: within WINDOW_SHARE of its budget; what is not granted is not given, and the
ordinary updates carry the rest) and given back when the stream goes. A peer only gets window
for a frame it announced and the reader accepted (its length within the stream's frame limit),
and the frame's bytes are charged to the reader's buffer account as they arrive, as before.
The bytes on the wire are a WINDOW_UPDATE as any receiver may send.
"""
from __future__ import annotations

from typing import Any

from libp2p.stream_muxer.yamux.yamux import MAX_WINDOW_SIZE

from fognode.node.p2pfix_yamux import QuickYamux, QuickYamuxStream


async def open_ahead(stream: Any, incoming: int) -> None:
    """`incoming` more bytes of a frame are coming on the QuickYamux stream `stream` (a
    QuickYamuxStream; anything else is left alone): give the peer window for them now if the
    current window is short of them by the update threshold or more (module doc)."""
    if not isinstance(stream, QuickYamuxStream):
        return
    conn = stream.conn
    if not isinstance(conn, QuickYamux) or stream.closed:
        return
    increment = 0
    await stream.window_lock.acquire()
    try:
        buffered = len(conn.stream_buffers.get(stream.stream_id, b""))
        short = min(incoming - buffered, MAX_WINDOW_SIZE) - stream.recv_window
        if short < stream._grow_threshold() or conn.streams.get(stream.stream_id) is not stream:
            return
        # recv_window + buffered stays within the target (as _auto_tune_and_send_window_update
        # assumes); growth of the target is charged to the peer
        grow = min(stream.recv_window + buffered + short, MAX_WINDOW_SIZE) \
            - stream.target_recv_window
        if grow > 0:
            budget = conn.window_budget
            if budget is not None:
                got = budget.grow(str(conn.peer_id), grow)
                stream.window_charged += got
            else:
                got = grow
            stream.target_recv_window += got
        increment = min(short, stream.target_recv_window - (stream.recv_window + buffered))
        if increment <= 0:
            return
        stream.recv_window += increment
    finally:
        stream.window_lock.release()
    await stream.send_window_update(increment, skip_lock=True)
