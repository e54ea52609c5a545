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

A fourth: the auto-tuning doubles a stream's window (`target_recv_window`, 256 KiB up to
`MAX_WINDOW_SIZE` = 16 MiB) whenever window updates come within 4 RTT, and nothing accounts
for it. A peer that keeps within its window can park that much on a stream nobody reads (a
handler busy between frames, or one that stopped reading), and as much again on every other
stream it had grown, until a deadline resets the stream; after our reset py-libp2p still keeps
the unread bytes for its stale-stream sweeper (60 to 90 s).
Reproduction: tests/node/test_yamux_budget.py. On a link whose RTT is 1 s, 6 streams whose
handler read 4 MiB fast and then stopped had 4 MiB windows; a host that wrote all the window
it was given parked 12.4 MiB in the victim's Yamux buffers, and
`fognode_node_stream_buffered_bytes` said 0 (on loopback growth depends on scheduling: 4
streams parked 5.5 MiB at load 22).

Fix, as go-yamux, which reserves each growth from go-libp2p's resource-manager scope and does
not grow when the reservation fails: with a budget registered for its host (`budget()`:
fognode's `ResourceGate.window_budget`, node/resources.py), `QuickYamuxStream` charges each
growth to the stream's peer, within rcmgr.WINDOW_SHARE of its and the node's buffered-bytes
budgets; what is not granted is not grown (the same test: 2.7 MiB parked, 2 MiB charged). The
charge is given back when the stream leaves its connection's table (`_StreamTable`: every path,
close, reset, sweep, connection close), and a stream we reset drops its unread bytes at once.
The auto-tuning's RTT is taken as at least `MIN_TUNING_RTT` (5 ms): the ping RTT on loopback
or a LAN is 0.1-1 ms, but a window update comes back only once a Python reader has read, so
whether a fast stream's window grew was a matter of chance (an onion link stream ran at 28-40
MB/s in some benchmark runs and 150-250 MB/s in others on a quiet machine).
A stream's initial 256 KiB is the protocol's (the peer may send it unasked) and stays
uncharged: the stream limits bound it.

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

from typing import Any, Callable, Protocol

import libp2p.stream_muxer.muxer_multistream as _muxer_multistream_mod
import libp2p.stream_muxer.yamux.yamux as _yamux_mod
import trio
from libp2p.stream_muxer.yamux.yamux import MAX_WINDOW_SIZE, Yamux, YamuxStream

from fognode.node.p2pfix_tcpio import QuickLock, is_buffered


class WindowBudget(Protocol):
    """What window growth is charged to (node/resources.py `WindowBudget`)."""

    def grow(self, peer: str, n: int) -> int: ...          # charge up to n; returns how many
    def give_back(self, peer: str, n: int) -> None: ...


_budgets: dict[str, WindowBudget] = {}    # local peer id (base58) -> its host's budget

# The auto-tuning's RTT is never taken below this. Its ping RTT is answered by the connection's
# reader task (0.1-1 ms on loopback or a LAN), but a window update waits for the application
# to read, which in a Python daemon takes milliseconds; with 4 x the ping RTT as the limit, a
# fast stream's window grew only in some runs (an onion link stream measured 28-40 MB/s at its
# 256 KiB window in some runs, 150-250 MB/s grown in others, on a quiet machine). Growth stays
# charged to the budget as before.
MIN_TUNING_RTT = 0.005


def budget(local_peer: str, b: WindowBudget) -> Callable[[], None]:
    """Charge the window growth of streams on new connections of the host `local_peer` to
    `b`; returns the function that stops it."""
    _budgets[local_peer] = b

    def unregister() -> None:
        if _budgets.get(local_peer) is b:
            del _budgets[local_peer]
    return unregister


def _local_peer(conn: Any) -> str:
    try:
        return str(conn.get_local_peer())
    except Exception:   # a connection without a secured layer (not ours)
        return ""


class _StreamTable(dict[int, Any]):
    """A connection's `streams`: a stream that leaves it gives back its window charge."""

    def _gone(self, stream: Any) -> None:
        if isinstance(stream, QuickYamuxStream):
            stream.give_back_window()

    def __delitem__(self, key: int) -> None:
        stream = self[key]
        super().__delitem__(key)
        self._gone(stream)

    def pop(self, key: int, *default: Any) -> Any:
        stream = super().pop(key, *default)
        self._gone(stream)
        return stream

    def clear(self) -> None:
        streams = list(self.values())
        super().clear()
        for stream in streams:
            self._gone(stream)


class QuickYamux(Yamux):
    """py-libp2p's Yamux with QuickLocks and one scheduler hop per frame write, and window
    growth charged to a budget (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams_lock = QuickLock()
        self._write_lock = QuickLock()
        self.streams = _StreamTable()
        self.window_budget: WindowBudget | None = _budgets.get(_local_peer(self.secured_conn))

    async def _write_frame(self, data: bytes) -> None:
        """Write one whole frame (header and body in one piece), serialising writers."""
        async with self._write_lock:
            await self.secured_conn.write(data)


class QuickYamuxStream(YamuxStream):
    """py-libp2p's YamuxStream; on a QuickYamux connection, window updates as go-yamux and
    QuickLocks for its window, close and writer locks."""

    def __init__(self, stream_id: int, conn: Any, is_initiator: bool) -> None:
        super().__init__(stream_id, conn, is_initiator)
        self.window_charged = 0      # window growth charged to the peer (QuickYamux budget)
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

    def _apply_autotune_epoch(self, buffered: int) -> int:
        """py-libp2p's auto-tuning (double the window when updates come within 4 RTT), each
        growth charged to the connection's budget and only as far as it grants."""
        conn = self.conn
        budget = conn.window_budget if isinstance(conn, QuickYamux) else None
        if budget is None:
            return super()._apply_autotune_epoch(buffered)
        rtt = max(self._effective_rtt(), MIN_TUNING_RTT)
        now = trio.current_time()
        if rtt <= 0 or (self.epoch_start > 0 and now - self.epoch_start >= rtt * 4):
            self.epoch_start = now
            return 0
        self.epoch_start = now
        want = min(self.target_recv_window * 2, MAX_WINDOW_SIZE) - self.target_recv_window
        if want <= 0 or self.closed or conn.streams.get(self.stream_id) is not self:
            return 0      # full size, or gone from the table (its charge was given back)
        got = budget.grow(str(conn.peer_id), want)
        self.window_charged += got
        self.target_recv_window += got
        grow = self.target_recv_window - (self.recv_window + buffered)
        if grow <= 0:
            return 0
        self.recv_window += grow
        return grow

    async def reset(self) -> None:
        """py-libp2p's reset; on a QuickYamux connection the unread bytes go too. py-libp2p
        keeps them (up to a whole window) for its stale-stream sweeper, 60 to 90 s later,
        though nobody reads a stream after resetting it; go-yamux frees them at once."""
        await super().reset()
        if isinstance(self.conn, QuickYamux):
            buf = self.conn.stream_buffers.get(self.stream_id)
            if buf:
                buf.clear()
                await self.conn._finalize_stream(self, fully_closed=True)

    def give_back_window(self) -> None:
        """The stream left its connection: give back the window growth charged for it."""
        budget = self.conn.window_budget if isinstance(self.conn, QuickYamux) else None
        if budget is not None and self.window_charged:
            budget.give_back(str(self.conn.peer_id), self.window_charged)
        self.window_charged = 0


def yamux_for(conn: Any, *args: Any, **kwargs: Any) -> Yamux:
    """Stands in for the name `Yamux` in py-libp2p's muxer_multistream module."""
    cls = QuickYamux if is_buffered(conn) else Yamux
    return cls(conn, *args, **kwargs)


def install() -> None:
    """Rebind `Yamux` in libp2p.stream_muxer.muxer_multistream and `YamuxStream` in
    libp2p.stream_muxer.yamux.yamux (idempotent)."""
    setattr(_muxer_multistream_mod, "Yamux", yamux_for)
    setattr(_yamux_mod, "YamuxStream", QuickYamuxStream)
