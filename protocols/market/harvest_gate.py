"""The market follows this device's harvest policy (issue 12 item 6, issue 13 item 1).

`HarvestGate.check()` is called every market tick with the harvest role's current suspension
reason (None while the device may work, or when the node runs no harvest role: then the market
works as before). When the device suspends, every offer of ours is withdrawn and remembered;
when it may work again they are published anew, capped by what the policy lets work use now
(`free_cores`, `free_memory_bytes`). `refusal()` is why a new offer may not be made now.
Sans-IO: the role hands it the reading and carries out what it returns through the service.
Running jobs are not this module's: they run under the harvest role's executor (provider.py),
which stops and continues them with all other work on this node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

MIB = 1 << 20


@dataclass(frozen=True)
class Capacity:
    """What the harvest policy lets work use now (None: no harvest role: no cap)."""

    cores: int
    memory_mib: int


class HarvestGate:
    def __init__(self, *, withdraw_all: Callable[[], list[dict[str, Any]]],
                 republish: Callable[[dict[str, Any]], None]) -> None:
        self._withdraw_all = withdraw_all        # -> the parameters of the offers withdrawn
        self._republish = republish
        self.suspended: str | None = None
        self.held: list[dict[str, Any]] = []     # our offers taken off while suspended

    def refusal(self) -> str | None:
        if self.suspended is None:
            return None
        return (f"this device's harvest policy suspends work ({self.suspended}): offers are withdrawn "
                f"until it may work again (see harvest.status)")

    def check(self, suspension: str | None, capacity: Capacity | None) -> tuple[int, int]:
        """React to the current reading; returns (offers withdrawn, offers republished)."""
        if suspension is not None and self.suspended is None:
            self.suspended = suspension
            self.held = self._withdraw_all()
            return len(self.held), 0
        if suspension is not None:
            self.suspended = suspension
            return 0, 0
        if self.suspended is None:
            return 0, 0
        self.suspended = None
        held, self.held = self.held, []
        for params in held:
            if capacity is not None:
                params = {**params, "cores": max(1, min(params["cores"], capacity.cores)),
                          "memory_mib": max(1, min(params["memory_mib"], capacity.memory_mib))}
            self._republish(params)
        return 0, len(held)
