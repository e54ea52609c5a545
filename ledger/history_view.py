"""How transactions look to a wallet's owner (`wallet.history`, `ledger.tx`, send results).

`describe_order` is an order's full description (every field, amounts in tokens). `history_row`
is one compact line of a wallet's history, made to fit a 100-column terminal: when this replica
applied it (`time`, Unix seconds; the CLI shows UTC text), the direction seen from the wallet
(`in`, `out`, `self`, `stake`, `unstake`, `escrow`, `pool`), the counterparty (shortened), the amount
signed from the wallet's side, the status (`final`, or `in flight` for an order this node
signed that is not certified yet), and the transaction id's first 16 hex digits. The `--verbose`
form is `describe_order` plus the same time, direction and full ids.
"""
from __future__ import annotations

from typing import Any

from fognode.ledger.address import encode_address
from fognode.ledger.amounts import format_amount
from fognode.ledger.escrow_orders import ESCROW_ORDERS
from fognode.ledger.escrow_view import describe_escrow_order
from fognode.ledger.rewardpool_orders import POOL_ORDERS, PoolCloseOrder, PoolOpenOrder, PoolPayOrder
from fognode.ledger.messages import BondOrder, MintOrder, Order, TransferOrder, UnbondOrder

SHORT_TX = 16


def describe_order(o: Order) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": o.kind.value, "sender": encode_address(o.sender), "sequence": o.sequence,
                         "epoch": o.epoch, "fee": format_amount(o.fee)}
    if isinstance(o, (TransferOrder, MintOrder)):
        d["recipient"] = encode_address(o.recipient)
    if isinstance(o, (TransferOrder, MintOrder, BondOrder, UnbondOrder)):
        d["amount"] = format_amount(o.amount)
    if isinstance(o, TransferOrder):
        d["memo"] = o.memo
    if isinstance(o, MintOrder):
        d["receipt"] = {"kind": o.receipt.kind, "issuer": encode_address(o.receipt.issuer),
                        "epoch": o.receipt.epoch, "id": o.receipt.receipt_id.hex()}
    if isinstance(o, ESCROW_ORDERS):
        d.update(describe_escrow_order(o))
    if isinstance(o, POOL_ORDERS):
        d["pool"] = o.pool.hex()
        if isinstance(o, (PoolOpenOrder, PoolPayOrder)):
            d["amount"] = format_amount(o.amount)
        if isinstance(o, PoolPayOrder):
            d["recipient"] = encode_address(o.receipt.beneficiary)
            d["receipt"] = {"kind": o.receipt.kind, "issuer": encode_address(o.receipt.issuer),
                            "epoch": o.receipt.epoch, "id": o.receipt.receipt_id.hex()}
        if isinstance(o, PoolCloseOrder):
            d.update(payouts=o.payouts, paid=format_amount(o.paid))
    return d


def short_address(pub: bytes) -> str:
    """`fog1qxy3…k7m2p0`: enough to tell addresses apart in a table."""
    a = encode_address(pub)
    return a if len(a) <= 17 else f"{a[:10]}…{a[-6:]}"


def direction(o: Order, me: bytes) -> tuple[str, bytes | None, int]:
    """(direction, counterparty, amount signed from `me`'s side in micro-units)."""
    if isinstance(o, (TransferOrder, MintOrder)):
        if o.sender == me and o.recipient == me:
            return "self", me, 0
        if o.recipient == me:
            return "in", o.sender, o.amount
        return "out", o.recipient, -o.amount if isinstance(o, TransferOrder) else 0
    if isinstance(o, BondOrder):
        return "stake", None, -o.amount
    if isinstance(o, UnbondOrder):
        return "unstake", None, 0
    if isinstance(o, PoolPayOrder) and o.receipt.beneficiary == me:
        return "in", o.sender, o.amount
    if isinstance(o, PoolOpenOrder):
        return "pool", None, -o.amount
    if isinstance(o, POOL_ORDERS):
        return "pool", None, 0
    return "escrow", None, 0


def history_row(o: Order, tx: bytes, me: bytes, *, time: float | None, status: str,
                verbose: bool = False) -> dict[str, Any]:
    way, other, signed = direction(o, me)
    if verbose:
        return {"time": time, "direction": way, "status": status, "tx": tx.hex(), **describe_order(o)}
    if isinstance(o, MintOrder) and way == "out":
        counterparty = short_address(o.recipient)          # a reward this wallet paid the fee of
    elif isinstance(o, ESCROW_ORDERS):
        counterparty = f"escrow {o.escrow.hex()[:8]}"
    elif isinstance(o, POOL_ORDERS):
        counterparty = f"pool {o.pool.hex()[:8]}"
    else:
        counterparty = short_address(other) if other is not None else "-"
    amount = (("+" if signed > 0 else "-") + format_amount(abs(signed))) if signed else "0"
    return {"time": time, "dir": way, "counterparty": counterparty, "amount": amount,
            "kind": o.kind.value, "status": status, "tx": tx.hex()[:SHORT_TX]}
