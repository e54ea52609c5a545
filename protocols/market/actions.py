"""What the market cores ask their adapter to do (frozen action dataclasses).

The role carries these out with one dispatch table (`service.MarketService.do`): `Publish`
puts a message on a gossip topic, `Send` writes a frame on the market stream to the peer,
`Refused` counts the rejection and, when `reason.charged`, penalises the peer
(overlay.penalize, rate-limited WARNING), `Concluded` hands a signed agreement to escrow,
`NegotiationFailed`, `AuctionClosed` and `OffersExpired` report outcomes.
"""
from __future__ import annotations

from dataclasses import dataclass

from fognode.protocols.market.agreement import Agreement, Terms
from fognode.protocols.market.errors import RejectReason
from fognode.protocols.market.messages import Bid


@dataclass(frozen=True)
class Publish:
    """Publish `data` on gossip `topic`."""

    topic: str
    data: bytes


@dataclass(frozen=True)
class Send:
    peer: str
    data: bytes


@dataclass(frozen=True)
class Refused:
    """Something from `peer` was refused; charge it when `reason.charged`."""

    what: str            # "offer" | "withdraw" | "demand" | "bid" | "negotiation"
    reason: RejectReason
    peer: str
    detail: str


@dataclass(frozen=True)
class Concluded:
    """A negotiation ended with an agreement signed by both parties."""

    peer: str
    agreement: Agreement


@dataclass(frozen=True)
class NegotiationFailed:
    """A negotiation ended without an agreement on our side.

    `signed` is set when we had accepted (signed) terms and the peer's countersigned
    agreement never came: the peer can still build the agreement from both signatures, so
    these terms may yet bind us (the escrow opened for them on the ledger says whether)."""

    peer: str
    nonce: bytes
    reason: str          # "rejected: ...", "timed out", "too many rounds", "protocol: ..."
    signed: Terms | None = None


@dataclass(frozen=True)
class OffersExpired:
    """`count` offers left the order book because their `valid_until` passed."""

    count: int


@dataclass(frozen=True)
class AuctionClosed:
    """The bidding window of `demand` closed; `winners` are the chosen bids (may be empty)."""

    demand: bytes
    winners: tuple[Bid, ...]
    bids: int            # how many valid bids were considered


Action = Publish | Send | Refused | Concluded | NegotiationFailed | OffersExpired | AuctionClosed
