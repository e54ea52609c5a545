"""The error tree. Every error says whose fault it was.

- ConfigError: the operator's config file, env or flags.
- RpcError: a control-socket client sent something wrong (carries a JSON-RPC code).
- LocalProtocolError: this node tried to do something the protocol forbids (our bug or misuse).
- RemoteProtocolError: a peer sent something malformed or forbidden (its fault; lower its score).
Roles subclass these for their own errors (e.g. ledger.errors.LedgerError).
"""
from __future__ import annotations

from typing import Any


class FognodeError(Exception):
    """Root of every error fognode raises on purpose."""


class ConfigError(FognodeError):
    """The configuration (file, environment or flags) is wrong; the message names the key."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        self.detail = message       # what is wrong, without where
        self.source = source
        self.key = key
        where = ""
        if source and key:
            where = f"{source}: {key}: "
        elif source:
            where = f"{source}: "
        elif key:
            where = f"{key}: "
        super().__init__(where + message)


class DataDirError(FognodeError):
    """The data dir is missing, unreadable, or locked by another daemon."""


class RpcError(FognodeError):
    """An error returned to a control-socket client, with its JSON-RPC error code."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class LocalProtocolError(FognodeError):
    """This node broke a protocol rule (a bug here, or a caller misusing an API)."""


class RemoteProtocolError(FognodeError):
    """A peer sent something malformed, oversize, unsigned or out of order."""

    def __init__(self, message: str, *, peer: str | None = None) -> None:
        self.peer = peer
        super().__init__(f"peer {peer}: {message}" if peer else message)


class StreamClosed(FognodeError):
    """The stream ended (EOF or reset) before a whole frame arrived."""


class FatalStorageError(FognodeError):
    """A role could not write its data dir (disk full, I/O error, read-only filesystem): its
    memory may no longer match its disk, so it must stop serving. The supervisor does not
    restart a role that raises it; the daemon shuts down cleanly and exits non-zero with this
    message (the local machine's fault: free space or fix the disk, then restart)."""

    def __init__(self, message: str, *, path: str = "", cause: str = "") -> None:
        self.path = path
        self.cause = cause
        super().__init__(message)


class PermanentRoleError(FognodeError):
    """A role cannot run and retrying will not help (a port another program holds, a setting
    the role cannot honour): the operator must change something. The supervisor does not
    restart a role that raises it; it logs the message as one ERROR line (no traceback), shows
    the role failed with that reason, and keeps the daemon and the other roles running. The
    message says what to change."""
