"""node/p2pfix_tasks.py: py-libp2p's service manager finds a new task's parent by a map look-up
that answers what its task-tree scan answers, and the functions it replaces are pinned."""
from __future__ import annotations

import hashlib
import inspect
from typing import cast

import trio
from libp2p.tools.anyio_service import Service, background_trio_service
from libp2p.tools.anyio_service.trio_manager import TrioManager
from libp2p.tools.anyio_service.trio_tasks import FunctionTask

from fognode.node import p2pfix_tasks

PINNED = {
    TrioManager.run_task: "ee6be8e98338d107",            # calls _find_parent_task(current)
    p2pfix_tasks.ORIGINAL_FIND_PARENT: "8aaad50f6da7590d",   # the scan replaced
    p2pfix_tasks.ORIGINAL_RUN: "86a00f1899a0f4f2",       # sets trio_task first, then runs
}


def test_pinned_functions_are_the_ones_the_fix_was_written_for() -> None:
    changed = [f.__qualname__ for f, digest in PINNED.items()
               if hashlib.sha256(inspect.getsource(f).encode()).hexdigest()[:16] != digest]
    assert not changed, f"py-libp2p changed under node/p2pfix_tasks.py: {changed}"


class Tree(Service):
    """Tasks three levels deep, each answering: what is my parent, by the fix and by the scan?"""

    def __init__(self) -> None:
        self.answers: list[tuple[object, object]] = []
        self.done = trio.Event()

    def ask(self) -> None:
        me = trio.lowlevel.current_task()
        manager = cast(TrioManager, self.manager)
        self.answers.append((TrioManager._find_parent_task(manager, me),
                             p2pfix_tasks.ORIGINAL_FIND_PARENT(manager, me)))

    async def leaf(self) -> None:
        self.ask()
        self.done.set()

    async def middle(self) -> None:
        self.ask()
        self.manager.run_task(self.leaf)
        await trio.sleep_forever()

    async def run(self) -> None:
        self.manager.run_task(self.middle)
        await self.manager.wait_finished()


async def test_parent_lookup_answers_what_the_scan_answers() -> None:
    p2pfix_tasks.install()
    p2pfix_tasks.install()                                   # idempotent
    a, b = Tree(), Tree()
    with trio.fail_after(20):
        async with background_trio_service(a) as any_ma, background_trio_service(b):
            ma = cast(TrioManager, any_ma)
            await a.done.wait()
            await b.done.wait()
            assert len(a.answers) == 2
            for fixed, scanned in a.answers:
                assert fixed is scanned and fixed is not None
            # a task outside the service (a stream handler, this test) is a new root, and so
            # is a task of another service's tree
            me = trio.lowlevel.current_task()
            assert TrioManager._find_parent_task(ma, me) is None
            b_tasks = set(FunctionTask.iterate_tasks(*cast(TrioManager, b.manager)._root_tasks))
            inside_b = next(t for t, ft in p2pfix_tasks._RUNNING.items() if ft in b_tasks)
            assert TrioManager._find_parent_task(ma, inside_b) is None
            assert p2pfix_tasks.ORIGINAL_FIND_PARENT(ma, inside_b) is None
            ma.cancel()
