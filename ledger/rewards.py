"""Reward arithmetic: split a budget by contribution, and turn allocations into mint orders.

`calculate_rewards` is exact integer arithmetic (largest remainder, ties broken by address),
so every node computing the same split gets the same micro-units and the parts sum to the
budget. `distribute_rewards` builds the unsigned mint orders a distributor signs and submits
(the ledger does that for roles: `LedgerApi.distribute_rewards`, api.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping

from fognode.ledger.messages import MintOrder
from fognode.ledger.receipts import Receipt


def calculate_rewards(contributions: Mapping[bytes, int | float | Fraction], budget: int) -> dict[bytes, int]:
    """Split `budget` micro-units in proportion to non-negative `contributions`.

    Returns only positive shares; they sum to exactly `budget` unless every contribution is 0
    (then nothing is paid). Raises ValueError for a negative or non-finite contribution.
    """
    if budget < 0:
        raise ValueError("budget must be non-negative")
    weights: dict[bytes, Fraction] = {}
    for k, c in contributions.items():
        fc = Fraction(c)  # raises for NaN/inf
        if fc < 0:
            raise ValueError(f"contribution of {k.hex()[:16]} is negative")
        if fc > 0:
            weights[k] = fc
    total = sum(weights.values(), Fraction(0))
    if total == 0 or budget == 0:
        return {}
    shares: dict[bytes, int] = {}
    remainders: list[tuple[Fraction, bytes]] = []
    for k in sorted(weights):
        exact = budget * weights[k] / total
        whole = exact.numerator // exact.denominator
        shares[k] = whole
        remainders.append((exact - whole, k))
    left = budget - sum(shares.values())
    remainders.sort(key=lambda rk: (-rk[0], rk[1]))
    for _, k in remainders[:left]:
        shares[k] += 1
    return {k: v for k, v in shares.items() if v > 0}


@dataclass(frozen=True)
class Allocation:
    """A reward to pay: `amount` micro-units to the beneficiary of `receipt`."""

    receipt: Receipt
    amount: int


def distribute_rewards(allocations: list[Allocation], *, chain: str, epoch: int, sender: bytes,
                       first_sequence: int, fee: int) -> list[MintOrder]:
    """Mint orders (sequences first_sequence, +1, ...) paying each allocation to its receipt's
    beneficiary, from `sender` who pays the fees. Zero allocations are skipped."""
    orders: list[MintOrder] = []
    seq = first_sequence
    for a in allocations:
        if a.amount <= 0:
            continue
        orders.append(MintOrder(chain=chain, epoch=epoch, sender=sender, sequence=seq, fee=fee,
                                recipient=a.receipt.beneficiary, amount=a.amount, receipt=a.receipt))
        seq += 1
    return orders
