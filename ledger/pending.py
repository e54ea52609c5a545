"""Certificates that arrived before they can apply (missing predecessors or incoming funds).

Bounded: when full, a new certificate is refused (the caller counts it; sync brings it back
later), except one for its sender's next applicable sequence, which evicts the entry farthest
from applicable, so the pool never clogs with certificates that cannot apply.
"""
from __future__ import annotations

from fognode.ledger.messages import Certificate


class PendingPool:
    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("the pending pool needs room for at least one certificate")
        self.max_entries = max_entries
        self._by_sender: dict[bytes, dict[int, Certificate]] = {}
        self._n = 0
        self.refused = 0

    def __len__(self) -> int:
        return self._n

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        return key[1] in self._by_sender.get(key[0], {})

    def get(self, sender: bytes, sequence: int) -> Certificate | None:
        return self._by_sender.get(sender, {}).get(sequence)

    def add(self, cert: Certificate, next_sequence: int) -> bool:
        """Keep `cert` (its sender's next applicable sequence is `next_sequence`); False if
        refused because the pool is full."""
        sender, seq = cert.order.key
        mine = self._by_sender.get(sender)
        if mine is not None and seq in mine:
            return True
        if self._n >= self.max_entries:
            if seq != next_sequence:
                self.refused += 1
                return False
            vs, vq = max(((s, max(d)) for s, d in self._by_sender.items()), key=lambda sq: sq[1])
            self.pop(vs, vq)
            self.refused += 1
        self._by_sender.setdefault(sender, {})[seq] = cert
        self._n += 1
        return True

    def pop(self, sender: bytes, sequence: int) -> Certificate | None:
        mine = self._by_sender.get(sender)
        if not mine or sequence not in mine:
            return None
        cert = mine.pop(sequence)
        self._n -= 1
        if not mine:
            del self._by_sender[sender]
        return cert

    def drop_below(self, sender: bytes, sequence: int) -> None:
        """Forget the sender's entries below `sequence` (already applied)."""
        mine = self._by_sender.get(sender)
        if not mine:
            return
        for q in [q for q in mine if q < sequence]:
            del mine[q]
            self._n -= 1
        if not mine:
            del self._by_sender[sender]

    def senders(self) -> list[bytes]:
        return list(self._by_sender)
