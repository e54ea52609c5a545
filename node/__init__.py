"""fognode daemon core: config, identity, host, roles, RPC, events, metrics, daemon."""
from __future__ import annotations

__version__ = "0.1.0"
