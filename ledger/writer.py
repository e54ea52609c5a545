"""Group commit for the ledger store: one writer task, one synced LevelDB batch (one fsync) for
everything submitted while the previous batch was being written, written off the event loop.

Callers on the trio thread `submit` records (certificate batches, validator locks, in-flight
orders, sync cursors) into the open `Group`, a LevelDB write batch, and get the group back. The
writer task (`run`, in the ledger's nursery) takes the open group (a scheduler round after
the submission that opened it) and writes it with `sync=True` in a worker thread
(its own long-lived thread, `_WriterThread`, one write at a time: `limiter`, a CapacityLimiter
of 1, held by the writer task around each write); meanwhile new
submissions go into the next group. So under load one
fsync carries everything that arrived during the previous fsync; idle, a lone record is
written at once.

Invariant: groups are written strictly in submission order, and a group is written only after
the one before it is durable; so whatever is on disk is a prefix of what was submitted, and
`barrier()` ("wait for the newest group") means "everything submitted so far is durable". A
group's `on_durable` callbacks run on the trio thread, in registration order, in the writer
task right after its write returned and before the writer yields, so they run in submission
order and before any other task can observe that group's outcome through the writer
(`quiesced()`). What the ledger service does with this (memory never runs ahead of disk) is in
service.py's docstring.

A failed write (disk full, I/O error) is fatal: the store turns it into its sticky
`LedgerStorageFailed` (store.py `write_failed`, which also tells the ledger service), the
failed group and the open one behind it fail (their `on_failure` callbacks run, their waiters
get the error), and every later `submit` raises at once. LevelDB does not apply a batch whose
log write failed, so the store keeps exactly the groups written before.

Cancelled (the role stops), the writer lets a write in progress finish (the worker thread
holds the batch; trio does not abandon it), then writes the open group on the way out, so a
clean shutdown loses nothing that was submitted. Without a running writer task (an engine used
without `run`, tests), `barrier()` writes the open group on the caller's thread.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import plyvel
import trio
from prometheus_client import CollectorRegistry, Counter, Histogram

from fognode.ledger.errors import LedgerStorageFailed
from fognode.ledger.store import LedgerStore
from fognode.node.errors import FognodeError, StreamClosed
from fognode.node.metrics import metric
from fognode.node.overlay import FramedStream
from fognode.node.streams import send_frames
from fognode.node.wire import pack

PIPELINE = 64    # decided requests of one stream waiting for their replies (serve_in_order)


def _copy(err: LedgerStorageFailed) -> LedgerStorageFailed:
    return LedgerStorageFailed(str(err), path=err.path, cause=err.cause)


class Group:
    """One synced write batch and what waits for it."""

    def __init__(self, db: Any, number: int) -> None:
        self.number = number
        self.batch = db.write_batch(sync=True)
        self.counts: dict[str, int] = {}
        self.error: LedgerStorageFailed | None = None
        self._done = trio.Event()
        self._on_durable: list[Callable[[], None]] = []
        self._on_failure: list[Callable[[], None]] = []

    @property
    def records(self) -> int:
        return sum(self.counts.values())

    def what(self) -> str:
        """What the group holds, e.g. "3 certificates, 2 validator locks" (error messages)."""
        return ", ".join(f"{n} {k}" for k, n in self.counts.items()) or "nothing"

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    @property
    def durable(self) -> bool:
        return self._done.is_set() and self.error is None

    def on_durable(self, fn: Callable[[], None]) -> None:
        """Call `fn` (trio thread, registration order) once the group is on disk; never if it fails."""
        if self.durable:
            fn()
        elif not self._done.is_set():
            self._on_durable.append(fn)

    def on_failure(self, fn: Callable[[], None]) -> None:
        """Call `fn` if the group's write fails."""
        if self.error is not None:
            fn()
        elif not self._done.is_set():
            self._on_failure.append(fn)

    async def wait(self) -> None:
        """Wait until the group is on disk. Raises LedgerStorageFailed if its write failed.
        Cancellable (the write goes on)."""
        await self._done.wait()
        if self.error is not None:
            raise _copy(self.error)

    def _succeeded(self) -> None:
        callbacks, self._on_durable, self._on_failure = self._on_durable, [], []
        self._done.set()
        for fn in callbacks:
            fn()

    def _failed(self, err: LedgerStorageFailed) -> None:
        self.error = err
        callbacks, self._on_durable, self._on_failure = self._on_failure, [], []
        self._done.set()
        for fn in callbacks:
            fn()


class GroupWriter:
    """The group-commit writer of one LedgerStore (module docstring); with a `registry`, it
    counts its writes there (fsyncs, records per group, write time)."""

    def __init__(self, store: LedgerStore, *, registry: CollectorRegistry | None = None) -> None:
        self.store = store
        self._metrics = None if registry is None else (
            metric(registry, Counter, "fognode_ledger_store_syncs_total",
                   "Synced write batches (fsyncs) of the ledger store's group-commit writer"),
            metric(registry, Histogram, "fognode_ledger_store_group_records",
                   "Records (certificates, locks, in-flight orders, cursors) per synced write batch",
                   buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)),
            metric(registry, Histogram, "fognode_ledger_store_write_seconds",
                   "Time of one synced write batch in the writer thread",
                   buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)))
        self._open: Group | None = None
        self._writing: Group | None = None
        self._numbers = 0
        self._wake = trio.Event()
        self.limiter = trio.CapacityLimiter(1)    # one write at a time (see `quiesced`)
        self._running = False
        self.syncs = 0          # groups written (= fsyncs)
        self.records = 0        # records written in them

    # -- submitting --------------------------------------------------------------------------

    def submit(self, what: str, fill: Callable[[Any], None], count: int = 1) -> Group:
        """Add records to the open group: `fill(batch)` puts them into its write batch; `what`
        and `count` name them in error messages. Returns the group (wait for it, or register
        callbacks on it). Raises LedgerStorageFailed (nothing added) once the store failed."""
        f = self.store.failure
        if f is not None:
            raise _copy(f)
        g = self._open
        if g is None:
            self._numbers += 1
            g = self._open = Group(self.store.db, self._numbers)
            self._wake.set()
        fill(g.batch)
        g.counts[what] = g.counts.get(what, 0) + count
        return g

    def latest(self) -> Group | None:
        """The newest group not yet finished (open, or being written), or None."""
        if self._open is not None:
            return self._open
        if self._writing is not None and not self._writing.finished:
            return self._writing
        return None

    def after_pending(self, fn: Callable[[], None]) -> None:
        """Run `fn` once everything submitted so far is durable (now, if nothing is pending;
        never, if a pending group fails)."""
        g = self.latest()
        if g is None:
            fn()
        else:
            g.on_durable(fn)

    async def barrier(self) -> None:
        """Wait until everything submitted so far is on disk (at once if nothing is pending).
        Raises LedgerStorageFailed if a write failed (or had failed). Cancellable."""
        f = self.store.failure
        if f is not None:
            raise _copy(f)
        g = self.latest()
        if g is None:
            return
        if not self._running and g is self._open:
            self._write_now()
        await g.wait()

    @asynccontextmanager
    async def quiesced(self) -> AsyncIterator[None]:
        """Hold the writer between two writes: inside, no write is in progress and every
        written group's callbacks have run (so memory and disk can be compared)."""
        async with self.limiter:
            yield

    # -- writing --------------------------------------------------------------------------------

    @staticmethod
    def _write(g: Group) -> BaseException | None:
        """In the worker thread: one synced LevelDB write (plyvel releases the GIL)."""
        try:
            g.batch.write()
        except plyvel.Error as e:
            return e
        return None

    def _finish(self, g: Group, err: BaseException | None, seconds: float) -> None:
        """On the trio thread, right after the write: run the callbacks, or fail everything."""
        self._writing = None
        if err is None:
            self.syncs += 1
            self.records += g.records
            if self._metrics is not None:
                syncs, records, write = self._metrics
                syncs.inc()
                records.observe(g.records)
                write.observe(seconds)
            g._succeeded()
            return
        failure = self.store.write_failed(g.what(), err)
        behind, self._open = self._open, None
        g._failed(failure)
        if behind is not None:
            behind._failed(failure)

    def _take(self) -> Group | None:
        g, self._open = self._open, None
        self._writing = g
        return g

    def _write_now(self) -> None:
        """Write the open group on this thread (shutdown, or no writer task)."""
        g = self._take()
        if g is not None:
            t = time.perf_counter()
            err = self._write(g)
            self._finish(g, err, time.perf_counter() - t)

    async def run(self) -> None:
        """Write groups until cancelled; on the way out, write the open group (see the module
        docstring). Returns after a failed write (the service stops the role)."""
        self._running = True
        thread = _WriterThread(self._write)
        try:
            while self.store.failure is None:
                await self._wake.wait()          # woken a scheduler round after the submission:
                self._wake = trio.Event()        # what was runnable then has joined the group
                try:
                    self.limiter.acquire_nowait()    # no extra scheduler round when free
                except trio.WouldBlock:
                    await self.limiter.acquire()     # held by `quiesced`
                try:
                    g = self._take()
                    if g is not None:
                        t = time.perf_counter()
                        # shielded: a cancel at the thread call's checkpoint (the role
                        # stopping) would drop a group already taken from `_open`
                        with trio.CancelScope(shield=True):
                            err = await thread.write(g)
                        self._finish(g, err, time.perf_counter() - t)
                finally:
                    self.limiter.release()
                if self._open is not None:
                    self._wake.set()
        finally:
            thread.stop()
            self._running = False
            if self.store.failure is None and not self.store.db.closed:
                self._write_now()


class _WriterThread:
    """The writer's own worker thread: `write(g)` hands the group to it and sleeps until the
    thread, done, reschedules the task through the trio token. One hop costs about 37 us of
    CPU against 58 for `trio.to_thread.run_sync` (no thread cache hand-off, no capacity
    limiter and its scheduler round; measured on this machine with a no-op). At most one
    write is in progress (the writer task waits for each), so a hand-over slot suffices."""

    def __init__(self, write: Callable[[Group], BaseException | None]) -> None:
        self._write = write
        self._token = trio.lowlevel.current_trio_token()
        self._jobs: queue.SimpleQueue[tuple[Group, trio.lowlevel.Task] | None] = queue.SimpleQueue()
        self._result: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="ledger-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            g, task = job
            try:
                self._result = self._write(g)
            except BaseException as e:      # _write returns plyvel's errors; anything else too
                self._result = e
            self._token.run_sync_soon(trio.lowlevel.reschedule, task)

    async def write(self, g: Group) -> BaseException | None:
        """Write `g` in the thread; not cancellable (the caller shields it anyway)."""
        self._jobs.put((g, trio.lowlevel.current_task()))
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        result, self._result = self._result, None
        return result

    def stop(self) -> None:
        """Let the thread end once it is idle (the writer waits for every write it starts)."""
        self._jobs.put(None)


async def serve_in_order(writer: GroupWriter, stream: FramedStream, decide: Callable[[Any], list[Any]], *,
                         max_size: int) -> None:
    """Serve a request/reply stream whose replies must not leave before what they rely on is
    durable: each request is read and decided (`decide(request)` -> replies (maps, or their
    canonical encodings), synchronous: its
    records join the open group) one after the other, and a sender task sends each request's
    replies, in request order, once every group submitted up to its decision is on disk, while
    the next requests are read and decided (a pipelining client gets its replies grouped into
    few fsyncs). The sender wakes once per group (its `on_durable`), not per request, and the
    replies of every decided request whose group is durable when it runs leave together in one
    muxer write (node/streams.py `send_frames`: one yamux frame, Noise message and TCP write
    for the lot). At most PIPELINE decided requests wait for their
    replies; the reader waits for room beyond that. Ends when the client closes the stream,
    after the decided replies are sent.
    A LedgerStorageFailed (from `decide` or a failed group) resets the stream, nothing more is
    sent; another FognodeError (a bad request, a broken stream) is raised."""
    pending: deque[tuple[Group | None, list[Any]]] = deque()
    failed: list[FognodeError] = []
    state = _Pipe()

    def ready() -> None:           # a group the pending replies wait for finished
        state.wake.set()

    async def sender() -> None:
        while True:
            state.wake = trio.Event()
            frames: list[bytes] = []
            # every decided request whose group is durable now (groups finish in order)
            while pending and (pending[0][0] is None or pending[0][0].durable):
                for r in pending.popleft()[1]:      # a map, or its encoding made already
                    frames.append(r if isinstance(r, bytes) else pack(r))
            try:
                if frames:
                    state.room.set()
                    await send_frames(stream, frames)
                    continue
                if pending and pending[0][0] is not None and pending[0][0].finished:
                    await pending[0][0].wait()       # its write failed: raises
                if not pending and state.reading_done:
                    return
            except FognodeError as e:
                failed.append(e)
                nursery.cancel_scope.cancel()
                return
            await state.wake.wait()     # woken by the reader, or by the group's write finishing

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        try:
            while True:
                try:
                    replies = decide(await stream.recv(max_size=max_size))
                except StreamClosed:
                    break
                except FognodeError as e:
                    failed.append(e)
                    nursery.cancel_scope.cancel()
                    break
                group = writer.latest()
                pending.append((group, replies))
                if group is None or group.durable:
                    state.wake.set()
                elif group is not state.watched:     # one wake-up per group, not per request
                    state.watched = group
                    group.on_durable(ready)
                    group.on_failure(ready)
                while len(pending) >= PIPELINE:
                    state.room = trio.Event()
                    await state.room.wait()
        finally:
            state.reading_done = True
            state.wake.set()
    if failed:
        if isinstance(failed[0], LedgerStorageFailed):
            await stream.reset()
            return
        raise failed[0]


class _Pipe:
    """serve_in_order's hand-over between its reader and its sender."""

    __slots__ = ("wake", "room", "reading_done", "watched")

    def __init__(self) -> None:
        self.wake = trio.Event()        # set when replies may be ready (or reading ended)
        self.room = trio.Event()        # set when the sender took decided requests
        self.reading_done = False
        self.watched: Group | None = None   # the newest group whose outcome wakes the sender
