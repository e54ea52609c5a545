"""Committees (validators weighted by stake, quorum > 2/3 of the stake) and the Ed25519
signature check the ledger's hot paths use. Certificates are checked against a committee in
certcheck.py.

The signature check remembers the last VERIFIED_CACHE_SIZE good (key, signature, message)
triples: a gossiped certificate is checked before it is relayed (certgossip.py) and again when
the replica applies it, and the second check of the same bytes is a dictionary lookup instead
of an Ed25519 verification. Only successes are remembered, and a hit needs the very same key,
signature and message bytes, so the cache can never accept what libsodium would refuse. The
signatures this node makes are remembered too (`remember_signed`, called by the ledger's
signing constructors): Ed25519 signing is deterministic and its output verifies by
construction, so this node's own validator need not verify the order its own wallet just
signed, nor its replica the vote it cast itself (about 3 of the 19 verifications of a
transfer in a committee of 4; session 30). The
oldest entry goes first, in constant time (an OrderedDict: dropping the first key of a plain
dict leaves a hole that every later `next(iter(...))` walks over again, about 2.6 us per
insertion at this size against 0.25; session 27)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError


@dataclass(frozen=True)
class Committee:
    """Validators (pubkey -> stake) certifying one epoch."""

    members: Mapping[bytes, int]
    total: int

    @classmethod
    def of(cls, members: Mapping[bytes, int]) -> "Committee":
        if not members:
            raise ValueError("a committee needs at least one validator")
        return cls(members=dict(sorted(members.items())), total=sum(members.values()))

    def is_quorum(self, stake: int) -> bool:
        """More than 2/3 of the total stake."""
        return 3 * stake > 2 * self.total

    @property
    def quorum_stake(self) -> int:
        """The smallest stake that is a quorum."""
        return (2 * self.total) // 3 + 1

    @property
    def max_faulty_stake(self) -> int:
        """The largest faulty stake the quorum rule tolerates (f of 3f+1)."""
        return (self.total - 1) // 3

    def stake_of(self, key: bytes) -> int:
        return self.members.get(key, 0)

    def __contains__(self, key: object) -> bool:
        return key in self.members


VERIFIED_CACHE_SIZE = 4096
_verified: OrderedDict[bytes, bytes] = OrderedDict()      # pubkey + signature -> the message it signs
_verified_lock = threading.Lock()       # the store's writer thread shares this module


def remember_signed(pubkey: bytes, message: bytes, signature: bytes) -> None:
    """Record a signature this node has just made over `message` with the key of `pubkey`
    (module docstring): a later check of the same triple is a lookup."""
    _remember(bytes(pubkey) + bytes(signature), bytes(message))


def _remember(key: bytes, message: bytes) -> None:
    with _verified_lock:
        if len(_verified) >= VERIFIED_CACHE_SIZE:
            _verified.popitem(last=False)
        _verified[key] = message


def check_signature(pubkey: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 check through libsodium directly (same rule as node.wire.verify_bytes, which
    builds a VerifyKey object per call; this is the ledger's hot path). A triple verified
    recently is answered from the cache (module docstring)."""
    if len(pubkey) != 32 or len(signature) != 64:
        return False
    key = bytes(pubkey) + bytes(signature)
    if _verified.get(key) == message:
        return True
    try:
        crypto_sign_open(signature + message, pubkey)
    except (BadSignatureError, ValueError):
        return False
    except Exception:   # libsodium rejects some points with CryptoError
        return False
    _remember(key, bytes(message))
    return True
