"""The contribution ledger on disk: LevelDB (plyvel) under `<datadir>/harvest/contributions/`.

Why LevelDB and not one atomically replaced file: the ledger only grows (a session record
per harvest session, a credit per receipt, about 0.2 and 2 kB each) and changes one record at a
time, so rewriting a whole file on every change costs O(history) per write, while LevelDB
writes O(record); it is already a dependency (the ledger replica, ledger/store.py) and a
synced write batch is atomic across a crash (`kill -9` leaves the old record or the new one).
State changes (a session starts or ends, a credit arrives, history is folded) are synced
writes, submitted to the store's group commit (group_commit.py: written off the event loop,
several per fsync; `barrier()` waits until they are durable, `flush()` writes them on the
caller's thread). The meters of a running session, updated every tick, are written without
sync (they survive a crash of the daemon, and lose at most a few seconds of meters to a crash
of the machine): directly when nothing synced is pending, else in the open group, so that an
older record in a group written later never replaces them.

Keys::

    m/format              b"1" (refuse a directory written by an unknown format)
    m/streak              msgpack int: consecutive validated results after the newest credit
                          (written with each credit: it survives folding older credits)
    s/<session id>        a session record (msgpack map, contribution.py `session_to_wire`)
    c/<seq:8>             a credit: {"kind", "evidence", "received"}, in arrival order
    d/<YYYY-MM-DD>        folded history: that day's totals (history.py `DayTotals`)

Folding (`fold`) writes the new day records and deletes the folded sessions and credits in one
synced batch: a crash leaves the history folded or not, never counted twice or lost.

A write that fails (disk full, I/O error) raises `HarvestStorageFailed` (a
FatalStorageError: the role stops and the daemon exits, saying which path and why): from the
direct writes at once, from group-committed ones in `barrier`, `flush`, the writer task and
every later submission. Reads are not wrapped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import plyvel

from fognode.node.errors import FatalStorageError
from fognode.node.wire import pack, unpack
from fognode.protocols.harvest.group_commit import GroupCommit

FORMAT = b"1"
MAX_RECORD = 1 << 20


class HarvestStorageFailed(FatalStorageError):
    """The contribution ledger could not be written (the local machine's fault)."""


class ContributionStore:
    """Open (or create) the store at `path`. Raises HarvestStorageFailed if it cannot be
    opened (another process holds it, no space, I/O error) or holds an unknown format."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.db = plyvel.DB(str(self.path), create_if_missing=True)
        except (OSError, plyvel.Error) as e:
            raise self._failed("open", e) from e
        have = self.db.get(b"m/format")
        if have is None:
            self._put([(b"m/format", FORMAT)], "format marker", sync=True)
        elif have != FORMAT:
            self.db.close()
            raise HarvestStorageFailed(f"{self.path} holds a contribution ledger of unknown format "
                                       f"{have[:16]!r} (written by a newer fognode?)",
                                       path=str(self.path), cause="unknown format")
        self.writer = GroupCommit(self.db, self._failed)

    def _failed(self, what: str, e: BaseException) -> HarvestStorageFailed:
        arg = e.args[0] if e.args else e
        cause = arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)
        return HarvestStorageFailed(f"the contribution ledger at {self.path} could not be "
                                    f"written ({what}): {cause}; check the disk, then restart "
                                    f"the node", path=str(self.path), cause=cause)

    def _put(self, items: list[tuple[bytes, bytes]], what: str, *, sync: bool) -> None:
        try:
            with self.db.write_batch(sync=sync) as b:
                for k, v in items:
                    b.put(k, v)
        except (OSError, plyvel.Error) as e:
            raise self._failed(what, e) from e

    def _submit(self, items: list[tuple[bytes, bytes]], what: str) -> None:
        def fill(b: Any) -> None:
            for k, v in items:
                b.put(k, v)
        self.writer.submit(what, fill)

    def put_session(self, session_id: bytes, record: dict[str, Any], *, sync: bool) -> None:
        """A session record: synced through the group commit, or (`sync=False`) unsynced."""
        item = [(b"s/" + session_id, pack(record))]
        if sync or not self.writer.idle:
            self._submit(item, "session")
        else:
            self._put(item, "session meters", sync=False)

    def put_credit(self, seq: int, record: dict[str, Any], streak: int) -> None:
        self._submit([(b"c/" + seq.to_bytes(8, "big"), pack(record)), (b"m/streak", pack(streak))],
                     "credit")

    async def barrier(self) -> None:
        """Wait until every write submitted so far is durable (HarvestStorageFailed if not)."""
        await self.writer.barrier()

    def flush(self) -> None:
        """Write every pending write now, on this thread (blocks for an fsync)."""
        self.writer.flush()

    def streak(self) -> int | None:
        """The stored consecutive-valid count (None: never written)."""
        v = self.db.get(b"m/streak")
        if v is None:
            return None
        n = unpack(v, max_size=16, what="stored streak")
        return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None

    def fold(self, days: dict[str, dict[str, Any]], sessions: list[bytes], credits: list[int]) -> None:
        """Replace sessions and credits by day records, atomically (one group-committed batch)."""
        def fill(b: Any) -> None:
            for day, record in days.items():
                b.put(b"d/" + day.encode(), pack(record))
            for sid in sessions:
                b.delete(b"s/" + sid)
            for seq in credits:
                b.delete(b"c/" + seq.to_bytes(8, "big"))
        self.writer.submit("folded history", fill)

    def days(self) -> Iterator[tuple[str, Any]]:
        """(day, decoded record) of every folded day, oldest first."""
        for k, v in self.db.iterator(prefix=b"d/"):
            day = k[2:].decode(errors="replace")
            yield day, unpack(v, max_size=MAX_RECORD, what=f"stored day {day}")

    def sessions(self) -> Iterator[tuple[bytes, Any]]:
        """(session id, decoded record) of every stored session (records are our own writes;
        an undecodable one raises RemoteProtocolError naming it, for the caller to skip)."""
        for k, v in self.db.iterator(prefix=b"s/"):
            yield k[2:], unpack(v, max_size=MAX_RECORD, what=f"stored session {k[2:].hex()}")

    def credits(self) -> Iterator[tuple[int, Any]]:
        """(sequence, decoded record) of every stored credit, in arrival order."""
        for k, v in self.db.iterator(prefix=b"c/"):
            seq = int.from_bytes(k[2:], "big")
            yield seq, unpack(v, max_size=MAX_RECORD, what=f"stored credit {seq}")

    def close(self) -> None:
        """Flush what is pending, then close (HarvestStorageFailed if the flush fails; the
        database is closed either way)."""
        if not self.db.closed:
            try:
                if self.writer.failure is None:
                    self.writer.flush()
            finally:
                self.db.close()
