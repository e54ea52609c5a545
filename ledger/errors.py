"""Ledger errors and rejection reasons (RPC codes 2xx, DESIGN.md "Control socket and CLI").

Whose fault it was:
- `OrderRejected`: the order's author (bad signature, wrong sequence, overspend, ...). A
  validator returns it to the client as a reasoned rejection; the RPC layer maps it to a 2xx.
- `CertificateRejected`: whoever relayed the certificate (short of quorum, foreign signer, ...).
- `AddressError` / `AmountError`: the operator or client typed something wrong.
- `GenesisError`: the genesis file shared by the network is malformed (operator's fault).
- `WalletError`: the local keystore (missing key, wrong passphrase, bad file).
- `StoreError`: the LevelDB replica on disk is inconsistent or from another chain.
- `LedgerStorageFailed`: this machine could not write the replica (disk full, I/O error); fatal
  to the ledger role (node.errors.FatalStorageError): the daemon stops and exits non-zero.
"""
from __future__ import annotations

import enum

from fognode.node.errors import FatalStorageError, FognodeError

# RPC error codes of the ledger (range 200-299).
LEDGER_BAD_ADDRESS = 200
LEDGER_BAD_AMOUNT = 201
LEDGER_INSUFFICIENT_FUNDS = 202
LEDGER_ORDER_REJECTED = 203
LEDGER_NOT_CERTIFIED = 204       # wallet.send timed out before a quorum answered
LEDGER_UNKNOWN_WALLET = 205
LEDGER_WALLET_LOCKED = 206       # passphrase missing or wrong
LEDGER_UNKNOWN_TX = 207
LEDGER_BAD_MEMO = 208
LEDGER_INVARIANT_BROKEN = 209    # ledger.verify found the replica inconsistent
LEDGER_NOT_READY = 210
LEDGER_STORAGE_FAILED = 211      # the replica could not be written (disk full?): the ledger stopped
LEDGER_BAD_ESCROW = 212          # escrow terms malformed (agreement id, deadline, SLA terms)
LEDGER_ESCROW_UNKNOWN = 213      # no such escrow (not opened, or this replica has not seen it)
LEDGER_ESCROW_CLOSED = 214       # the escrow was refunded and closed
LEDGER_ESCROW_DEADLINE = 215     # too early or too late for this escrow order (validators' clocks)
LEDGER_NOT_ESCROW_PARTY = 216    # the sender is not the party that may send this escrow order
LEDGER_BAD_DEBIT_NOTE = 217      # debit note not signed by the customer, paid already, over the escrow
LEDGER_BAD_POOL = 218            # reward pool terms malformed (session id, receipt kind, deadline, close totals)
LEDGER_POOL_UNKNOWN = 219        # no such reward pool (not funded, or this replica has not seen it)
LEDGER_POOL_CLOSED = 220         # the reward pool was closed and refunded (or the validator signed its close)
LEDGER_POOL_DEADLINE = 221       # too early or too late for this reward pool order (validators' clocks)
LEDGER_POOL_EXHAUSTED = 222      # the reward pool holds less than the payout
LEDGER_POOL_UNSETTLED = 223      # a close that does not state the payouts the validator applied (yet)


class Reason(enum.Enum):
    """Why an order or a certificate was refused (also the metrics label)."""

    BAD_SIGNATURE = "bad_signature"
    WRONG_CHAIN = "wrong_chain"
    WRONG_SEQUENCE = "wrong_sequence"
    OVERSPEND = "overspend"
    BAD_AMOUNT = "bad_amount"
    BAD_ADDRESS = "bad_address"
    MEMO_TOO_LONG = "memo_too_long"
    CONFLICT = "conflict"                    # already signed another order for (sender, sequence)
    WRONG_EPOCH = "wrong_epoch"
    FEE_TOO_LOW = "fee_too_low"
    BAD_EVIDENCE = "bad_evidence"
    RECEIPT_USED = "receipt_used"
    BUDGET_EXCEEDED = "budget_exceeded"
    INSUFFICIENT_STAKE = "insufficient_stake"
    NO_QUORUM = "no_quorum"
    NON_COMMITTEE_SIGNER = "non_committee_signer"
    DUPLICATE_SIGNER = "duplicate_signer"
    MALFORMED = "malformed"
    NOT_YET = "not_yet"                      # committee proposal differs from this replica's view: sync, retry
    BAD_ESCROW = "bad_escrow"
    ESCROW_UNKNOWN = "escrow_unknown"        # also "this validator has not seen the open yet": retry
    ESCROW_CLOSED = "escrow_closed"
    ESCROW_TOO_EARLY = "escrow_too_early"    # the validator's clock has not reached the phase yet: retry
    ESCROW_TOO_LATE = "escrow_too_late"
    NOT_ESCROW_PARTY = "not_escrow_party"
    BAD_DEBIT_NOTE = "bad_debit_note"
    BAD_POOL = "bad_pool"
    POOL_UNKNOWN = "pool_unknown"            # also "this validator has not seen the open yet": retry
    POOL_CLOSED = "pool_closed"
    POOL_TOO_EARLY = "pool_too_early"        # the validator's clock has not reached the close yet: retry
    POOL_TOO_LATE = "pool_too_late"
    POOL_EXHAUSTED = "pool_exhausted"
    POOL_UNSETTLED = "pool_unsettled"        # payouts this validator signed are not applied yet: retry


RPC_CODE_OF_REASON: dict[Reason, int] = {
    Reason.BAD_ADDRESS: LEDGER_BAD_ADDRESS,
    Reason.BAD_AMOUNT: LEDGER_BAD_AMOUNT,
    Reason.OVERSPEND: LEDGER_INSUFFICIENT_FUNDS,
    Reason.INSUFFICIENT_STAKE: LEDGER_INSUFFICIENT_FUNDS,
    Reason.MEMO_TOO_LONG: LEDGER_BAD_MEMO,
    Reason.BAD_ESCROW: LEDGER_BAD_ESCROW,
    Reason.ESCROW_UNKNOWN: LEDGER_ESCROW_UNKNOWN,
    Reason.ESCROW_CLOSED: LEDGER_ESCROW_CLOSED,
    Reason.ESCROW_TOO_EARLY: LEDGER_ESCROW_DEADLINE,
    Reason.ESCROW_TOO_LATE: LEDGER_ESCROW_DEADLINE,
    Reason.NOT_ESCROW_PARTY: LEDGER_NOT_ESCROW_PARTY,
    Reason.BAD_DEBIT_NOTE: LEDGER_BAD_DEBIT_NOTE,
    Reason.BAD_POOL: LEDGER_BAD_POOL,
    Reason.POOL_UNKNOWN: LEDGER_POOL_UNKNOWN,
    Reason.POOL_CLOSED: LEDGER_POOL_CLOSED,
    Reason.POOL_TOO_EARLY: LEDGER_POOL_DEADLINE,
    Reason.POOL_TOO_LATE: LEDGER_POOL_DEADLINE,
    Reason.POOL_EXHAUSTED: LEDGER_POOL_EXHAUSTED,
    Reason.POOL_UNSETTLED: LEDGER_POOL_UNSETTLED,
}


class LedgerError(FognodeError):
    """Root of the ledger's errors."""


class AddressError(LedgerError, ValueError):
    """A `fog1...` address is malformed or its checksum does not match (a typo)."""


class AmountError(LedgerError, ValueError):
    """A decimal amount is negative, has too many decimals or overflows 64 bits."""


class GenesisError(LedgerError):
    """The genesis document is malformed; the message names the field."""


class WalletError(LedgerError):
    """The keystore: unknown key, wrong passphrase, unreadable or foreign file."""


class StoreError(LedgerError):
    """The on-disk replica is unusable (other chain, corrupt record)."""


class LedgerStorageFailed(StoreError, FatalStorageError):
    """Writing the replica's LevelDB failed (disk full, I/O error). Whatever the write was
    for did not happen; the ledger refuses all further work and the daemon stops."""


class OrderRejected(LedgerError):
    """A validator refused to sign an order; `reason` says why (the order author's fault)."""

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason.value}: {message}")


class RequestNotSent(LedgerError):
    """A request to a validator never left this node: its order stream could not be opened.
    The validator cannot have seen (nor locked) what the request carried."""


class CertificateRejected(LedgerError):
    """A certificate failed verification (the relayer's fault); nothing was applied."""

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason.value}: {message}")
