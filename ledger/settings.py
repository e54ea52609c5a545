"""The ledger engine's settings (from `[protocols.ledger]`, see protocol.py `LedgerConfig`),
handed to the engine and its adapters."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    batch_interval: float = 0.2
    batch_max: int = 64
    sync_interval: float = 10.0
    sync_batch: int = 256
    request_timeout: float = 5.0
    retry_interval: float = 1.0
    hedge_delay: float = 0.25
    pending_max: int = 10_000
    verify_sender: bool = True
    uptime_interval: float = 10.0
    uptime_claims: bool = True
