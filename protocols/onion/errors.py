"""Onion errors, RPC codes (6xx) and the reasons a circuit is torn down or a cell dropped.

Whose fault: `CellError`, `HandshakeError` and `CircuitProtocolError` are a peer's (a
neighbour sent a malformed cell, a relay answered a handshake wrongly, a cell failed its
integrity check); `PathError` is the network's (too few usable relays); `OnionStateError` is
local (a guard or build-time state file that does not decode: this node's data dir).
"""
from __future__ import annotations

import enum

from fognode.node.errors import FognodeError, RemoteProtocolError

# RPC error codes (DESIGN.md: onion 6xx); the hidden-service side's from 620 on (below)
NO_PATH = 600               # onion.build: not enough usable relays for the requested hops
UNKNOWN_CIRCUIT = 601       # onion.close / onion.circuits: no such circuit
BUILD_FAILED = 602          # onion.build: the circuit failed or timed out while building
LINK_FAILED = 603           # onion.link_test: unknown peer, or its link failed or stalled


class OnionError(FognodeError):
    """An onion operation could not be carried out (the message says why)."""


class PathError(OnionError):
    """No path satisfies the constraints (too few relays, regions or guards)."""


class OnionStateError(OnionError):
    """A persisted onion state (guard set, build-time history) does not decode: the local data
    dir's fault; the caller starts afresh and says so."""


class CellError(RemoteProtocolError, ValueError):
    """A cell or relay message does not decode (short, oversize, unknown command, bad field)."""


class HandshakeError(RemoteProtocolError):
    """An ntor handshake failed: wrong relay identity or onion key, bad point, bad AUTH."""


class CircuitProtocolError(RemoteProtocolError):
    """A cell broke the circuit protocol (failed integrity, window overrun, bad SENDME, an
    unexpected command): the circuit is torn down."""

    def __init__(self, reason: TeardownReason, message: str, *, peer: str | None = None) -> None:
        self.reason = reason
        RemoteProtocolError.__init__(self, f"{reason.value}: {message}", peer=peer)


class TeardownReason(enum.Enum):
    """Why a circuit was destroyed (the DESTROY reason byte and a metric label)."""

    NONE = "none"                        # closed by its owner
    PROTOCOL = "protocol"                # an unexpected or malformed cell on the circuit
    INTEGRITY = "integrity"              # a relay cell failed authentication (tampered/replayed/reordered)
    HANDSHAKE = "handshake"              # ntor failed
    WINDOW = "window"                    # a flow-control window was overrun or a SENDME was wrong
    TIMEOUT = "timeout"                  # build timeout
    LINK = "link"                        # the link to a neighbour failed
    REFUSED = "refused"                  # the relay refused (resource limit, extend to itself, replay)
    DESTROYED = "destroyed"              # a neighbour destroyed the circuit


DESTROY_CODES: dict[TeardownReason, int] = {r: i for i, r in enumerate(TeardownReason)}
DESTROY_REASONS: dict[int, TeardownReason] = {i: r for r, i in DESTROY_CODES.items()}

# the hidden-service side's RPC codes
SERVICE_REFUSED = 620       # onion.add_service / onion.remove_service: the change cannot be made
BAD_SERVICE = 621           # onion.add_service: a parameter is wrong (names it)
# hosted data (onion.deploy / onion.access)
BAD_HOSTING_PARAM = 630     # onion.deploy / onion.access: a parameter is wrong (names it)
DEPLOY_FAILED = 631         # onion.deploy: no hosts, over budget, hosts refused, DHT put failed
ACCESS_FAILED = 632         # onion.access: no manifest, refused by the hosts, too few shards, cannot pay
