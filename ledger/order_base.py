"""What every ledger order shares: the order kinds, the wire version and the common fields.

An order is signed by its `sender` with the sender's next `sequence`, for an `epoch`, on a
`chain`, and pays `fee`. The order types live in messages.py (transfers, mints, stake) and
escrow_orders.py (escrow), rewardpool_orders.py (reward pools); all build on `OrderBase` here, so neither imports the other's
module for it. Also the two helpers their decoders and ids share: `wire_int` (an integer field
within the structural bound) and `owned_id` (the id of a record only its owner can open for
one scope: an escrow for an agreement, a reward pool for a session).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from fognode.node.wire import Fields, digest

VERSION = 1
WIRE_INT = 2 ** 64        # structural bound of integer fields; range rules are reasoned rejections


def wire_int(f: Fields, key: str) -> int:
    """Integer field `key` of an order, within [-WIRE_INT, WIRE_INT] (structure only: the range
    rules are the reasoned rejections of the order's checks)."""
    return f.int(key, lo=-WIRE_INT, hi=WIRE_INT)


def owned_id(tag: bytes, chain: str, owner: bytes, scope: bytes) -> bytes:
    """BLAKE2b-256(tag || len(chain) || chain || owner || scope): the id of the record `owner`
    opens for `scope` on `chain` under the record kind's `tag`. Nobody else can open (or
    pre-empt) it."""
    c = chain.encode()
    return digest(tag + bytes([len(c)]) + c + owner + scope)


class OrderKind(enum.Enum):
    TRANSFER = "transfer"
    MINT = "mint"
    BOND = "bond"
    UNBOND = "unbond"
    ESCROW_OPEN = "escrow_open"
    ESCROW_COLLATERAL = "escrow_collat"
    ESCROW_PAYOUT = "escrow_payout"
    ESCROW_REFUND = "escrow_refund"
    ESCROW_SLASH = "escrow_slash"
    POOL_OPEN = "pool_open"
    POOL_PAY = "pool_pay"
    POOL_CLOSE = "pool_close"


@dataclass(frozen=True)
class OrderBase:
    chain: str
    epoch: int
    sender: bytes
    sequence: int
    fee: int

    kind: ClassVar[OrderKind]

    def _common(self) -> dict[str, Any]:
        return {"v": VERSION, "kind": self.kind.value, "chain": self.chain, "epoch": self.epoch,
                "sender": self.sender, "sequence": self.sequence, "fee": self.fee}

    def body(self) -> dict[str, Any]:
        return self._common()

    def debit(self) -> int:
        """What the sender's spendable balance must cover."""
        return self.fee
