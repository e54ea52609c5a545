"""The wallet side of escrows: sign and submit escrow orders from this node's wallets
(`OrderSubmitter.submit`, so each is driven to a certificate like a transfer), sign debit
notes as a customer, and read escrows from this replica.

Each spending order carries the escrow's next sequence as this replica knows it when the order
is signed. If a certificate of the escrow has not reached this replica yet, the validators
that have it refuse the order (wrong escrow sequence: the client keeps asking until its
deadline, then the order stays in flight, as any order does): callers that act on an escrow
the other party also spends should `wait_applied` the other party's last transaction first.

Clock margin: the phase rules (escrow.py) are judged by each validator's clock. The wallet
signs an order only when it is in its phase at this node's clock moved `margin` seconds
either way (`EscrowMarginError` otherwise, before anything is signed), so a validator whose
clock is up to `margin` off agrees: payouts stop `margin` before the deadline, refunds start
`margin` after it.
"""
from __future__ import annotations

from typing import Callable

from nacl.signing import SigningKey

from fognode.ledger.amounts import format_amount
from fognode.ledger.errors import OrderRejected, Reason
from fognode.ledger.escrow import Escrow, time_problem
from fognode.ledger.escrow_orders import (BreachReport, DebitNote, EscrowCollateralOrder, EscrowOpenOrder,
                                          EscrowOrder, EscrowPayoutOrder, EscrowRefundOrder, EscrowSlashOrder,
                                          escrow_id)
from fognode.ledger.messages import Certificate, Order
from fognode.ledger.state import LedgerState
from fognode.ledger.submit import OrderSubmitter

CLOCK_MARGIN = 5.0       # seconds (see the module docstring)


class EscrowMarginError(OrderRejected):
    """The order is too close to a phase boundary of its escrow (by this node's clock, give or
    take the margin) for every validator to agree: wait (a refund) or give up (a payout)."""


class EscrowClient:
    def __init__(self, submitter: OrderSubmitter, state: LedgerState, clock: Callable[[], float],
                 margin: float = CLOCK_MARGIN) -> None:
        self.submitter = submitter
        self.state = state
        self.clock = clock
        self.margin = margin
        self.chain = submitter.genesis.chain_id
        self.fee = submitter.genesis.fee

    # -- reading --------------------------------------------------------------------------------

    def escrow(self, escrow: bytes) -> Escrow | None:
        """The escrow as this replica holds it (None: not opened, or not here yet)."""
        return self.state.escrows.get(escrow)

    def escrows_of(self, party: bytes) -> list[tuple[bytes, Escrow]]:
        """The escrows where `party` is the customer or the payee, by id."""
        return sorted((k, e) for k, e in self.state.escrows.items() if party in (e.customer, e.payee))

    def escrow_id(self, customer: bytes, agreement: bytes) -> bytes:
        return escrow_id(self.chain, customer, agreement)

    # -- orders -----------------------------------------------------------------------------------

    def _check_margin(self, order: EscrowOrder) -> None:
        e = self.escrow(order.escrow)
        now = self.clock()
        for t in (now - self.margin, now + self.margin):
            if e is None and not isinstance(order, EscrowOpenOrder):
                return               # the submitter's state check names the unknown escrow
            problem = time_problem(e, order, t)
            if problem is not None:
                raise EscrowMarginError(problem[0], f"{problem[1]} (with this wallet's clock margin of "
                                                    f"{self.margin:g} s)")

    async def _submit(self, wallet: bytes | None, build: Callable[[bytes, int, int, int], EscrowOrder],
                      escrow: bytes | None, timeout: float) -> Certificate:
        key = await self.submitter.unlock_wallet(wallet or self.submitter.default_wallet())
        sender = bytes(key.verify_key)

        def make(seq: int, epoch: int) -> Order:
            e = self.escrow(escrow) if escrow is not None else None
            order = build(sender, seq, epoch, e.next_sequence if e is not None else 1)
            self._check_margin(order)
            return order
        return await self.submitter.submit(key, make, timeout)

    async def open(self, agreement: bytes, payee: bytes, amount: int, deadline: int, grace: int, *,
                   uptime_ppm: int = 0, penalty: int = 0, witnesses: tuple[bytes, ...] = (), threshold: int = 0,
                   wallet: bytes | None = None, timeout: float = 30.0) -> Certificate:
        """Lock `amount` from the wallet (the customer) for `agreement`; the escrow's id is
        `cert.order.order.escrow`. Raises OrderRejected (EscrowMarginError), NotCertified,
        WalletError, LedgerStorageFailed (as every method here)."""
        return await self._submit(wallet, lambda s, q, ep, _n: EscrowOpenOrder(
            chain=self.chain, epoch=ep, sender=s, sequence=q, fee=self.fee, agreement=agreement, payee=payee,
            amount=amount, deadline=deadline, grace=grace, uptime_ppm=uptime_ppm, penalty=penalty,
            witnesses=witnesses, threshold=threshold), None, timeout)

    async def lock_collateral(self, escrow: bytes, amount: int, *, wallet: bytes | None = None,
                              timeout: float = 30.0) -> Certificate:
        """Lock `amount` of the wallet's (the payee's) balance as the escrow's collateral."""
        return await self._submit(wallet, lambda s, q, ep, n: EscrowCollateralOrder(
            chain=self.chain, epoch=ep, sender=s, sequence=q, fee=self.fee, escrow=escrow, escrow_sequence=n,
            amount=amount), escrow, timeout)

    async def sign_debit_note(self, escrow: bytes, due: int, *, wallet: bytes | None = None) -> DebitNote:
        """The customer's signature on `due` micro-units owed in total under `escrow`. Refused
        (OrderRejected, bad_debit_note) when this replica holds the escrow and the note could
        never be paid: the wallet is not its customer, or `due` is over the escrowed amount
        (the validators refuse such a note only when the payee presents it). An escrow this
        replica does not hold yet is signed for as asked."""
        key = await self.submitter.unlock_wallet(wallet or self.submitter.default_wallet())
        e = self.escrow(escrow)
        if e is not None and e.customer != bytes(key.verify_key):
            raise OrderRejected(Reason.BAD_DEBIT_NOTE, "this wallet is not the escrow's customer: "
                                                       "only the customer signs its debit notes")
        if e is not None and due > e.amount:
            raise OrderRejected(Reason.BAD_DEBIT_NOTE, f"due {format_amount(due)} is over the "
                                                       f"{format_amount(e.amount)} the escrow holds")
        return DebitNote.sign(key, escrow, due)

    async def pay_debit_note(self, note: DebitNote, *, wallet: bytes | None = None,
                             timeout: float = 30.0) -> Certificate:
        """Collect `note.due` minus what was paid already (the wallet is the payee)."""
        return await self._submit(wallet, lambda s, q, ep, n: EscrowPayoutOrder(
            chain=self.chain, epoch=ep, sender=s, sequence=q, fee=self.fee, escrow=note.escrow,
            escrow_sequence=n, note=note), note.escrow, timeout)

    async def refund(self, escrow: bytes, *, wallet: bytes | None = None, timeout: float = 30.0) -> Certificate:
        """Close the escrow after its deadline (the customer) or its grace period (the payee)."""
        return await self._submit(wallet, lambda s, q, ep, n: EscrowRefundOrder(
            chain=self.chain, epoch=ep, sender=s, sequence=q, fee=self.fee, escrow=escrow, escrow_sequence=n),
            escrow, timeout)

    async def slash(self, report: BreachReport, *, wallet: bytes | None = None, timeout: float = 30.0) -> Certificate:
        """Take the penalty out of the collateral on a witnessed breach (the wallet is the customer)."""
        return await self._submit(wallet, lambda s, q, ep, n: EscrowSlashOrder(
            chain=self.chain, epoch=ep, sender=s, sequence=q, fee=self.fee, escrow=report.escrow,
            escrow_sequence=n, report=report), report.escrow, timeout)

    @staticmethod
    def sign_breach(witness: SigningKey, report: BreachReport) -> tuple[bytes, bytes]:
        """A witness's signature on a breach report (the market's SLA monitors call this)."""
        return report.witness_signature(witness)


