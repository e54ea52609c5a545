"""py-libp2p 0.8.1 fix: finding a new task's parent without scanning every task of the service.

Symptom (upstream report form). `libp2p/tools/anyio_service/trio_manager.py:
TrioManager.run_task` calls `_find_parent_task(trio.lowlevel.current_task())`, which walks
the service's whole task tree (`FunctionTask.iterate_tasks` over `_root_tasks`, recursively)
looking for the FunctionTask running in the calling trio task. `Pubsub.continuously_read_stream`
calls `run_task(push_msg, ...)` once per message of every RPC it reads, from a stream-handler
task that is not in the tree at all, so every message pays a full scan: O(tasks alive) per
message, O(n^2) for a burst. During a gossip flood (a 50-message RPC every 25 ms, each
message's task alive until its relaying is written) `_find_parent_task` and `iterate_tasks`
were 22 % of the victim daemon's py-spy samples. Reproduction: a Pubsub service with a few
hundred tasks alive (e.g. a slow async validator), then RPCs of 50 messages; profile
`run_task` (fognode: `python -m fognode.tools.bench.attack --only gap_bomb` under py-spy).

Fix. Each FunctionTask is entered in a map from its trio task when its `run` starts (the
moment py-libp2p sets `trio_task`, which the scan compares) and removed when `run` ends;
`_find_parent_task` looks the caller up there, and returns it only if it belongs to this
manager's tree (its parent chain ends at one of this manager's root tasks), as the scan
would. O(depth) instead of O(tasks). There is no option to replace either method (the manager
is built by `background_trio_service`), so `install()` rebinds `FunctionTask.run` and
`TrioManager._find_parent_task` (a monkeypatch, process-wide, idempotent).
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

import trio
from libp2p.tools.anyio_service.trio_manager import TrioManager
from libp2p.tools.anyio_service.trio_tasks import FunctionTask

_RUNNING: dict[trio.lowlevel.Task, FunctionTask] = {}   # trio task -> the FunctionTask in it
ORIGINAL_RUN: Callable[[FunctionTask], Awaitable[None]] = FunctionTask.run
ORIGINAL_FIND_PARENT = TrioManager._find_parent_task      # the scan (kept for the tests)


async def _run(self: FunctionTask) -> None:
    me = trio.lowlevel.current_task()
    _RUNNING[me] = self
    try:
        await ORIGINAL_RUN(self)
    finally:
        if _RUNNING.get(me) is self:
            del _RUNNING[me]


def _find_parent_task(self: TrioManager, trio_task: trio.lowlevel.Task) -> Any:
    """The FunctionTask of this manager running in `trio_task`, or None (a new root)."""
    task = _RUNNING.get(trio_task)
    if task is None:
        return None
    root: Any = task
    while root.parent is not None:
        root = root.parent
    return task if root in self._root_tasks else None


def install() -> None:
    """Rebind FunctionTask.run and TrioManager._find_parent_task (idempotent)."""
    if getattr(FunctionTask.run, "__name__", "") != "_run":
        setattr(FunctionTask, "run", _run)
    setattr(TrioManager, "_find_parent_task", _find_parent_task)
