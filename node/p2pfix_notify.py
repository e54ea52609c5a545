"""py-libp2p 0.8.1 fix: a stream open or close without a task per notifee that does nothing.

Symptom (upstream report form). `libp2p/network/swarm.py: Swarm._notify` fans every network
event out to every registered notifee, each in a task of its own in a nursery it then waits
for. It runs for `opened_stream` on both ends of every new stream (`SwarmConn._add_stream`,
before the opener starts multistream-select and before the other end's handler runs) and for
`closed_stream` when each end closes it. A host has four notifees, and none of them does
anything with a stream: `TagStoreNotifee` and `_IdentifyNotifee` return at once, and
`PubsubNotifee` only checkpoints (fognode's `SwarmNotifee`, node/swarm_events.py, returns at
once too). So each stream open and close spawned 16 tasks across its two ends, and the opener's
and the handler's wait for theirs put two scheduler iterations on the open's sequential chain:
a stream open between two idle hosts took 11 iterations (`python -m
fognode.tools.bench.stream_open`, whose rows under a busy loop are that count times one
iteration). Reproduction: that benchmark, or py-spy on `python -m
fognode.tools.bench.stream_bulk --fresh` (`Swarm._notify` and the task spawns).

Fix. `install()` rebinds `Swarm._notify` (there is no option: the swarm is built by
`new_host`; a monkeypatch, process-wide, idempotent) to one that, for `opened_stream` and
`closed_stream` only, leaves out the notifees whose method is one of those known to do
nothing (`NOOPS`; py-libp2p's are pinned in tests/node/test_p2pfix.py, so a py-libp2p upgrade
that gives them work fails the pin), and fans out to the rest as py-libp2p does (a task each,
exceptions logged and isolated, all awaited); with none left it returns at once. Every other
event, and any notifee that is not a known no-op, is notified as before. Nothing on the wire
changes.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import trio
from libp2p.host.basic_host import _IdentifyNotifee
from libp2p.network.swarm import Swarm
from libp2p.network.tag_store import TagStoreNotifee
from libp2p.pubsub.pubsub_notifee import PubsubNotifee

from fognode.node.swarm_events import SwarmNotifee

log = logging.getLogger("libp2p.network.swarm")

# The stream notifications each listed method ignores (py-libp2p 0.8.1's, pinned, and ours)
NOOPS: dict[str, frozenset[Callable[..., Any]]] = {
    method: frozenset(getattr(cls, method) for cls in
                      (TagStoreNotifee, _IdentifyNotifee, PubsubNotifee, SwarmNotifee))
    for method in ("opened_stream", "closed_stream")
}

_original_notify = Swarm._notify


async def _notify(self: Swarm, method: str, *args: Any) -> None:
    """Swarm._notify without the notifees that ignore a stream's open or close (module doc)."""
    noops = NOOPS.get(method)
    if noops is None:
        await _original_notify(self, method, *args)
        return
    rest = [n for n in self.notifees if getattr(type(n), method, None) not in noops]
    if not rest:
        return

    async def call(n: Any) -> None:
        try:
            await getattr(n, method)(self, *args)
        except Exception:       # as py-libp2p: a notifee's failure is logged and isolated
            log.exception("Notifee %s.%s raised", type(n).__name__, method)

    async with trio.open_nursery() as nursery:
        for n in rest:
            nursery.start_soon(call, n)


def install() -> None:
    """Rebind Swarm._notify (idempotent)."""
    if Swarm.__dict__.get("_notify") is not _notify:
        setattr(Swarm, "_notify", _notify)
