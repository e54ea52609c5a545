"""The dashboard's access token, kept as Bitcoin Core keeps its RPC cookie.

At start the monitor writes a fresh random token to `<datadir>/monitor.cookie` (mode 0600, so
only the daemon's user reads it) and removes the file when it stops. A browser presents the
token once as `?token=` and then carries it in an HttpOnly, SameSite=Strict cookie; scripts may
send `Authorization: Bearer <token>`. Comparison is constant-time.
"""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from fognode.node.datadir import write_atomic

COOKIE_FILE = "monitor.cookie"
COOKIE_NAME = "fognode_dashboard"


class AccessToken:
    """One token for this run of the monitor; `write()` puts it in the data dir."""

    def __init__(self, datadir: Path, token: str | None = None) -> None:
        self.path = datadir / COOKIE_FILE
        self.value = token if token is not None else secrets.token_urlsafe(32)

    def write(self) -> None:
        """Write the token file (0600, atomically). Raises OSError if the data dir refuses."""
        write_atomic(self.path, self.value.encode("ascii") + b"\n", mode=0o600)

    def remove(self) -> None:
        """Remove the token file if it still holds this run's token (another run's is left)."""
        try:
            if self.path.read_text("ascii").strip() == self.value:
                os.unlink(self.path)
        except (OSError, UnicodeDecodeError):
            pass

    def matches(self, presented: str | None) -> bool:
        """Constant-time check of a presented token (None or empty: no)."""
        if not presented:
            return False
        return hmac.compare_digest(presented.encode("utf-8", "replace"), self.value.encode("ascii"))


def cookie_token(header: str | None) -> str | None:
    """The dashboard token in a Cookie header, if any."""
    for part in (header or "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == COOKIE_NAME:
            return value
    return None


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if any."""
    scheme, _, value = (header or "").strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def set_cookie(token: str) -> str:
    """The Set-Cookie value that keeps the token in the browser (not readable by scripts)."""
    return f"{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict"
