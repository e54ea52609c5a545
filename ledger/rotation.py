"""Certifying the next committee: the sans-IO cores of the member that signs and of the node
that assembles (the rules are in committee.py).

`CommitteeSigner.receive(peer, body, now)` returns `[PersistCommitteeLock, SendCommitteeVote]`
(the lock is written, synced, before the vote leaves, so a restarted validator never signs a
second body for one epoch) or `[SendCommitteeRefusal]` with a reason; `Reason.NOT_YET` means
"my replica computes another committee or knows another certifying committee: sync with me and
ask again". `proposal(state, now)` is the body a member proposes when one is due, and
`CommitteeCollector` gathers votes into a `CommitteeCertificate`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from nacl.signing import SigningKey

from fognode.ledger.committee import (CommitteeBody, CommitteeCertificate, CommitteeVote, committee_hash,
                                      target_epoch)
from fognode.ledger.errors import Reason
from fognode.ledger.quorum import Committee, check_signature
from fognode.ledger.state import LedgerState


@dataclass(frozen=True)
class PersistCommitteeLock:
    """Durably record that this validator signs `body` for its epoch."""

    body: CommitteeBody


@dataclass(frozen=True)
class SendCommitteeVote:
    peer: str
    vote: CommitteeVote


@dataclass(frozen=True)
class SendCommitteeRefusal:
    peer: str
    epoch: int
    reason: Reason
    message: str


CommitteeAction = Union[PersistCommitteeLock, SendCommitteeVote, SendCommitteeRefusal]


def proposal(state: LedgerState, now: float) -> CommitteeBody | None:
    """The committee body due for signing at `now` from this replica's view, or None (not
    due yet, already certified, or no account has enough stake)."""
    g = state.genesis
    target = target_epoch(g, now)
    if target is None or state.committees.certified(target) is not None:
        return None
    members = state.computed_members(target)
    if not members:
        return None
    return CommitteeBody(g.chain_id, target, members, committee_hash(state.committee_for(target - 1)))


class CommitteeSigner:
    """A validator's side: sign at most one committee body per epoch, and only the one its own
    replica computes."""

    def __init__(self, key: SigningKey, state: LedgerState, locks: dict[int, CommitteeBody]) -> None:
        self.key = key
        self.pubkey = bytes(key.verify_key)
        self.state = state
        self.locks = locks
        self.refused: dict[Reason, int] = {}

    def _refuse(self, peer: str, body: CommitteeBody, reason: Reason, message: str) -> list[CommitteeAction]:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return [SendCommitteeRefusal(peer, body.epoch, reason, message)]

    def receive(self, peer: str, body: CommitteeBody, now: float) -> list[CommitteeAction]:
        g = self.state.genesis
        e = body.epoch
        if body.chain != g.chain_id:
            return self._refuse(peer, body, Reason.WRONG_CHAIN, f"committee body is for chain {body.chain!r}")
        mine = self.locks.get(e)
        if mine is not None:
            if mine == body:       # asked again: the same vote, nothing new to lock
                return [SendCommitteeVote(peer, CommitteeVote.sign(self.key, body))]
            return self._refuse(peer, body, Reason.CONFLICT, f"this validator already signed another committee "
                                                             f"of epoch {e}")
        due = target_epoch(g, now)
        if due != e:
            return self._refuse(peer, body, Reason.WRONG_EPOCH,
                                f"the committee of epoch {e} is not being signed now (due: {due})")
        old = self.state.committee_for(e - 1)
        if self.pubkey not in old:
            return self._refuse(peer, body, Reason.NON_COMMITTEE_SIGNER,
                                f"this node is not in the committee of epoch {e - 1}")
        pending = [x for x in self.locks if self.state.committees.latest_epoch() < x < e]
        if pending:
            return self._refuse(peer, body, Reason.NOT_YET,
                                f"this validator signed the committee of epoch {max(pending)} and does not hold "
                                f"its certificate yet")
        if body.prev_hash != committee_hash(old):
            return self._refuse(peer, body, Reason.NOT_YET, f"the proposal is certified by another committee of "
                                                            f"epoch {e - 1} than this replica's")
        computed = self.state.computed_members(e)
        if body.members != computed:
            return self._refuse(peer, body, Reason.NOT_YET,
                                f"this replica computes {len(computed)} members with "
                                f"{sum(s for _, s in computed)} stake, the proposal {len(body.members)} with "
                                f"{sum(s for _, s in body.members)}")
        self.locks[e] = body
        return [PersistCommitteeLock(body), SendCommitteeVote(peer, CommitteeVote.sign(self.key, body))]


class CommitteeCollector:
    """Votes of the old committee on one body until they form a certificate."""

    def __init__(self, body: CommitteeBody, old: Committee) -> None:
        self.body = body
        self.old = old
        self._msg = body.vote_message()
        self.votes: dict[bytes, bytes] = {}
        self.refusals: dict[bytes, tuple[Reason, str]] = {}
        self.certificate: CommitteeCertificate | None = None

    def add_vote(self, vote: CommitteeVote) -> CommitteeCertificate | None:
        """Take a vote (ignored unless valid, for this body, from an old-committee member)."""
        if self.certificate is not None:
            return self.certificate
        if vote.body_hash != self.body.body_hash or vote.validator not in self.old or vote.validator in self.votes:
            return None
        if not check_signature(vote.validator, self._msg, vote.signature):
            return None
        self.votes[vote.validator] = vote.signature
        self.refusals.pop(vote.validator, None)
        if self.old.is_quorum(sum(self.old.stake_of(v) for v in self.votes)):
            self.certificate = CommitteeCertificate(self.body, tuple(sorted(self.votes.items())))
        return self.certificate

    def add_refusal(self, validator: bytes, reason: Reason, message: str) -> None:
        if validator in self.old and validator not in self.votes:
            self.refusals[validator] = (reason, message)
