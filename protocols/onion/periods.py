"""Descriptor time periods (rend-spec-v3 [TIME-PERIODS]): `TimePeriods`, how unix time is cut
into the periods that hidden-service keys are blinded for (blinding.py's docstring says why
the defaults are Tor's). Light (no crypto), so the role's config is checked at start.
"""
from __future__ import annotations

from dataclasses import dataclass

from fognode.node.errors import ConfigError

DEFAULT_PERIOD_LENGTH = 86400         # seconds (Tor: 1440 minutes)
DEFAULT_PERIOD_OFFSET = 12 * 3600     # seconds (Tor: 12 hours)
MIN_PERIOD_LENGTH = 60
MAX_PERIOD_LENGTH = 10 * 86400


@dataclass(frozen=True)
class TimePeriods:
    """How time is cut into periods; every node of a network must use the same values."""

    length: int = DEFAULT_PERIOD_LENGTH   # seconds per period
    offset: int = DEFAULT_PERIOD_OFFSET   # seconds after the epoch at which period 0 starts

    def validate(self, key: str = "protocols.onion.period_length") -> None:
        """ConfigError naming the key when the length or offset is out of range."""
        if not MIN_PERIOD_LENGTH <= self.length <= MAX_PERIOD_LENGTH:
            raise ConfigError(f"must be between {MIN_PERIOD_LENGTH} s and {MAX_PERIOD_LENGTH} s", key=key)
        if not 0 <= self.offset < self.length:
            raise ConfigError("the period offset must be in [0, period length)",
                              key=key.replace("period_length", "period_offset"))

    def number(self, now: float) -> int:
        """The period of unix time `now`."""
        return (int(now) - self.offset) // self.length

    def start(self, period: int) -> int:
        return period * self.length + self.offset

    def end(self, period: int) -> int:
        """The first second of the next period."""
        return self.start(period + 1)

    def periods_to_publish(self, now: float, window: float) -> list[int]:
        """The current period, plus the neighbour whose boundary is within `window` s."""
        n = self.number(now)
        out = [n]
        if now - self.start(n) < window:
            out.insert(0, n - 1)
        if self.end(n) - now <= window:
            out.append(n + 1)
        return out

    def periods_to_fetch(self, now: float, window: float) -> list[int]:
        """Periods a client tries, in order: the current one, then the neighbour nearest in
        time if its boundary is within `window` s (the service's clock may be on that side)."""
        n = self.number(now)
        since, until = now - self.start(n), self.end(n) - now
        if since <= until:
            return [n, n - 1] if since < window else [n]
        return [n, n + 1] if until <= window else [n]
