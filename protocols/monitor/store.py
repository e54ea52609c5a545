"""The history on disk: one fixed-size ring file per (metric, tier), mapped into memory.

`<datadir>/monitor/series/<metric>.<step>s.ring`: a 32-byte header (magic, step, slot count)
then the slots of series.Ring. Its size is fixed when created, so the whole store is
metrics x tiers x slots x 40 bytes whatever the uptime (10 s for a day plus 5 min for a month
is 2 x 8640 slots = 691 KB a metric). Why ring files rather than LevelDB: the size is
fixed by construction (no buckets to delete, no compaction), a write is one 40-byte store into
a mapped page (no syscall on the sampling path), and a query reads a contiguous range. The
kernel writes dirty pages back; `flush()` (called every minute and at close) msyncs them, so a
SIGKILL loses nothing and a power cut at most a minute.

A file whose header does not match the configured tier (the operator changed `tiers`) is
replaced by an empty one, and the replacement is logged. Raises FatalStorageError when the
directory or a file cannot be created or mapped (disk full, permissions).
"""
from __future__ import annotations

import logging
import mmap
import os
import struct
from pathlib import Path

from fognode.node.errors import FatalStorageError
from fognode.protocols.monitor.series import Ring, SeriesSet, Tier

log = logging.getLogger("fognode.monitor")

HEADER = struct.Struct("<8sdq8x")     # magic, step, slots, padding: 32 bytes
MAGIC = b"FOGRING1"


class SeriesStore:
    """Ring files under `root`, opened on first use of a metric."""

    def __init__(self, root: Path, tiers: list[Tier]) -> None:
        self.root = root
        self.tiers = tiers
        self._maps: list[mmap.mmap] = []
        self._views: list[memoryview] = []
        self.sets: dict[str, SeriesSet] = {}
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise FatalStorageError(f"cannot create the history directory {root}: {e}") from None

    def series(self, metric: str) -> SeriesSet:
        s = self.sets.get(metric)
        if s is None:
            s = self.sets[metric] = SeriesSet([Ring(t, self._open(metric, t)) for t in self.tiers])
        return s

    def _path(self, metric: str, tier: Tier) -> Path:
        return self.root / f"{metric}.{tier.step:g}s.ring"

    def stored(self, names: list[str]) -> list[str]:
        """Those of `names` that have history on disk (a ring file of some tier)."""
        return [n for n in names if any(self._path(n, t).exists() for t in self.tiers)]

    def _open(self, metric: str, tier: Tier) -> memoryview:
        path = self._path(metric, tier)
        size = HEADER.size + tier.nbytes
        head = HEADER.pack(MAGIC, tier.step, tier.slots)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size != size or os.pread(fd, HEADER.size, 0) != head:
                    if os.fstat(fd).st_size:
                        log.warning("history file %s does not match the tier %gs:%gs; starting it empty",
                                    path, tier.step, tier.span)
                    os.ftruncate(fd, 0)
                    os.ftruncate(fd, size)
                    os.pwrite(fd, head, 0)
                m = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        except OSError as e:
            raise FatalStorageError(f"cannot open the history file {path}: {e}") from None
        self._maps.append(m)
        whole = memoryview(m)
        ring = whole[HEADER.size:]
        self._views += [ring, whole]
        return ring

    def disk_bytes(self) -> int:
        return sum(len(m) for m in self._maps)

    def flush(self) -> None:
        for m in self._maps:
            m.flush()

    def close(self) -> None:
        self.sets.clear()
        for v in self._views:
            v.release()
        self._views.clear()
        for m in self._maps:
            m.flush()
            m.close()
        self._maps.clear()
