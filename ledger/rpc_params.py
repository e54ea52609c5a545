"""The ledger's RPC parameters and errors: parse what an operator typed (addresses, amounts,
32-byte hex ids) into values or an RpcError naming the parameter, and map what submitting an
order raises to the ledger's RPC error codes (2xx)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from fognode.ledger.address import decode_address
from fognode.ledger.amounts import parse_amount
from fognode.ledger.errors import (LEDGER_BAD_ADDRESS, LEDGER_BAD_AMOUNT, LEDGER_BAD_ESCROW, LEDGER_NOT_CERTIFIED,
                                   LEDGER_ORDER_REJECTED, LEDGER_STORAGE_FAILED, LEDGER_WALLET_LOCKED,
                                   RPC_CODE_OF_REASON, AddressError, AmountError, LedgerStorageFailed,
                                   OrderRejected, WalletError)
from fognode.ledger.submit import NotCertified
from fognode.node.errors import RpcError


def parse_address(text: str, what: str = "address") -> bytes:
    try:
        return decode_address(text)
    except AddressError as e:
        raise RpcError(LEDGER_BAD_ADDRESS, f"{what}: {e}") from None


def parse_amount_param(text: str, what: str = "amount") -> int:
    try:
        return parse_amount(text)
    except AmountError as e:
        raise RpcError(LEDGER_BAD_AMOUNT, f"{what}: {e}") from None


def parse_hex32(text: str, what: str) -> bytes:
    try:
        b = bytes.fromhex(text)
    except ValueError:
        b = b""
    if len(b) != 32:
        raise RpcError(LEDGER_BAD_ESCROW, f"{what}: expected 64 hex digits, got {text!r}")
    return b


@contextmanager
def order_errors() -> Iterator[None]:
    """Map what submitting an order raises to the RPC errors of the ledger."""
    try:
        yield
    except WalletError as e:
        raise RpcError(LEDGER_WALLET_LOCKED, str(e)) from None
    except OrderRejected as e:
        raise RpcError(RPC_CODE_OF_REASON.get(e.reason, LEDGER_ORDER_REJECTED),
                       f"order rejected: {e.reason.value}: {e.message}", {"reason": e.reason.value}) from None
    except NotCertified as e:
        raise RpcError(LEDGER_NOT_CERTIFIED, str(e), e.status) from None
    except LedgerStorageFailed as e:
        raise RpcError(LEDGER_STORAGE_FAILED, f"the ledger stopped: {e}", {"path": e.path, "cause": e.cause}) from None
