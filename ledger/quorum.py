"""Committees (validators weighted by stake, quorum > 2/3 of the stake) and the Ed25519
signature check the ledger's hot paths use. Certificates are checked against a committee in
certcheck.py."""
from __future__ import annotations

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


def check_signature(pubkey: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 check through libsodium directly (same rule as node.wire.verify_bytes, which
    builds a VerifyKey object per call; this is the ledger's hot path)."""
    if len(pubkey) != 32 or len(signature) != 64:
        return False
    try:
        crypto_sign_open(signature + message, pubkey)
        return True
    except (BadSignatureError, ValueError):
        return False
    except Exception:   # libsodium rejects some points with CryptoError
        return False
