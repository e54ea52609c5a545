"""Ledger domain events on the node's EventBus (addresses as fog1 strings, amounts in micro-units)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fognode.node.events import Event


@dataclass(frozen=True)
class PaymentProcessed(Event):
    """A transfer certificate was applied to this replica."""

    tx: str            # hex transaction id
    sender: str
    recipient: str
    amount: int
    fee: int
    memo: str

    def to_dict(self) -> dict[str, Any]:
        """Event.to_dict's view built field by field: every field is a str or an int, so
        `dataclasses.asdict`'s recursive copy is not needed; it was about 2 % of a daemon's CPU
        in the ledger benchmark (the monitor role logs every event; one per transfer per node)."""
        return {"event": "PaymentProcessed", "tx": self.tx, "sender": self.sender, "recipient": self.recipient,
                "amount": self.amount, "fee": self.fee, "memo": self.memo}


@dataclass(frozen=True)
class RewardsDistributed(Event):
    """Mint orders paying rewards were certified (by this node, as distributor)."""

    distributor: str
    epoch: int
    count: int
    total: int
    txs: tuple[str, ...]


@dataclass(frozen=True)
class ForkDetected(Event):
    """A sender signed two orders for one sequence (certified=True: both were certified, which
    means more than a third of the committee's stake is faulty)."""

    sender: str
    sequence: int
    first_tx: str
    second_tx: str
    certified: bool
    reported_by: str
