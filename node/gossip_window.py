"""The sequence window of one gossip origin: what was delivered, what is missing (sans-IO).

`SeqWindow` holds a settled prefix (every seq <= `contig` was delivered or given up) and, for
the `size` seqs after it, three bit masks: delivered, missing (wanted, to be pulled) and
optional (the missing ones that are back-fill: no loss if nobody has them). Bit i stands for
seq contig + 1 + i. A seq in (contig, highest] that is in neither mask was skipped: never
pulled, but delivered should it still arrive. The window costs O(size / 8) bytes whatever the
origin sends; the tracker (gossip_tracker.py) decides what to track and charges it.

Invariants (`check`): 0 <= contig <= highest <= contig + size; no mask has a bit at or above
highest - contig; optional is a subset of missing; delivered and missing are disjoint; after
every public method the seq right after contig is missing, unless nothing is missing, and then
contig == highest and the masks are empty.
"""
from __future__ import annotations


def _ones(n: int) -> int:
    return (1 << n) - 1 if n > 0 else 0


class SeqWindow:
    __slots__ = ("size", "contig", "highest", "delivered", "missing", "optional")

    def __init__(self, size: int, top: int = 0) -> None:
        self.size = size
        self.contig = self.highest = top
        self.delivered = self.missing = self.optional = 0

    def reset(self, top: int) -> None:
        """Forget everything: `top` and all before it are settled."""
        self.contig = self.highest = top
        self.delivered = self.missing = self.optional = 0

    def count(self) -> int:
        """Missing seqs."""
        return self.missing.bit_count()

    def seen(self, seq: int) -> bool:
        """True when `seq` was delivered or given up."""
        i = seq - self.contig - 1
        return i < 0 or (i < self.size and bool((self.delivered >> i) & 1))

    def fits(self, seq: int) -> bool:
        """True when `seq` lies inside the window (no resync needed to track it)."""
        return seq <= self.contig + self.size

    def deliver(self, seq: int) -> None:
        """`seq` (not seen, inside the window) arrived."""
        bit = 1 << (seq - self.contig - 1)
        self.delivered |= bit
        self.missing &= ~bit
        self.optional &= ~bit
        self.highest = max(self.highest, seq)
        self._advance()

    def extend(self, hi: int, tracked: int, *, optional: bool) -> None:
        """Seqs from highest + 1 to `hi` (inside the window) are known to exist; the newest
        `tracked` of them become missing, the older ones are skipped."""
        self.highest = max(self.highest, hi)
        if tracked > 0:
            bits = _ones(tracked) << (hi - tracked - self.contig)
            self.missing |= bits
            if optional:
                self.optional |= bits
        self._advance()

    def settle(self, seqs: tuple[int, ...] | list[int]) -> list[int]:
        """Stop wanting `seqs`; returns the non-optional ones among those that were missing."""
        lost = []
        for s in seqs:
            i = s - self.contig - 1
            if 0 <= i < self.size and (self.missing >> i) & 1:
                if not (self.optional >> i) & 1:
                    lost.append(s)
                self.missing &= ~(1 << i)
                self.optional &= ~(1 << i)
        self._advance()
        return lost

    def drop_optional(self) -> None:
        """Give up every missing back-fill seq."""
        self.missing &= ~self.optional
        self.optional = 0
        self._advance()

    def missing_seqs(self, *, required_only: bool = False) -> list[int]:
        mask = self.missing & ~self.optional if required_only else self.missing
        out = []
        i = 0
        while mask:
            if mask & 1:
                out.append(self.contig + 1 + i)
            mask >>= 1
            i += 1
        return out

    def is_missing(self, seq: int) -> bool:
        i = seq - self.contig - 1
        return 0 <= i < self.size and bool((self.missing >> i) & 1)

    def _advance(self) -> None:
        """Move contig over everything settled, up to the first missing seq."""
        if self.missing:
            shift = (self.missing & -self.missing).bit_length() - 1
        else:
            shift = self.highest - self.contig
        if shift > 0:
            self.contig += shift
            self.delivered >>= shift
            self.missing >>= shift
            self.optional >>= shift

    def check(self) -> None:
        """Assert the invariants of the module docstring."""
        span = self.highest - self.contig
        assert 0 <= self.contig and 0 <= span <= self.size, (self.contig, self.highest)
        for mask in (self.delivered, self.missing, self.optional):
            assert mask >= 0 and mask >> span == 0, "a bit beyond highest"
        assert self.optional & ~self.missing == 0 and self.delivered & self.missing == 0
        if self.missing:
            assert self.missing & 1, "contig not advanced"
        else:
            assert span == 0 and self.delivered == 0, "contig not advanced"
