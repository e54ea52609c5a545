"""Registry errors, RPC codes (7xx) and the reasons a record or observation is rejected."""
from __future__ import annotations

import enum

from fognode.node.errors import FognodeError, RemoteProtocolError

# RPC error codes (DESIGN.md: registry 7xx)
UNKNOWN_DEVICE = 700        # registry.show: no record for that peer in the view or the DHT
BAD_PEER_ID = 701           # a parameter is not a valid peer id
BAD_FILTER = 702            # registry.devices: a filter value is out of range
DHT_UNAVAILABLE = 703       # the DHT look-up failed (overlay error or timeout)
UNKNOWN_SERVICE = 704       # reputation.show: no scores for that service
BAD_REPORT = 705            # reputation.report: refused (about ourselves, bad weight, over our rate)


class RegistryError(FognodeError):
    """A registry operation could not be carried out (the message says why)."""


class RejectReason(enum.Enum):
    """Why a device record or an observation was refused (the label of the rejection metric)."""

    OVERSIZE = "oversize"
    MALFORMED = "malformed"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    FOREIGN_KEY = "foreign_key"
    WRONG_KEY = "wrong_key"            # DHT key names another peer than the record
    EXPIRED = "expired"
    FUTURE = "future"                  # issued too far ahead of our clock
    STALE_SEQ = "stale_seq"            # a lower sequence than one already seen
    SELF_OBSERVATION = "self_observation"
    RATE_LIMITED = "rate_limited"
    DUPLICATE = "duplicate"
    SPOOFED_ORIGIN = "spoofed_origin"  # gossip origin is not the signer
    CAPACITY = "capacity"              # a bounded table is full


class Rejected(RemoteProtocolError, ValueError):
    """A peer's record or observation was refused; `reason` is counted in the metrics.

    Also a ValueError, which is what DHT validators raise (node/overlay.DhtValidator).
    """

    def __init__(self, reason: RejectReason, message: str, *, peer: str | None = None) -> None:
        self.reason = reason
        RemoteProtocolError.__init__(self, f"{reason.value}: {message}", peer=peer)
