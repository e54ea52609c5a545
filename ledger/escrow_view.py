"""How escrows and escrow orders look over RPC: fog1 addresses, decimal amounts, hex ids."""
from __future__ import annotations

from typing import Any

from fognode.ledger.address import encode_address
from fognode.ledger.amounts import format_amount
from fognode.ledger.escrow import Escrow
from fognode.ledger.escrow_orders import (EscrowCollateralOrder, EscrowOpenOrder, EscrowOrder, EscrowPayoutOrder,
                                          EscrowSlashOrder)


def describe_escrow(escrow: bytes, e: Escrow) -> dict[str, Any]:
    v = e.view()
    for k in ("amount", "paid", "collateral", "slashed", "penalty", "held"):
        v[k] = format_amount(v[k])
    return {"escrow": escrow.hex(), "customer": encode_address(e.customer), "payee": encode_address(e.payee),
            **v, "witnesses": [encode_address(w) for w in e.witnesses]}


def describe_escrow_order(o: EscrowOrder) -> dict[str, Any]:
    d: dict[str, Any] = {"escrow": o.escrow.hex(), "escrow_sequence": o.escrow_sequence}
    if isinstance(o, EscrowOpenOrder):
        d.update(payee=encode_address(o.payee), agreement=o.agreement.hex(), deadline=o.deadline, grace=o.grace)
    if isinstance(o, (EscrowOpenOrder, EscrowCollateralOrder)):
        d["amount"] = format_amount(o.amount)
    if isinstance(o, EscrowPayoutOrder):
        d["due"] = format_amount(o.note.due)
    if isinstance(o, EscrowSlashOrder):
        d["window"] = o.report.window
    return d
