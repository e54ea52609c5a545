"""Market errors, RPC codes (3xx) and the reasons a peer's market message is refused.

- `MarketError`: a market operation could not be carried out (the message says why).
- `ConstraintError`: a constraint filter does not parse or does not type-check; carries the
  0-based character `position` of the problem. Whose fault it is depends on where the text
  came from: the RPC layer answers BAD_FILTER to its client, the demand decoder turns it into
  a `Rejected(MALFORMED)` for the peer that sent it.
- `Rejected`: a peer's offer, demand, bid or negotiation message was refused; `reason` is the
  label of the rejection metric and `reason.charged` says whether the peer is penalised for it
  (a malformed or forged message is the sender's fault; an offer that expired while gossip
  carried it, or a replay of one we hold, is not).
"""
from __future__ import annotations

import enum

from fognode.node.errors import FognodeError, RemoteProtocolError

# RPC error codes (DESIGN.md: market 3xx)
BAD_FILTER = 300            # a constraint filter does not parse or type-check
UNKNOWN_OFFER = 301         # no such offer in the order book
UNKNOWN_CONTRACT = 302      # no agreement with that id
NO_MATCH = 303              # no offer matches the demand within its budget
BAD_REQUEST = 304           # a demand or offer parameter is out of range
NEGOTIATION_FAILED = 305    # the provider rejected, timed out or broke the protocol
JOB_FAILED = 306            # a job could not be completed (no provider left, deadline passed)
PAYMENT_FAILED = 307        # the ledger refused or did not certify an escrow order (or runs not here)


class MarketError(FognodeError):
    """A market operation could not be carried out (the message says why)."""


class ConstraintError(FognodeError, ValueError):
    """A constraint filter is not valid; `position` is where (0-based character index)."""

    def __init__(self, message: str, position: int) -> None:
        self.position = position
        self.detail = message
        super().__init__(f"constraint filter: at {position}: {message}")


class RejectReason(enum.Enum):
    """Why a peer's market message was refused (the label of the rejection metric)."""

    OVERSIZE = "oversize"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    SPOOFED_ORIGIN = "spoofed_origin"    # gossip origin is not the signer
    EQUIVOCATION = "equivocation"        # two different messages signed with one sequence
    UNEXPECTED = "unexpected"            # a negotiation message out of turn or for another party
    EXPIRED = "expired"
    FUTURE = "future"                    # issued too far ahead of our clock
    STALE_SEQ = "stale_seq"              # not newer than what we hold
    DUPLICATE = "duplicate"
    CAPACITY = "capacity"                # a bounded table is full
    OVER_BUDGET = "over_budget"          # a bid above the demand's per-replica budget

    @property
    def charged(self) -> bool:
        """True when the sender is at fault (its score is lowered)."""
        return self in _CHARGED


_CHARGED = frozenset({RejectReason.OVERSIZE, RejectReason.MALFORMED, RejectReason.BAD_SIGNATURE,
                      RejectReason.SPOOFED_ORIGIN, RejectReason.EQUIVOCATION,
                      RejectReason.UNEXPECTED})


class Rejected(RemoteProtocolError):
    """A peer's market message was refused; `reason` is counted in the metrics."""

    def __init__(self, reason: RejectReason, message: str, *, peer: str | None = None) -> None:
        self.reason = reason
        super().__init__(f"{reason.value}: {message}", peer=peer)
