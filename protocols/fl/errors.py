"""Errors of the `fl` role and its RPC error codes (fl owns 500-599).

- `FlError`: root of the role's own errors.
- `SessionRejected`: a session announcement or `fl.start` request asks for something this node
  will not run (unknown task, invalid strategy parameters, robust rule + secure aggregation).
- `UpdateRejected`: a received update was refused; `reason` is a short label for metrics and
  reputation ("unknown session", "not a participant", "shape", "nonfinite", ...).
- `UnknownMessageType`: a well-formed FL gossip envelope of a message type this version does
  not know (a newer node's): relayed and ignored, charged to nobody.
Malformed messages from peers raise `RemoteProtocolError` (node.errors) like everywhere else.
"""
from __future__ import annotations

from fognode.node.errors import FognodeError, RemoteProtocolError

# RPC error codes (node/rpc/methods.py CODE_RANGES["fl"])
FL_BAD_REQUEST = 500         # a parameter of fl.start/fl.export is invalid (the message names it)
FL_UNKNOWN_TASK = 501        # the task is not installed or not enabled on this node
FL_BAD_STRATEGY = 502        # unknown strategy or invalid strategy parameters
FL_UNKNOWN_SESSION = 503     # no session with that id on this node
FL_NOT_COORDINATOR = 504     # only a session's acting coordinator can stop it
FL_NO_MODEL = 505            # the session has no global model on this node yet
FL_EXPORT_FAILED = 506       # the export path cannot be written
FL_UNSUPPORTED = 507         # a privacy option this node's round engine does not run


class FlError(FognodeError):
    """Root of the fl role's errors."""


class SessionRejected(FlError):
    """A session (announced or requested) cannot run on this node; the message says why."""


class UpdateRejected(RemoteProtocolError):
    """A participant's update was refused and never aggregated; `reason` labels why."""

    def __init__(self, reason: str, message: str, *, peer: str | None = None) -> None:
        self.reason = reason
        super().__init__(f"update rejected ({reason}): {message}", peer=peer)


class UnknownMessageType(RemoteProtocolError):
    """An FL gossip envelope of this wire version whose message type this node does not know:
    a newer node's message, not a fault (protocol.py relays and ignores it)."""
