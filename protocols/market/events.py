"""The market's domain events on the node's event bus (the seed's Marketplace Service events)."""
from __future__ import annotations

from dataclasses import dataclass

from fognode.node.events import Event


@dataclass(frozen=True)
class ServiceContractCreated(Event):
    """An agreement came into force: its escrow is open on the ledger."""

    contract: str            # the agreement id (hex)
    role: str                # "customer" | "provider" (this node's side)
    peer: str                # the other party's peer id
    service: str
    max_total: int           # micro-units escrowed
    deadline: int            # unix s


@dataclass(frozen=True)
class SLABreach(Event):
    """A party did not keep an agreement: a wrong result (outvoted), silence past a deadline,
    an unpaid debit note, a service contract's observation window below its SLA."""

    contract: str
    peer: str                # who breached
    breach: str              # "wrong_result" | "unresponsive" | "unpaid" | "disputed" | "sla_window"
    detail: str
