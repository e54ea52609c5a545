"""The ledger state's records: an account, the supply counters, and the `Delta` one applied
certificate makes (what the store writes in one batch), and the state root's leaf hash. Split
out of state.py, which re-exports them.

An account and the supply remember their leaf (computed at most once per record object: the
records are frozen, and the leaf is a function of the tag, key and encoding), so the staging
state and the `install` that follows it (state.py) hash each new record once, not four times
(old and new leaf, in each of the two states)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import msgpack

from fognode.ledger.escrow import Escrow
from fognode.ledger.messages import Certificate
from fognode.ledger.rewardpool import RewardPool
from fognode.node.wire import unpack

ZERO32 = bytes(32)


def leaf(tag: bytes, key: bytes, value: bytes) -> int:
    """A state entry's leaf: BLAKE2b-512(tag || key || value) as an integer (state.py)."""
    return int.from_bytes(hashlib.blake2b(tag + key + value, digest_size=64).digest(), "big")


@dataclass(frozen=True)
class Account:
    balance: int = 0
    next_sequence: int = 0
    bonded: int = 0
    unbonding: tuple[tuple[int, int], ...] = ()    # (release epoch, amount), oldest first
    head: bytes = ZERO32                           # hash chain of applied tx ids
    _enc: bytes | None = field(init=False, default=None, repr=False, compare=False)
    _leaf: tuple[bytes, int] | None = field(init=False, default=None, repr=False, compare=False)

    def encode(self) -> bytes:
        """pack([balance, next_sequence, bonded, [[epoch, amount]...], head]) (a list of ints
        and bytes: canonical without the map-sorting walk), computed once per record."""
        enc = self._enc
        if enc is None:
            enc = msgpack.packb([self.balance, self.next_sequence, self.bonded,
                                 [[e, a] for e, a in self.unbonding], self.head], use_bin_type=True)
            object.__setattr__(self, "_enc", enc)
        return enc

    def leaf(self, key: bytes) -> int:
        """leaf(b"A", key, encode()): the state root's leaf of this record at account `key`,
        remembered for the last key asked (module docstring)."""
        memo = self._leaf
        if memo is not None and memo[0] == key:
            return memo[1]
        h = leaf(b"A", key, self.encode())
        object.__setattr__(self, "_leaf", (key, h))
        return h

    @classmethod
    def decode(cls, data: bytes) -> "Account":
        b, n, s, u, h = unpack(data, what="ledger account record")
        return cls(b, n, s, tuple((e, a) for e, a in u), h)

    def matured(self, epoch: int) -> int:
        return sum(a for e, a in self.unbonding if e <= epoch)

    def spendable(self, epoch: int) -> int:
        return self.balance + self.matured(epoch)

    def release(self, epoch: int) -> "Account":
        """Move unbonding entries matured at `epoch` into the balance."""
        m = self.matured(epoch)
        if not m:
            return self
        return replace(self, balance=self.balance + m,
                       unbonding=tuple((e, a) for e, a in self.unbonding if e > epoch))

    @property
    def is_empty(self) -> bool:
        return (not self.balance and not self.next_sequence and not self.bonded and not self.unbonding
                and self.head == ZERO32)


@dataclass(frozen=True)
class Supply:
    initial: int
    minted: int = 0
    burned: int = 0

    @property
    def total(self) -> int:
        return self.initial + self.minted - self.burned

    _leaf: int | None = field(init=False, default=None, repr=False, compare=False)

    def encode(self) -> bytes:
        return msgpack.packb([self.initial, self.minted, self.burned])

    def leaf(self) -> int:
        """leaf(b"S", b"", encode()), computed once per record (module docstring)."""
        h = self._leaf
        if h is None:
            h = leaf(b"S", b"", self.encode())
            object.__setattr__(self, "_leaf", h)
        return h

    @classmethod
    def decode(cls, data: bytes) -> "Supply":
        i, m, b = unpack(data, what="ledger supply record")
        return cls(i, m, b)


@dataclass(frozen=True)
class Delta:
    """Everything one applied certificate changed: what the store writes in one batch."""

    cert: Certificate
    index: int                                  # position in this replica's apply log (1-based)
    accounts: tuple[tuple[bytes, Account], ...]
    supply: Supply
    minted_epoch: tuple[int, int] | None        # (epoch, minted so far in that epoch)
    claim_id: bytes | None                      # the paid receipt's claim id (receipts.py)
    accumulator: int
    parties: tuple[bytes, ...]                  # accounts whose history lists this tx
    stake_delta: tuple[int, bytes, int] | None = None   # (order epoch, staker, net bonded in that epoch)
    escrow: tuple[bytes, Escrow] | None = None          # (escrow id, its record after this order)
    pool: tuple[bytes, RewardPool] | None = None        # (pool id, its record after this order)
