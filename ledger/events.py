"""Ledger domain events on the node's EventBus (addresses as fog1 strings, amounts in micro-units)."""
from __future__ import annotations

from dataclasses import dataclass

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
