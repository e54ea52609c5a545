"""The client side of an order: collect votes from validators until they form a certificate.

`VoteCollector` is fed the validators' answers (votes and rejections, in any order, duplicates
allowed) and says when a quorum certificate exists or when enough stake refused that none can.
After each round of asking, `decide(now, deadline)` says what the client does next (the retry
policy): take the certificate, give up with the refusal, give up at the deadline, or ask again.
A refusal for a reason that only says the validator lags behind (wrong sequence, overspend:
the submitting replica checked both first; "not yet": a new member still waiting for the old
committee's locks; an escrow it has not seen opened yet; an escrow phase its clock has not
reached yet) is never final: the client keeps asking until the deadline.
"""
from __future__ import annotations

import enum

from fognode.ledger.errors import Reason
from fognode.ledger.messages import Certificate, Rejection, SignedOrder, Vote
from fognode.ledger.quorum import Committee


class OrderStatus(enum.Enum):
    COLLECTING = "collecting"
    CERTIFIED = "certified"
    FAILED = "failed"        # more than 1/3 of the stake refused: no quorum is possible


# refusals that mean "this validator is behind", cured by waiting (see the module docstring)
LAGGING_REASONS = frozenset({Reason.WRONG_SEQUENCE, Reason.OVERSPEND, Reason.NOT_YET, Reason.ESCROW_UNKNOWN,
                             Reason.ESCROW_TOO_EARLY, Reason.POOL_UNKNOWN, Reason.POOL_TOO_EARLY,
                             Reason.POOL_UNSETTLED})


class Decision(enum.Enum):
    """What the client does after a round of asking (VoteCollector.decide)."""

    CERTIFIED = "certified"      # the votes form a certificate: apply and gossip it
    REJECTED = "rejected"        # enough stake refused for a reason waiting does not cure
    EXPIRED = "expired"          # the deadline passed without a certificate: the order stays in flight
    RETRY = "retry"              # ask the validators that did not vote again after the retry interval


class VoteCollector:
    def __init__(self, order: SignedOrder, committee: Committee) -> None:
        self.order = order
        self.committee = committee
        self.votes: dict[bytes, Vote] = {}
        self.rejections: dict[bytes, Rejection] = {}
        self.certificate: Certificate | None = None

    @property
    def status(self) -> OrderStatus:
        if self.certificate is not None:
            return OrderStatus.CERTIFIED
        refused = sum(self.committee.stake_of(v) for v in self.rejections)
        if refused > self.committee.total - self.committee.quorum_stake:
            return OrderStatus.FAILED
        return OrderStatus.COLLECTING

    def add_vote(self, vote: Vote) -> Certificate | None:
        """Take a vote (ignored unless valid, for this order, from a member); the certificate
        once the votes make a quorum."""
        if self.certificate is not None:
            return self.certificate
        if vote.tx_id != self.order.tx_id or vote.validator not in self.committee:
            return None
        if vote.validator in self.votes or not vote.signature_ok():
            return None
        self.votes[vote.validator] = vote
        self.rejections.pop(vote.validator, None)
        stake = sum(self.committee.stake_of(v) for v in self.votes)
        if self.committee.is_quorum(stake):
            self.certificate = Certificate.from_votes(self.order, list(self.votes.values()))
        return self.certificate

    def add_rejection(self, validator: bytes, rejection: Rejection) -> None:
        if validator in self.committee and validator not in self.votes and rejection.tx_id == self.order.tx_id:
            self.rejections[validator] = rejection

    def reasons(self) -> dict[str, str]:
        """Validator (hex prefix) -> "reason: message" for the status report."""
        return {v.hex()[:16]: f"{r.reason.value}: {r.message}" for v, r in self.rejections.items()}

    def unasked(self, me: bytes, asking: set[bytes]) -> list[bytes]:
        """The members to ask now: not `me`, not voted yet, not being asked already (a
        rejection is asked again: the validator may have caught up)."""
        if self.certificate is not None:
            return []
        return [v for v in self.committee.members if v != me and v not in self.votes and v not in asking]

    def decide(self, now: float, deadline: float) -> Decision:
        """The retry policy (module docstring), after a round of asking ended at `now`."""
        if self.certificate is not None:
            return Decision.CERTIFIED
        reason = self.main_reason()
        if self.status is OrderStatus.FAILED and reason is not None and reason not in LAGGING_REASONS:
            return Decision.REJECTED
        if now >= deadline:
            return Decision.EXPIRED
        return Decision.RETRY

    def main_reason(self) -> Reason | None:
        counts: dict[Reason, int] = {}
        for v, r in self.rejections.items():
            counts[r.reason] = counts.get(r.reason, 0) + self.committee.stake_of(v)
        return max(counts, key=lambda k: counts[k]) if counts else None
