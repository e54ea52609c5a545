"""Group commit for the contribution ledger's store: the synced LevelDB writes (sessions
started and ended, credits, folded history) leave the event loop and share their fsyncs.

The same shape as the ledger's writer (ledger/writer.py), smaller: callers on the trio thread
`submit` records into the open `Group` (one LevelDB write batch, sync=True); the writer task
(`run`, in the harvest role's nursery) takes the open group a scheduler round after the
submission that opened it and writes it in a worker thread (`trio.to_thread.run_sync`, one
write at a time); meanwhile new submissions go into the next group. Under load one fsync
carries everything submitted during the previous one; idle, a lone record is written at once.

Order: groups are written strictly in submission order, each only after the one before it is
durable (`_lock`, held around every LevelDB write of a group, and the `written` mark), so what
is on disk is a prefix of what was submitted and `barrier()` ("everything submitted so far is
durable") is what acknowledgements wait for. `flush()` writes whatever is pending on the
caller's thread, in the same order (the blocking path for synchronous callers, shutdown, and a
store used without a running writer, where `barrier` flushes too); it waits for a write in progress in the worker thread.

A failed write (disk full, I/O error) is fatal and sticky: the failed group and the open one
behind it fail (their waiters get the error), every later `submit` raises it at once, and
`run` raises it (the role stops, the daemon says why). LevelDB does not apply a batch whose log
write failed, so the store keeps exactly the groups written before. Cancelled (the role stops),
the writer lets a write in progress finish and flushes the open group on the way out.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import plyvel
import trio

from fognode.node.errors import FatalStorageError


class Group:
    """One synced write batch and its outcome."""

    def __init__(self, db: Any) -> None:
        self.batch = db.write_batch(sync=True)
        self.what: dict[str, int] = {}
        self.written = False                      # under GroupCommit._lock
        self.error: BaseException | None = None   # plyvel's, under GroupCommit._lock
        self.failure: FatalStorageError | None = None
        self._done = trio.Event()

    def describe(self) -> str:
        return ", ".join(f"{n} {k}" for k, n in self.what.items()) or "nothing"

    async def wait(self) -> None:
        """Wait until the group is on disk; raises its failure if its write failed."""
        await self._done.wait()
        if self.failure is not None:
            raise self.failure


class GroupCommit:
    """The group-commit writer of one LevelDB `db` (module docstring). `failed(what, error)`
    turns a plyvel error into the store's FatalStorageError."""

    def __init__(self, db: Any, failed: Callable[[str, BaseException], FatalStorageError]) -> None:
        self.db = db
        self._failed = failed
        self._lock = threading.Lock()
        self._limiter = trio.CapacityLimiter(1)
        self._open: Group | None = None
        self._writing: Group | None = None
        self._wake = trio.Event()
        self.failure: FatalStorageError | None = None
        self._running = False
        self.syncs = 0       # groups written (= fsyncs)
        self.records = 0     # records in them

    @property
    def idle(self) -> bool:
        """Nothing submitted is waiting or being written (an unsynced write may go direct)."""
        return self._open is None and self._writing is None

    def submit(self, what: str, fill: Callable[[Any], None]) -> Group:
        """`fill(batch)` puts records into the open group; `what` names them in errors.
        Raises the store's failure (nothing added) once a write failed."""
        if self.failure is not None:
            raise self.failure
        g = self._open
        if g is None:
            g = self._open = Group(self.db)
            self._wake.set()
        fill(g.batch)
        g.what[what] = g.what.get(what, 0) + 1
        return g

    async def barrier(self) -> None:
        """Wait until everything submitted so far is durable; raises the store's failure."""
        if self.failure is not None:
            raise self.failure
        if not self._running:          # no writer task (a store used without `run`)
            self.flush()
            return
        g = self._open or self._writing
        if g is not None:
            await g.wait()

    def _write(self, g: Group) -> None:
        """Write `g` unless it is written already (any thread; `_lock` keeps the order)."""
        with self._lock:
            if not g.written:
                try:
                    g.batch.write()
                except plyvel.Error as e:
                    g.error = e
                g.written = True

    def _finish(self, g: Group) -> None:
        """On the trio thread, once `g` is written: count it, or fail it and the open group."""
        if self._writing is g:
            self._writing = None
        if g._done.is_set():
            return
        if g.error is None:
            self.syncs += 1
            self.records += sum(g.what.values())
            g._done.set()
            return
        if self.failure is None:
            self.failure = self._failed(g.describe(), g.error)
        behind, self._open = self._open, None
        for x in (g, behind):
            if x is not None and not x._done.is_set():
                x.failure = self.failure
                x._done.set()

    def flush(self) -> None:
        """Write everything pending now, on this thread (blocks: see the module docstring).
        Raises the store's failure if a write failed."""
        for g in (self._writing, self._open):
            if g is not None and self.failure is None:
                if g is self._open:
                    self._open, self._writing = None, g
                self._write(g)
                self._finish(g)
        if self.failure is not None:
            raise self.failure

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write groups until cancelled (then flush) or until a write fails (then raise)."""
        self._running = True
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                g, self._open = self._open, None
                if g is None:
                    continue
                self._writing = g
                with trio.CancelScope(shield=True):    # the group is taken: never drop it
                    await trio.to_thread.run_sync(self._write, g, limiter=self._limiter)
                self._finish(g)
                if self.failure is not None:
                    raise self.failure
                if self._open is not None:
                    self._wake.set()
        finally:
            self._running = False
            if self.failure is None and not self.db.closed:
                self.flush()
