"""A round's update matrix: the aggregator receives every update of a round straight into a row
of one (capacity, d) float32 array, and the strategies aggregate over that array in place.

`UpdateMatrix(capacity, size)` belongs to one aggregator round (session/rounds.py); capacity is
the number of the round's participants, since each sends at most one update. The array is
allocated on the first row taken (np.empty: the pages are touched only as rows are written)
and dropped with the round, so a round holds at most capacity x d x 4 bytes of updates.

- `lease(peer)`: the row an update of `peer` streams into (transfer/updates.py hands it to
  the tensor decoder, which writes each chunk's bytes straight into it). The lowest free row
  is taken, so the rows in use form a prefix except after a failed transfer. A second lease
  of the same peer (a retried stream while the first is still open) takes over the same row:
  the older lease is `lost()` from then on and its stream writes nothing more.
- `commit(peer, values)`: the update is complete and checked; it stays in its row (no copy
  when `values` is the lease's row; any other array, e.g. this node's own update, is copied
  into a row).
- `RowLease.release()`: the transfer failed or the update was refused: its row is free again
  and never aggregated.
- `seal()`: the round aggregates. Every open lease is lost (its stream stops writing), the
  committed rows are moved into one prefix (a row copy per hole below them, which only a
  failed transfer leaves) and the (k, d) view of them comes back, with the peers row by row;
  `sealed_updates` turns that into the `ClientUpdate`s a strategy aggregates.
- `close()`: the round is over; open leases are lost and the array is dropped.

`stacked_rows(deltas)` gives back the (n, d) matrix when n 1-D arrays are consecutive rows of
one C-contiguous float32 array (as the updates of a sealed round are), so a rule computes the
weighted mean with one BLAS call (`np.dot(w, rows)`) instead of a pass per update.

Sans-IO; the trio adapter and the aggregator run on one thread, so a lease is never written to
after `seal()` or after it was taken over (the decoder asks `lost()` before every write).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from fognode.protocols.fl.strategies.base import PARAM_DTYPE, ClientUpdate, StrategyError


class RowLease:
    """One transfer's hold on a row of an `UpdateMatrix` (see the module docstring)."""

    def __init__(self, matrix: UpdateMatrix, peer: str, index: int, generation: int) -> None:
        self._matrix = matrix
        self.peer = peer
        self.index = index
        self._generation = generation

    @property
    def row(self) -> np.ndarray:
        """The 1-D float32 row the update is written into."""
        return self._matrix.row(self.index)

    def lost(self) -> str | None:
        """None while this transfer may write its row; else why not: "round closed" (the
        round aggregates or ended) or "superseded" (a newer stream of the same peer took the
        row over, or the update was committed)."""
        return self._matrix.lease_lost(self)

    def release(self) -> None:
        """The transfer failed or its update was refused: free the row (nothing if the lease
        was lost or its update committed)."""
        self._matrix.release(self)


class UpdateMatrix:
    """The rows of one aggregator round (see the module docstring)."""

    def __init__(self, capacity: int, size: int) -> None:
        if capacity < 1 or size < 0:
            raise StrategyError(f"update matrix of {capacity} rows x {size} values")
        self.capacity = capacity
        self.size = size
        self._array: np.ndarray | None = None
        self._free = list(range(capacity))            # kept sorted: the lowest row goes first
        self._leases: dict[str, tuple[int, int]] = {}  # peer -> (row, generation) in flight
        self._committed: dict[str, int] = {}           # peer -> row
        self._generation = 0
        self.sealed = False
        self.closed = False

    @property
    def nbytes(self) -> int:
        """The bytes this matrix holds at most (capacity x size x 4)."""
        return self.capacity * self.size * np.dtype(PARAM_DTYPE).itemsize

    def row(self, index: int) -> np.ndarray:
        """Row `index` (the array is made on the first call); StrategyError once closed."""
        if self.closed:
            raise StrategyError("the round's update matrix is closed")
        if self._array is None:
            self._array = np.empty((self.capacity, self.size), dtype=PARAM_DTYPE)
        return self._array[index]

    def lease(self, peer: str) -> RowLease:
        """The row `peer`'s update streams into (see the module docstring). StrategyError
        once sealed, for a peer whose update is committed, or with every row taken (more
        peers than the capacity: the caller admitted someone outside the round)."""
        if self.sealed:
            raise StrategyError("the round's update matrix is sealed")
        if peer in self._committed:
            raise StrategyError(f"an update of {peer} is in the matrix already")
        self._generation += 1
        held = self._leases.get(peer)
        if held is not None:
            index = held[0]
        elif self._free:
            index = self._free.pop(0)
        else:
            raise StrategyError(f"all {self.capacity} rows of the update matrix are taken")
        self._leases[peer] = (index, self._generation)
        return RowLease(self, peer, index, self._generation)

    def lease_lost(self, lease: RowLease) -> str | None:
        if self.sealed:
            return "round closed"
        if self._leases.get(lease.peer) != (lease.index, lease._generation):
            return "superseded"
        return None

    def release(self, lease: RowLease) -> None:
        if self.sealed or self._leases.get(lease.peer) != (lease.index, lease._generation):
            return
        del self._leases[lease.peer]
        self._free.append(lease.index)
        self._free.sort()

    def commit(self, peer: str, values: np.ndarray) -> np.ndarray:
        """Keep `values` as `peer`'s update and return its row: no copy when `values` is the
        row of `peer`'s open lease, else a copy into a row. StrategyError once sealed, for a
        second update of `peer`, or for values that do not fit a row."""
        if values.shape != (self.size,):
            raise StrategyError(f"update of shape {values.shape} for a matrix of rows of "
                                f"{self.size} values")
        held = self._leases.get(peer)
        if held is None or not _same_memory(values, self.row(held[0])):
            lease = self.lease(peer)
            np.copyto(lease.row, values, casting="same_kind")
            held = (lease.index, lease._generation)
        del self._leases[peer]
        self._committed[peer] = held[0]
        return self.row(held[0])

    def seal(self) -> tuple[tuple[str, ...], np.ndarray]:
        """(peers, rows): the committed updates as the (k, d) prefix of the array, peer i in
        row i; every open lease is lost from now on (see the module docstring)."""
        self.sealed = True
        self._leases.clear()
        order = sorted(self._committed.items(), key=lambda kv: kv[1])
        k = len(order)
        if k == 0:
            return (), np.empty((0, self.size), dtype=PARAM_DTYPE)
        arr = self._array
        assert arr is not None
        # committed rows at or past k fill the holes below k, lowest first
        holes = iter(sorted(set(range(k)) - set(self._committed.values())))
        for peer, index in order:
            if index >= k:
                dst = next(holes)
                arr[dst] = arr[index]
                self._committed[peer] = dst
        order = sorted(self._committed.items(), key=lambda kv: kv[1])
        return tuple(p for p, _ in order), arr[:k]


    def close(self) -> None:
        """The round is over: every open lease is lost and the array dropped (rows handed to
        a strategy stay valid while it holds them)."""
        self.sealed = self.closed = True
        self._leases.clear()
        self._committed.clear()
        self._array = None


def sealed_updates(matrix: UpdateMatrix,
                   updates: Mapping[str, ClientUpdate]) -> tuple[ClientUpdate, ...]:
    """Seal `matrix` and give back the committed `updates` (peer -> update, its delta a row of
    `matrix`) with their deltas as the consecutive rows of the sealed prefix, in row order:
    what an aggregator hands its strategy."""
    peers, rows = matrix.seal()
    return tuple(dataclasses.replace(updates[p], delta=rows[i]) for i, p in enumerate(peers))


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.shape == b.shape and a.dtype == b.dtype
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def stacked_rows(deltas: Sequence[np.ndarray]) -> np.ndarray | None:
    """A read-only (n, d) float32 view whose rows are `deltas`, when they are n >= 1
    contiguous 1-D float32 arrays of one allocation lying back to back in memory (the rows of
    a sealed round, or consecutive rows of any C-contiguous matrix); None otherwise. No copy."""
    if not deltas:
        return None
    first = deltas[0]
    owner = first.base
    if owner is None or first.ndim != 1 or first.dtype != PARAM_DTYPE \
            or not first.flags.c_contiguous:
        return None
    row_bytes = first.nbytes
    start = first.__array_interface__["data"][0]
    for i, d in enumerate(deltas):
        if d.base is not owner or d.shape != first.shape or d.dtype != PARAM_DTYPE \
                or not d.flags.c_contiguous \
                or d.__array_interface__["data"][0] != start + i * row_bytes:
            return None
    # every row lies in `owner`'s memory and they tile [start, start + n * row_bytes)
    return np.lib.stride_tricks.as_strided(first, shape=(len(deltas), first.shape[0]),
                                           strides=(row_bytes, first.itemsize),
                                           writeable=False)
