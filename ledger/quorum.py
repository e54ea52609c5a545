"""Committees and certificate verification (quorum > 2/3 of the epoch committee's stake).

The checks a replica runs before applying anything: every signer is in the committee of the
order's epoch, no signer appears twice, the signers' stake is more than 2/3 of the committee's,
every signature is valid. Signatures are checked last (cheapest checks first) and only once per
certificate; votes sign a 32-byte digest, not the whole order, so a vote check hashes little.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from fognode.ledger.errors import CertificateRejected, Reason

if TYPE_CHECKING:
    from fognode.ledger.messages import Certificate


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


def verify_certificate(cert: "Certificate", committee: Committee, *, verify_sender: bool = True) -> None:
    """Raise CertificateRejected unless `cert` is a valid quorum certificate of `committee`.

    `verify_sender=False` skips the sender's signature: sound when at most f validators are
    faulty (at least one honest validator checked it before voting); replicas catching up use
    it, validators and `ledger.verify` do not.
    """
    seen: set[bytes] = set()
    stake = 0
    for validator, _sig in cert.votes:
        if validator in seen:
            raise CertificateRejected(Reason.DUPLICATE_SIGNER,
                                      f"certificate {cert.tx_id.hex()[:16]} lists validator {validator.hex()[:16]} twice")
        seen.add(validator)
        s = committee.members.get(validator)
        if s is None:
            raise CertificateRejected(Reason.NON_COMMITTEE_SIGNER,
                                      f"certificate {cert.tx_id.hex()[:16]} is signed by {validator.hex()[:16]}, "
                                      f"not in the committee of epoch {cert.order.order.epoch}")
        stake += s
    if not committee.is_quorum(stake):
        raise CertificateRejected(Reason.NO_QUORUM,
                                  f"certificate {cert.tx_id.hex()[:16]} carries {stake} of {committee.total} stake, "
                                  f"needs more than 2/3 ({committee.quorum_stake})")
    if verify_sender and not cert.order.signature_ok():
        raise CertificateRejected(Reason.BAD_SIGNATURE,
                                  f"certificate {cert.tx_id.hex()[:16]}: the sender's signature is invalid")
    msg = cert.vote_message
    for validator, sig in cert.votes:
        if not check_signature(validator, msg, sig):
            raise CertificateRejected(Reason.BAD_SIGNATURE,
                                      f"certificate {cert.tx_id.hex()[:16]}: vote of {validator.hex()[:16]} is invalid")
