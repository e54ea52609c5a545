"""Who pays for the gossip tracker's state: per-peer and total accounts with caps (sans-IO).

The gap tracker (gossip_tracker.py) charges each tracked (topic, origin) to one peer, its
sponsor. `Charges` keeps, per peer, the origins it sponsors (least recently active first), the
missing seqs and the pulls in flight charged to it, the same three in total, and the peak of
each since start. It answers "is there room" against `Caps`; it never decides what to refuse.

Invariants: every count is >= 0; a peer with nothing charged has no account; totals are the
sums over peers (`check`).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Hashable

RESOURCES = ("origins", "missing", "pulls", "peer_origins", "peer_missing", "peer_pulls")


@dataclass(frozen=True)
class Caps:
    origins: int
    origins_per_peer: int
    missing: int
    missing_per_peer: int
    pulls: int
    pulls_per_peer: int


@dataclass(eq=False)
class Account:
    origins: OrderedDict[Hashable, None] = field(default_factory=OrderedDict)  # LRU first
    missing: int = 0
    pulls: int = 0


class Charges:
    def __init__(self, caps: Caps) -> None:
        self.caps = caps
        self.accounts: dict[str, Account] = {}
        self.origins = 0
        self.missing = 0
        self.pulls = 0
        self.peaks: dict[str, int] = dict.fromkeys(RESOURCES, 0)

    def get(self, peer: str) -> Account:
        return self.accounts.get(peer) or Account()

    def of(self, peer: str) -> tuple[int, int, int]:
        """(origins, missing seqs, pulls in flight) charged to `peer`."""
        a = self.get(peer)
        return len(a.origins), a.missing, a.pulls

    def lru_origin(self, peer: str) -> Hashable | None:
        a = self.accounts.get(peer)
        return next(iter(a.origins)) if a is not None and a.origins else None

    def largest(self) -> str | None:
        """The peer sponsoring the most origins (O(peers); only under pressure)."""
        return max(self.accounts, key=lambda p: len(self.accounts[p].origins), default=None)

    # -- room -----------------------------------------------------------------------------

    def origin_room(self, peer: str) -> tuple[bool, bool]:
        """(room under the peer's cap, room under the total cap) for one more origin."""
        return (len(self.get(peer).origins) < self.caps.origins_per_peer,
                self.origins < self.caps.origins)

    def missing_room(self, peer: str) -> tuple[int, int]:
        """(missing seqs the peer may still add, missing seqs anyone may still add)."""
        return (self.caps.missing_per_peer - self.get(peer).missing,
                self.caps.missing - self.missing)

    def pull_room(self, peer: str) -> tuple[bool, bool]:
        return self.get(peer).pulls < self.caps.pulls_per_peer, self.pulls < self.caps.pulls

    def can_take(self, peer: str, missing: int, pulls: int) -> bool:
        """Room at `peer` for one more origin holding `missing` seqs and `pulls` pulls."""
        a = self.get(peer)
        return (len(a.origins) < self.caps.origins_per_peer
                and a.missing + missing <= self.caps.missing_per_peer
                and a.pulls + pulls <= self.caps.pulls_per_peer)

    # -- changes --------------------------------------------------------------------------

    def _account(self, peer: str) -> Account:
        a = self.accounts.get(peer)
        if a is None:
            a = self.accounts[peer] = Account()
        return a

    def add_origin(self, peer: str, key: Hashable) -> None:
        a = self._account(peer)
        a.origins[key] = None
        self.origins += 1
        self._peak("origins", self.origins)
        self._peak("peer_origins", len(a.origins))

    def touch(self, peer: str, key: Hashable) -> None:
        self.accounts[peer].origins.move_to_end(key)

    def remove_origin(self, peer: str, key: Hashable) -> None:
        del self.accounts[peer].origins[key]
        self.origins -= 1
        self._forget_if_empty(peer)

    def add_missing(self, peer: str, delta: int) -> None:
        a = self._account(peer)
        a.missing += delta
        self.missing += delta
        if delta > 0:
            self._peak("missing", self.missing)
            self._peak("peer_missing", a.missing)
        self._forget_if_empty(peer)

    def add_pull(self, peer: str, delta: int) -> None:
        a = self._account(peer)
        a.pulls += delta
        self.pulls += delta
        if delta > 0:
            self._peak("pulls", self.pulls)
            self._peak("peer_pulls", a.pulls)
        self._forget_if_empty(peer)

    def move(self, key: Hashable, old: str, new: str, missing: int, pulls: int) -> None:
        """Move one origin and what it holds from `old` to `new` (totals unchanged)."""
        src, dst = self.accounts[old], self._account(new)
        del src.origins[key]
        dst.origins[key] = None
        src.missing -= missing
        dst.missing += missing
        src.pulls -= pulls
        dst.pulls += pulls
        self._peak("peer_origins", len(dst.origins))
        self._peak("peer_missing", dst.missing)
        self._peak("peer_pulls", dst.pulls)
        self._forget_if_empty(old)

    def _forget_if_empty(self, peer: str) -> None:
        a = self.accounts.get(peer)
        if a is not None and not a.origins and not a.missing and not a.pulls:
            del self.accounts[peer]

    def _peak(self, name: str, value: int) -> None:
        if value > self.peaks[name]:
            self.peaks[name] = value

    # -- observation ----------------------------------------------------------------------

    def sizes(self) -> dict[str, int]:
        """Current totals and the largest per-peer values (O(peers))."""
        accts = list(self.accounts.values())
        return {"origins": self.origins, "missing": self.missing, "pulls": self.pulls,
                "peer_origins": max((len(a.origins) for a in accts), default=0),
                "peer_missing": max((a.missing for a in accts), default=0),
                "peer_pulls": max((a.pulls for a in accts), default=0)}

    def check(self) -> None:
        """Assert the invariants and the caps."""
        c = self.caps
        assert self.origins == sum(len(a.origins) for a in self.accounts.values())
        assert self.missing == sum(a.missing for a in self.accounts.values())
        assert self.pulls == sum(a.pulls for a in self.accounts.values())
        assert self.origins <= c.origins and self.missing <= c.missing and self.pulls <= c.pulls
        for peer, a in self.accounts.items():
            assert a.origins or a.missing or a.pulls, f"empty account of {peer}"
            assert a.missing >= 0 and a.pulls >= 0
            assert len(a.origins) <= c.origins_per_peer, peer
            assert a.missing <= c.missing_per_peer, peer
            assert a.pulls <= c.pulls_per_peer, peer
