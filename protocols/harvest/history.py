"""Folded contribution history, sans-IO: per-day totals of harvest sessions and credits that
the contribution ledger no longer keeps one by one (contribution.py `prune`).

The ledger keeps its newest `keep` finished sessions in full; older work is folded a *work
item* at a time (a session kind and ref, e.g. one FL session or one market agreement: every
harvest session of it and every credit for it) into the `DayTotals` of the UTC day each
session started. A day holds what `Contribution` adds up (sessions completed and abandoned,
CPU, wall, memory, fuel, validated and rejected results, tokens by receipt kind), so the
device's totals and reliability are the same before and after a fold. A folded item's
receipts are gone with it: a receipt for it arriving again is refused as work this device has
no record of (it is not credited twice). Folded days are this node's own record: unlike a kept
credit, whose signature is checked again at every load, they cannot be re-verified.

Wire form of a day (msgpack, stored under `d/<YYYY-MM-DD>`)::

    {"v": 1, "completed": int, "abandoned": int, "cpu_s": float, "wall_s": float,
     "mem_byte_s": float, "fuel": int, "validated": int, "rejected": int,
     "tokens": {"fl_round": int, "market_job": int}}
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from fognode.node.wire import Fields

DAY_VERSION = 1
_U64 = 2**64 - 1


def day_of(t: float) -> str:
    """The UTC day (YYYY-MM-DD) of a wall-clock time."""
    return time.strftime("%Y-%m-%d", time.gmtime(max(0.0, t)))


@dataclass(frozen=True)
class DayTotals:
    """What one day's folded work adds to the device's totals."""

    completed: int = 0
    abandoned: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    mem_byte_s: float = 0.0
    fuel: int = 0
    validated: int = 0
    rejected: int = 0
    tokens: dict[str, int] = field(default_factory=dict)

    @property
    def sessions(self) -> int:
        return self.completed + self.abandoned

    def add_session(self, completed: bool, cpu_s: float, wall_s: float, mem_byte_s: float,
                    fuel: int) -> DayTotals:
        return replace(self, completed=self.completed + completed,
                       abandoned=self.abandoned + (not completed), cpu_s=self.cpu_s + cpu_s,
                       wall_s=self.wall_s + wall_s, mem_byte_s=self.mem_byte_s + mem_byte_s,
                       fuel=self.fuel + fuel)

    def add_credit(self, kind: str, validated: bool, tokens: int) -> DayTotals:
        t = dict(self.tokens)
        t[kind] = t.get(kind, 0) + tokens
        return replace(self, validated=self.validated + validated,
                       rejected=self.rejected + (not validated), tokens=t)

    def to_wire(self) -> dict[str, Any]:
        return {"v": DAY_VERSION, "completed": self.completed, "abandoned": self.abandoned,
                "cpu_s": float(self.cpu_s), "wall_s": float(self.wall_s),
                "mem_byte_s": float(self.mem_byte_s), "fuel": self.fuel,
                "validated": self.validated, "rejected": self.rejected,
                "tokens": dict(self.tokens)}

    @classmethod
    def from_wire(cls, raw: Any, what: str) -> DayTotals:
        """Validating decoder (RemoteProtocolError naming the field of a damaged record)."""
        f = Fields(raw, what, versions={DAY_VERSION})
        counts = {k: f.int(k, lo=0, hi=_U64) for k in ("completed", "abandoned", "fuel",
                                                        "validated", "rejected")}
        floats = {k: f.float(k, lo=0.0) for k in ("cpu_s", "wall_s", "mem_byte_s")}
        tokens = f.map("tokens", max_len=8)
        for k, v in tokens.items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int) \
                    or not 0 <= v <= _U64:
                f._fail("field 'tokens' must map receipt kinds to token counts")
        f.done()
        return cls(tokens=dict(tokens), **counts, **floats)
