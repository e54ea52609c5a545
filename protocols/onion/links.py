"""Circuit ids on the links between neighbours.

A circuit id names a circuit on one link (one neighbour pair); the side that sends CREATE
chooses it. Both ends of a link may create circuits over it, so, like Tor's link protocol v4,
the id space is split by its high bit: the side whose peer id sorts higher uses ids with the
high bit set, the other side ids without it. One allocator serves everything a node creates
(its own circuits and the extensions it makes as a relay), so they never collide.
"""
from __future__ import annotations

import random

HIGH_BIT = 0x80000000


class CircIdAllocator:
    def __init__(self, self_peer: str, rng: random.Random | None = None) -> None:
        self.self_peer = self_peer
        self._rng = rng or random.SystemRandom()
        self._used: dict[str, set[int]] = {}

    def _high(self, creator: str, other: str) -> int:
        return HIGH_BIT if creator > other else 0

    def allocate(self, peer: str) -> int:
        """A fresh id for a circuit this node creates towards `peer`."""
        used = self._used.setdefault(peer, set())
        high = self._high(self.self_peer, peer)
        while True:
            cid = high | self._rng.randrange(1, HIGH_BIT)
            if cid not in used:
                used.add(cid)
                return cid

    def accept(self, peer: str, cid: int) -> str:
        """Reserve an id `peer` chose for a circuit it creates; "" if fine, else why not."""
        if cid & HIGH_BIT != self._high(peer, self.self_peer):
            return f"circuit id {cid:#x} has the wrong high bit for this link"
        used = self._used.setdefault(peer, set())
        if cid in used:
            return f"circuit id {cid:#x} is already in use on this link"
        used.add(cid)
        return ""

    def release(self, peer: str, cid: int) -> None:
        used = self._used.get(peer)
        if used is not None:
            used.discard(cid)
            if not used:
                del self._used[peer]

    def in_use(self, peer: str) -> int:
        return len(self._used.get(peer, ()))
