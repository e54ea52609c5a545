"""Hosted data's error: a deploy or an access could not be done."""
from __future__ import annotations

from fognode.node.errors import FognodeError


class HostingError(FognodeError):
    """A deploy or an access could not be done (the message says what and whose fault)."""
