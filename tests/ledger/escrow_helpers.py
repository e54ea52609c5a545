"""Builders of escrow orders for the ledger tests (escrow_orders.py)."""
from __future__ import annotations

from nacl.signing import SigningKey

from fognode.ledger.escrow_orders import (BreachReport, DebitNote, EscrowCollateralOrder, EscrowOpenOrder,
                                          EscrowPayoutOrder, EscrowRefundOrder, EscrowSlashOrder, escrow_id)
from fognode.ledger.messages import Order, SignedOrder

from .helpers import CHAIN, pk

AGREEMENT = bytes(range(32))
FEE = 1000


def open_order(customer: SigningKey, payee: bytes, amount: int, seq: int, *, deadline: int, grace: int = 600,
               agreement: bytes = AGREEMENT, uptime_ppm: int = 0, penalty: int = 0,
               witnesses: tuple[bytes, ...] = (), threshold: int = 0, fee: int = FEE) -> EscrowOpenOrder:
    return EscrowOpenOrder(chain=CHAIN, epoch=0, sender=pk(customer), sequence=seq, fee=fee, agreement=agreement,
                           payee=payee, amount=amount, deadline=deadline, grace=grace, uptime_ppm=uptime_ppm,
                           penalty=penalty, witnesses=witnesses, threshold=threshold)


def eid(customer: SigningKey, agreement: bytes = AGREEMENT) -> bytes:
    return escrow_id(CHAIN, pk(customer), agreement)


def collateral(payee: SigningKey, escrow: bytes, eseq: int, amount: int, seq: int) -> EscrowCollateralOrder:
    return EscrowCollateralOrder(chain=CHAIN, epoch=0, sender=pk(payee), sequence=seq, fee=FEE, escrow=escrow,
                                 escrow_sequence=eseq, amount=amount)


def payout(payee: SigningKey, customer: SigningKey, escrow: bytes, eseq: int, due: int, seq: int) -> EscrowPayoutOrder:
    return EscrowPayoutOrder(chain=CHAIN, epoch=0, sender=pk(payee), sequence=seq, fee=FEE, escrow=escrow,
                             escrow_sequence=eseq, note=DebitNote.sign(customer, escrow, due))


def refund(sender: SigningKey, escrow: bytes, eseq: int, seq: int) -> EscrowRefundOrder:
    return EscrowRefundOrder(chain=CHAIN, epoch=0, sender=pk(sender), sequence=seq, fee=FEE, escrow=escrow,
                             escrow_sequence=eseq)


def breach(escrow: bytes, window: int, probes: int, failures: int, witnesses: list[SigningKey]) -> BreachReport:
    r = BreachReport(escrow, window, probes, failures, ())
    return BreachReport(escrow, window, probes, failures, tuple(r.witness_signature(w) for w in witnesses))


def slash(customer: SigningKey, escrow: bytes, eseq: int, report: BreachReport, seq: int) -> EscrowSlashOrder:
    return EscrowSlashOrder(chain=CHAIN, epoch=0, sender=pk(customer), sequence=seq, fee=FEE, escrow=escrow,
                            escrow_sequence=eseq, report=report)


def signed(key: SigningKey, order: Order) -> SignedOrder:
    return SignedOrder.sign(key, order)

