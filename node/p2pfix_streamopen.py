"""py-libp2p 0.8.1 fix: a stream open without scheduler hops for notifees that do nothing and
for stream semaphores that are free.

Symptom (upstream report form). Opening a stream between two idle hosts took 11 trio scheduler
iterations after node/p2pfix_tcpio.py, p2pfix_yamux.py and p2pfix_multistream.py (89 before);
on a loop whose iterations take 10 ms that is 110 ms. Tracing which task stopped where in each
of them (`trio.abc.Instrument.after_task_step` around `host.new_stream`) showed six that wait
for nothing:
- `libp2p/network/swarm.py: Swarm._notify` fans every network event out to every registered
  notifee, each in a task of its own in a nursery it then waits for. It runs for
  `opened_stream` on both ends of every new stream (`SwarmConn._add_stream`, before the opener
  starts multistream-select and before the other end's handler runs) and for `closed_stream`
  when each end closes it. A host has four notifees, and none does anything with a stream:
  `TagStoreNotifee` and `_IdentifyNotifee` return at once, `PubsubNotifee` only checkpoints
  (fognode's `SwarmNotifee`, node/swarm_events.py, returns at once too). So each stream spawned
  16 tasks across its two ends, and two waits for them sat on the open's sequential chain.
- `trio.Semaphore.acquire` yields to the scheduler even when a slot is free, and an open takes
  three: the swarm's stream semaphore (`Swarm.new_stream` on the opener,
  `SwarmConn._handle_muxed_stream` on the other end; `Swarm.set_resource_manager` makes it, with
  the resource manager's `max_streams` slots) and Yamux's `stream_backlog_semaphore`
  (`Yamux.open_stream`, 256 slots).
Reproduction: `python -m fognode.tools.bench.stream_open` (its rows under a busy loop are the
iteration count times one iteration).

Fix, with no option to do it through (the swarm is built by `new_host`; monkeypatches,
process-wide, idempotent): `install()` rebinds `Swarm._notify` to one that, for
`opened_stream` and `closed_stream` only, leaves out the notifees whose method is one of those
known to do nothing (`NOOPS`; py-libp2p's are pinned in tests/node/test_p2pfix.py, so a
py-libp2p upgrade that gives one of them work fails the pin), and fans out to the rest as
py-libp2p does (a task each, exceptions logged and isolated, all awaited); with none left it
returns at once. Every other event, and any notifee that is not a known no-op, is notified as
before. It also wraps `Swarm.set_resource_manager` so that the stream semaphore it makes is a
node/p2pfix_tcpio.py `QuickSemaphore` with the same slots (a free slot taken without a hop; a
full semaphore waits as before); node/p2pfix_yamux.py's QuickYamux does the same for its
backlog semaphore. Nothing on the wire changes. Idle, the open takes 7 iterations.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import trio
from libp2p.host.basic_host import _IdentifyNotifee
from libp2p.network.swarm import Swarm
from libp2p.network.tag_store import TagStoreNotifee
from libp2p.pubsub.pubsub_notifee import PubsubNotifee

from fognode.node.p2pfix_tcpio import QuickSemaphore
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


_original_set_resource_manager = Swarm.set_resource_manager


def _set_resource_manager(self: Swarm, *args: Any, **kwargs: Any) -> None:
    """Swarm.set_resource_manager, its stream semaphore a QuickSemaphore (module doc)."""
    _original_set_resource_manager(self, *args, **kwargs)
    if isinstance(self._stream_semaphore, trio.Semaphore):
        slots = self._stream_semaphore.value
        self._stream_semaphore = QuickSemaphore(slots)  # type: ignore[assignment]


def install() -> None:
    """Rebind Swarm._notify and Swarm.set_resource_manager (idempotent)."""
    if Swarm.__dict__.get("_notify") is not _notify:
        setattr(Swarm, "_notify", _notify)
    if Swarm.__dict__.get("set_resource_manager") is not _set_resource_manager:
        setattr(Swarm, "set_resource_manager", _set_resource_manager)
