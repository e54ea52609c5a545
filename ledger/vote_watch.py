"""Votes of this validator that no certificate followed: "no quorum" seen without an order of
this node's own (sans-IO; the ledger role's health report asks it).

A validator signs an order (a lock in `LockTable`) and the client gathers the other votes; in
a working committee the certificate is formed within a request timeout or two and reaches
every replica by gossip, or by anti-entropy sync within a sync interval or two. So an order
this validator signed that is still not applied here `after` seconds later (the sender's next
sequence has not moved past it) means the committee could not reach a quorum for it, or that
certificates no longer reach this replica; either way the ledger is degraded, and this node
sees it even when it sends nothing itself.

`VoteWatch.check(locks, state, now)` looks at the locks added since its previous call (the
table keeps insertion order: the newest come last, so a check costs the new votes plus the
ones still waiting), and returns the reason ("" when every watched vote was followed). Votes
from before the first check (reloaded from disk at start) are not watched; a vote not followed
for `forget` seconds is dropped (its sender may have left for good: this stays a hint, not a
permanent state).
"""
from __future__ import annotations

from itertools import islice

from fognode.ledger.state import LedgerState
from fognode.ledger.validator import LockTable


class VoteWatch:
    def __init__(self, after: float, forget: float = 3600.0) -> None:
        self.after = after
        self.forget = forget
        self._locks: LockTable | None = None     # the table watched (a restarted ledger has a new one)
        self._seen = 0                           # its size at the previous check
        self._watched: dict[tuple[bytes, int], float] = {}   # (sender, sequence) -> first seen

    def check(self, locks: LockTable, state: LedgerState, now: float) -> str:
        n = len(locks)
        if locks is not self._locks:
            self._locks, self._seen, self._watched = locks, n, {}
        elif n > self._seen:
            for key in islice(reversed(locks.locks), n - self._seen):
                self._watched.setdefault(key, now)
        self._seen = n
        if not self._watched:       # nothing to follow (the usual case): what the loops below give
            return ""
        for key, first in list(self._watched.items()):
            sender, sequence = key
            if state.account(sender).next_sequence > sequence or now - first > self.forget:
                del self._watched[key]
        late = [first for first in self._watched.values() if now - first >= self.after]
        if not late:
            return ""
        return (f"{len(late)} order(s) this validator signed have no certificate after {now - min(late):.0f} s: "
                "the committee cannot reach a quorum, or certificates do not reach this replica")
