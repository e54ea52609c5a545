"""Actions the sans-IO ledger cores return; the trio adapter (protocol.py) carries them out in
list order (a `PersistLock` is written with sync=True before the `SendVote` after it leaves)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from fognode.ledger.errors import Reason
from fognode.ledger.messages import Certificate, ForkProof, Rejection, SignedOrder, Vote
from fognode.ledger.state import Delta


@dataclass(frozen=True)
class PersistLock:
    """Durably record that this validator signed `order` for its (sender, sequence)."""

    order: SignedOrder


@dataclass(frozen=True)
class SendVote:
    peer: str
    vote: Vote


@dataclass(frozen=True)
class SendRejection:
    peer: str
    rejection: Rejection


@dataclass(frozen=True)
class ReportFork:
    """A sender signed two orders for one sequence; keep the proof and tell the operator."""

    proof: ForkProof
    peer: str


@dataclass(frozen=True)
class Commit:
    """Write this applied certificate's changes to the store (one write batch)."""

    delta: Delta


@dataclass(frozen=True)
class CertificateRefused:
    tx_id: bytes
    reason: Reason
    message: str
    peer: str


@dataclass(frozen=True)
class Queued:
    """The certificate waits: in the pending pool (`why`: "sequence" or "funds") or for the
    committee certificate of its epoch ("committee")."""

    tx_id: bytes
    why: str


@dataclass(frozen=True)
class ConflictingCertificates:
    """Two certificates for one (sender, sequence): more than f validators are faulty."""

    applied_tx: bytes
    other: Certificate


ValidatorAction = Union[PersistLock, SendVote, SendRejection, ReportFork]
ReplicaAction = Union[Commit, CertificateRefused, Queued, ConflictingCertificates]
