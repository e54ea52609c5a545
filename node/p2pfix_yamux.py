"""py-libp2p 0.8.1 fix: a yamux frame write without two extra scheduler hops.

Symptom (upstream report form). `libp2p/stream_muxer/yamux/yamux.py: Yamux._write_frame`
takes the connection's write lock (`trio.Lock`: an uncontended acquire still yields to the
scheduler), writes, and then calls `trio.lowlevel.checkpoint()` once more. The secure
connection's write below it checkpoints in `send_all` anyway, so every frame (data, window
update, SYN, FIN) costs two extra scheduler iterations on a chain that is otherwise
sequential; the connection-wide `streams_lock`, taken on every `read_stream` call and for every
incoming frame, adds one more per use. Opening one stream between two hosts spent 28 of its
task steps in `_write_frame`'s two checkpoints and 13 in `read_stream`'s lock.
Reproduction: two hosts on 127.0.0.1 in one `trio.run`, a `trio.abc.Instrument` counting
`before_io_wait` around `host.new_stream(peer, [proto])` and recording, in
`after_task_step`, where each task stopped (fognode: `python -m fognode.tools.bench.stream_open`).

Fix. `QuickYamux(Yamux)` replaces the connection's `_write_lock` and `streams_lock` with
node/p2pfix_tcpio.py's `QuickLock` (the same mutual exclusion; an uncontended acquire does not
yield, a contended one waits as before) and writes a frame without the trailing checkpoint.
The bytes on the wire are unchanged.

A third cost: `YamuxStream._auto_tune_and_send_window_update`, run after every read, sends a
WINDOW_UPDATE for nearly every read however small (its "partial slack" branch and, by
default, `PY_YAMUX_RELEASE_ON_READ=1`), and its auto-tuning doubles the window on each of
them: one stream open put 7 WINDOW_UPDATE frames on the wire (increments 2 B to 2 MiB) next to
its 4 data frames, each a Noise frame, a `send_all` and a frame for the other side to handle.
go-yamux (`Stream.sendWindowUpdate`) sends one only when the window to give back reaches half
of the target (hysteresis), auto-tuning at that moment. `QuickYamuxStream` does exactly that
for streams of a QuickYamux connection, and takes its window, close and writer locks without
a scheduler hop when they are free (QuickLock). Peers see fewer, larger window updates, as from go-yamux; the receive window
offered never shrinks below half of the target, so no sender stalls.

Installation is a monkeypatch, because the constructor option is ignored (a second upstream
bug): `new_host(muxer_opt={"/yamux/1.0.0": cls})` accepts a class, but
`libp2p/stream_muxer/muxer_multistream.py: MuxerMultistream.new_conn` builds `Yamux(...)` by
name whenever `/yamux/1.0.0` is negotiated, and Yamux builds `YamuxStream(...)` by name.
`install()` rebinds that module's `Yamux` name to `yamux_for`, which builds a QuickYamux only
for connections secured by node/p2pfix_tcpio.py's `BufferingNoise` (fognode's hosts; it marks
them) and py-libp2p's Yamux for any other host in the process, and rebinds `YamuxStream` in
libp2p.stream_muxer.yamux.yamux to `QuickYamuxStream`, which behaves as py-libp2p's stream
unless its connection is a QuickYamux.
"""
from __future__ import annotations

from typing import Any

import libp2p.stream_muxer.muxer_multistream as _muxer_multistream_mod
import libp2p.stream_muxer.yamux.yamux as _yamux_mod
import trio
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

from fognode.node.p2pfix_tcpio import QuickLock, is_buffered


class QuickYamux(Yamux):
    """py-libp2p's Yamux with QuickLocks and one scheduler hop per frame write (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams_lock = QuickLock()
        self._write_lock = QuickLock()

    async def _write_frame(self, data: bytes) -> None:
        """Write one whole frame (header and body in one piece), serialising writers."""
        async with self._write_lock:
            await self.secured_conn.write(data)


class QuickYamuxStream(YamuxStream):
    """py-libp2p's YamuxStream; on a QuickYamux connection, window updates as go-yamux and
    QuickLocks for its window, close and writer locks."""

    def __init__(self, stream_id: int, conn: Any, is_initiator: bool) -> None:
        super().__init__(stream_id, conn, is_initiator)
        if isinstance(conn, QuickYamux):
            self.window_lock = QuickLock()
            self.close_lock = QuickLock()
            # ReadWriteLock's writer semaphore (released by whichever reader leaves last)
            self.rw_lock._writer_lock = QuickLock(trio.Semaphore(1))

    async def _auto_tune_and_send_window_update(self, *, bytes_read: int = 0) -> None:
        if not isinstance(self.conn, QuickYamux):
            await super()._auto_tune_and_send_window_update(bytes_read=bytes_read)
            return
        await self.window_lock.acquire()
        try:
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            delta = self.target_recv_window - (self.recv_window + buffered)
            if delta <= 0 or delta < self._grow_threshold():
                return
            increment = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
        finally:
            self.window_lock.release()
        if increment > 0:
            await self.send_window_update(increment, skip_lock=True)


def yamux_for(conn: Any, *args: Any, **kwargs: Any) -> Yamux:
    """Stands in for the name `Yamux` in py-libp2p's muxer_multistream module."""
    cls = QuickYamux if is_buffered(conn) else Yamux
    return cls(conn, *args, **kwargs)


def install() -> None:
    """Rebind `Yamux` in libp2p.stream_muxer.muxer_multistream and `YamuxStream` in
    libp2p.stream_muxer.yamux.yamux (idempotent)."""
    setattr(_muxer_multistream_mod, "Yamux", yamux_for)
    setattr(_yamux_mod, "YamuxStream", QuickYamuxStream)
