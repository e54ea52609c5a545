"""The client side of an order: collect votes from validators until they form a certificate.

`VoteCollector` is fed the validators' answers (votes and rejections, in any order, duplicates
allowed) and says when a quorum certificate exists or when enough stake refused *for good* that
none can. After each round of asking, `decide(now, deadline)` says what the client does next
(the retry policy): take the certificate, give up with the refusal, give up at the deadline, or
ask again.

What a refusal can mean (validator.py, state.py, escrow.py, rewardpool.py):
- transient, "this validator is behind" (`LAGGING_REASONS`): wrong sequence or overspend (it
  has not applied the sender's earlier certificates or incoming funds: the request carries the
  previous certificate, and a validator that cannot apply it pulls the sender's history from
  the requester at once, service.py `_order_reply`), "not yet" (a new member still waiting for
  the old committee's locks), an escrow or pool it has not seen opened, a phase its clock has
  not reached, payouts it signed not applied yet. Waiting cures them: they never count toward
  "no quorum is possible", and the client keeps asking the SAME order until the deadline (and
  the wallet's next send drives it again after that: submit.py).
- final: the order itself is bad (signature, chain, fee, amounts, evidence), or this validator
  holds a lock that excludes it (CONFLICT: another order of the sender for the sequence;
  RECEIPT_USED, a scope's other commit, a closed or exhausted pool, an escrow sequence: another
  order took what this one needs), or it is too late (epoch, escrow or pool phase). An honest
  validator never changes such an answer while its locks stand.

Quorum arithmetic (T total stake, q = floor(2T/3) + 1 the quorum, f = floor((T-1)/3) the
faulty stake tolerated; T + f < 2q for every T):
- final refusals of more than T - q stake: no quorum of votes can form without one of them
  changing its mind, so the order is REJECTED (FAILED). Nothing is dropped on that alone:
  submit.py drops the order only if no validator voted for it (nor may have); otherwise the
  wallet stays at that sequence (OrderStuck), because a validator that voted would see another
  order for it as a fork.
- final refusals of at least q stake: even with f of them faulty, the honest refusers hold
  q - f > T - q stake, so the order can NEVER be certified (any quorum of votes would include
  an honest refuser). Only then would releasing the sequence be sound: `never_certifiable`.
  The release itself is not built: the validators that voted for the order would have to be
  shown that proof (signed, durable refusals: a refusal backed by a lock that can itself be
  released is not durable, so each refuser must persist "never this order" before signing),
  and swap their lock for the sender's next order. FastPay never releases (a client that
  cannot certify its order is stuck at that sequence for good); Sui releases an equivocated
  object's locks only at the end of the epoch, through consensus on the epoch's last
  checkpoint, which this ledger does not have: its certificates stay valid across epochs.
- between the two (a split vote: some voted, more than T - q refused for good, fewer than q):
  neither a certificate nor a proof that none can exist is possible; only a change of mind of
  the refusers (their locks) could end it, and the wallet stays stuck at that sequence.
"""
from __future__ import annotations

import enum
import hashlib
from typing import Mapping

from fognode.ledger.errors import Reason
from fognode.ledger.messages import Certificate, Rejection, SignedOrder, Vote
from fognode.ledger.quorum import Committee


HUNG_WAITING = 8      # requests waiting on one validator that make `first_asks` pass it over


class OrderStatus(enum.Enum):
    COLLECTING = "collecting"
    CERTIFIED = "certified"
    FAILED = "failed"        # more than 1/3 of the stake refused: no quorum is possible


# refusals that mean "this validator is behind", cured by waiting (see the module docstring)
LAGGING_REASONS = frozenset({Reason.WRONG_SEQUENCE, Reason.OVERSPEND, Reason.NOT_YET, Reason.ESCROW_UNKNOWN,
                             Reason.ESCROW_TOO_EARLY, Reason.POOL_UNKNOWN, Reason.POOL_TOO_EARLY,
                             Reason.POOL_UNSETTLED})


def is_final(reason: Reason) -> bool:
    """Whether a refusal for `reason` stands while the validator's locks stand (module docstring)."""
    return reason not in LAGGING_REASONS


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
        """FAILED once final refusals exceed T - q stake (lagging ones never count)."""
        if self.certificate is not None:
            return OrderStatus.CERTIFIED
        if self.refused_for_good() > self.committee.total - self.committee.quorum_stake:
            return OrderStatus.FAILED
        return OrderStatus.COLLECTING

    def refused_for_good(self) -> int:
        """The stake of the validators whose refusal is final (`is_final`)."""
        return sum(self.committee.stake_of(v) for v, r in self.rejections.items() if is_final(r.reason))

    def never_certifiable(self) -> bool:
        """Final refusals of at least a quorum: with at most f faulty stake, no quorum of votes
        can ever form (module docstring), whoever asks and whenever."""
        return self.certificate is None and self.committee.is_quorum(self.refused_for_good())

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

    def first_asks(self, targets: list[bytes], asking: set[bytes], key: bytes,
                   waiting: Mapping[bytes, int] | None = None, prefer: frozenset[bytes] = frozenset()
                   ) -> list[bytes]:
        """Of `targets` (`unasked`), the fewest to ask first: with the stake that voted and the
        stake being asked already, they make a quorum if all vote (all of `targets` if even
        that is short). Larger stakes first; then, unless it has HUNG_WAITING of this node's
        requests `waiting` for an answer (a hung validator piles them up), a validator in
        `prefer` (those that signed the sender's previous certificate: they hold the sender's
        history up to it, so the order's `prev` applies there; another validator may still
        wait for the gossip of an earlier certificate and refuse with `wrong_sequence`); then
        the fewest waiting; then spread over the committee by `key` (the order's id), so no
        validator gets every sender's orders. submit.py asks the others after its hedge delay,
        or at once when a first one refuses or fails."""
        c = self.committee
        busy = waiting or {}
        have = sum(c.stake_of(v) for v in self.votes) + sum(c.stake_of(v) for v in asking if v not in self.votes)
        chosen: list[bytes] = []
        for v in sorted(targets, key=lambda v: (-c.stake_of(v), busy.get(v, 0) >= HUNG_WAITING, v not in prefer,
                                                busy.get(v, 0), hashlib.blake2b(key + v, digest_size=8).digest())):
            if c.is_quorum(have):
                break
            chosen.append(v)
            have += c.stake_of(v)
        return chosen if c.is_quorum(have) else list(targets)

    def decide(self, now: float, deadline: float) -> Decision:
        """The retry policy (module docstring), after a round of asking ended at `now`."""
        if self.certificate is not None:
            return Decision.CERTIFIED
        if self.status is OrderStatus.FAILED:
            return Decision.REJECTED
        if now >= deadline:
            return Decision.EXPIRED
        return Decision.RETRY

    def main_reason(self) -> Reason | None:
        """The refusal reason with the most stake, final ones first (a lagging reason only
        when no refusal is final)."""
        counts: dict[Reason, int] = {}
        for v, r in self.rejections.items():
            counts[r.reason] = counts.get(r.reason, 0) + self.committee.stake_of(v)
        final = {k: n for k, n in counts.items() if is_final(k)}
        pick = final or counts
        return max(pick, key=lambda k: (pick[k], k.value)) if pick else None
