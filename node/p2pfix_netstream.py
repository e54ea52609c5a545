"""py-libp2p 0.8.1 fix: a NetStream's state lock without a scheduler hop when it is free.

Symptom (upstream report form). `libp2p/network/stream/net_stream.py: NetStream` takes
`self._state_lock` (a `trio.Lock`) around the state check at the start of every `read` and
`write`, and in `set_state`. The lock guards a few lines of synchronous code, yet an
uncontended `trio.Lock.acquire` yields to the scheduler, so every read and write of every
stream costs one more scheduler iteration before it reaches the muxer. After the other fixes
of node/p2pfix_*.py, 12 of the 25 iterations of a stream open between two hosts on
127.0.0.1 were NetStream's lock. Reproduction: two hosts in one `trio.run`, a
`trio.abc.Instrument` counting `before_io_wait` around `host.new_stream(peer, [proto])` and
noting in `after_task_step` where each task stopped
(fognode: `python -m fognode.tools.bench.stream_open`).

Fix. `QuickNetStream(NetStream)` gives streams of a node/p2pfix_yamux.py `QuickYamux`
connection node/p2pfix_tcpio.py's `QuickLock` (the same mutual exclusion; an uncontended
acquire does not yield, a contended one waits). Streams of any other connection keep
py-libp2p's lock. NetStream is built by name in
`libp2p/network/connection/swarm_connection.py: SwarmConn._add_stream` with no option to
replace it, so `install()` rebinds that module's `NetStream` name (a monkeypatch).
"""
from __future__ import annotations

from typing import Any

import libp2p.network.connection.swarm_connection as _swarm_connection_mod
from libp2p.network.stream.net_stream import NetStream

from fognode.node.p2pfix_tcpio import QuickLock
from fognode.node.p2pfix_yamux import QuickYamux


class QuickNetStream(NetStream):
    """NetStream whose state lock is a QuickLock on QuickYamux connections."""

    def __init__(self, muxed_stream: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(muxed_stream, *args, **kwargs)
        if isinstance(getattr(muxed_stream, "muxed_conn", None), QuickYamux):
            self._state_lock = QuickLock()


def install() -> None:
    """Rebind `NetStream` in libp2p.network.connection.swarm_connection (idempotent)."""
    setattr(_swarm_connection_mod, "NetStream", QuickNetStream)
