"""Escrow records and the rules of escrow orders (escrow_orders.py), without IO.

The record. An escrow holds the customer's locked funds (`amount`, of which `paid` went to the
payee), the payee's `collateral` (of which `slashed` went to the customer), its terms
(deadline, grace, SLA) and its own sequence: `next_sequence` is the escrow sequence the next
order spending it must carry (the open order is sequence 0). Closed escrows stay (with
nothing held), so an escrow id is never reused. Stored and hashed into the state root as a
versioned msgpack list (`Escrow.encode`).

Who may spend it, and when. Time rules are judged by each validator's own clock when it votes
(`time_problem(..., now)`): there is no global time. A certificate is more than 2/3 of the
stake agreeing that the rule held on their clocks; replicas applying it do not look at time
again, so replay is deterministic. Clock skew moves the boundaries by up to the validators'
skew: an order sent within the skew of a boundary may be refused by some validators and
accepted by others (it may then gather no quorum and must be sent again, or be refused);
wallets keep a margin from the boundaries (escrow_client.py). The phases:

- before `deadline`: the payee's. Payouts against debit notes and collateral deposits.
- from `deadline` to `deadline + grace`: the customer's. Slashing (one breach report per
  observation window) and the refund (which closes the escrow).
- from `deadline + grace` on: the refund is open to the payee too (to take its collateral
  back if the customer never closes); the customer's refund is still accepted.

One driver per phase means two honest parties never race for one escrow sequence, except
both closing after `deadline + grace` (the same outcome either way). Whatever the parties or
one faulty validator do, validators vote at most once per (escrow, escrow sequence)
(validator.py), so two orders spending one state of the escrow are never both certified.
The price of that lock, as for a FastPay account: orders that split the votes of one escrow
sequence so that neither reaches a quorum freeze the escrow (nothing is lost or paid twice,
but nothing moves any more).

The rules of each order are in `order_problem` (fields), `state_problem` (against the
escrow's record, the same on every replica at a given escrow sequence) and `time_problem`;
`effect` says what an order does to the escrow and to whose balance.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import msgpack

from fognode.ledger.amounts import MAX_AMOUNT, format_amount
from fognode.ledger.errors import Reason
from fognode.ledger.escrow_orders import (MAX_WITNESSES, EscrowCollateralOrder, EscrowOpenOrder, EscrowOrder,
                                          EscrowPayoutOrder, EscrowRefundOrder, EscrowSlashOrder)
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import unpack

RECORD_VERSION = 1
MAX_DEADLINE = 2 ** 40           # unix seconds
MAX_GRACE = 2 ** 32              # seconds
MAX_WINDOW = 2 ** 40
MAX_PROBES = 2 ** 32
PPM = 1_000_000

Problem = tuple[Reason, str]


@dataclass(frozen=True)
class Escrow:
    customer: bytes
    payee: bytes
    agreement: bytes
    amount: int
    deadline: int
    grace: int
    uptime_ppm: int
    penalty: int
    witnesses: tuple[bytes, ...]
    threshold: int
    paid: int = 0
    collateral: int = 0
    slashed: int = 0
    next_sequence: int = 1
    last_window: int = -1        # the last slashed observation window (windows only go up)
    closed: bool = False

    @property
    def held(self) -> int:
        """Micro-units the escrow still holds (counted in the supply invariant)."""
        return 0 if self.closed else self.amount - self.paid + self.collateral - self.slashed

    def encode(self) -> bytes:
        return msgpack.packb([RECORD_VERSION, self.customer, self.payee, self.agreement, self.amount, self.deadline,
                              self.grace, self.uptime_ppm, self.penalty, list(self.witnesses), self.threshold,
                              self.paid, self.collateral, self.slashed, self.next_sequence, self.last_window,
                              self.closed], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "Escrow":
        """Raises RemoteProtocolError if `data` is not a record of a known version."""
        v = unpack(data, what="ledger escrow record")
        if not isinstance(v, list) or len(v) != 17 or v[0] != RECORD_VERSION:
            raise RemoteProtocolError("ledger escrow record: not a version-1 record of 17 fields")
        (_v, customer, payee, agreement, amount, deadline, grace, uptime, penalty, witnesses, threshold,
         paid, collateral, slashed, nseq, last_window, closed) = v
        return cls(customer, payee, agreement, amount, deadline, grace, uptime, penalty, tuple(witnesses),
                   threshold, paid, collateral, slashed, nseq, last_window, closed)

    def problems(self) -> list[str]:
        """What `ledger.verify` reports about this record (nothing for a healthy one)."""
        out = []
        if not 0 <= self.paid <= self.amount:
            out.append(f"paid {self.paid} is outside [0, escrowed {self.amount}]")
        if not 0 <= self.slashed <= self.collateral:
            out.append(f"slashed {self.slashed} is outside [0, collateral {self.collateral}]")
        return out

    def view(self) -> dict[str, Any]:
        """A JSON-friendly summary (hex keys; the caller turns keys into addresses)."""
        return {"agreement": self.agreement.hex(), "amount": self.amount, "paid": self.paid,
                "collateral": self.collateral, "slashed": self.slashed, "deadline": self.deadline,
                "grace": self.grace, "uptime_ppm": self.uptime_ppm, "penalty": self.penalty,
                "threshold": self.threshold, "next_sequence": self.next_sequence,
                "last_window": self.last_window, "closed": self.closed, "held": self.held}


def _amount_problem(what: str, amount: int, fee: int, lo: int = 1) -> Problem | None:
    if not lo <= amount <= MAX_AMOUNT:
        return Reason.BAD_AMOUNT, f"{what} {amount} is outside [{lo}, 2^63-1] micro-units"
    if amount + fee > MAX_AMOUNT:
        return Reason.BAD_AMOUNT, f"{what} plus fee overflows 64 bits"
    return None


def order_problem(o: EscrowOrder) -> Problem | None:
    """The first field-level problem of an escrow order (sender, fee and sequence are checked
    by messages.order_problem first), or None."""
    if isinstance(o, EscrowOpenOrder):
        if len(o.agreement) != 32:
            return Reason.BAD_ESCROW, f"agreement id is {len(o.agreement)} bytes, not a 32-byte hash"
        if len(o.payee) != 32:
            return Reason.BAD_ADDRESS, f"payee is {len(o.payee)} bytes, not a 32-byte key"
        if o.payee == o.sender:
            return Reason.BAD_ESCROW, "the payee is the customer"
        if not 1 <= o.deadline <= MAX_DEADLINE:
            return Reason.BAD_ESCROW, f"deadline {o.deadline} is outside [1, 2^40] unix seconds"
        if not 1 <= o.grace <= MAX_GRACE:
            return Reason.BAD_ESCROW, f"grace {o.grace} is outside [1, 2^32] seconds"
        if not 0 <= o.uptime_ppm <= PPM:
            return Reason.BAD_ESCROW, f"uptime_ppm {o.uptime_ppm} is outside [0, 1000000]"
        if not 0 <= o.penalty <= MAX_AMOUNT:
            return Reason.BAD_AMOUNT, f"penalty {o.penalty} is outside [0, 2^63-1] micro-units"
        if any(len(w) != 32 for w in o.witnesses) or len(set(o.witnesses)) != len(o.witnesses):
            return Reason.BAD_ESCROW, "witnesses must be distinct 32-byte keys"
        if len(o.witnesses) > MAX_WITNESSES:
            return Reason.BAD_ESCROW, f"more than {MAX_WITNESSES} witnesses"
        if not 0 <= o.threshold <= len(o.witnesses):
            return Reason.BAD_ESCROW, f"threshold {o.threshold} is outside [0, {len(o.witnesses)} witnesses]"
        return _amount_problem("amount", o.amount, o.fee)
    if not 1 <= o.escrow_sequence <= MAX_AMOUNT:
        return Reason.WRONG_SEQUENCE, f"escrow sequence {o.escrow_sequence} is outside [1, 2^63-1]"
    if isinstance(o, EscrowCollateralOrder):
        return _amount_problem("collateral", o.amount, o.fee)
    if isinstance(o, EscrowPayoutOrder):
        if o.note.escrow != o.escrow:
            return Reason.BAD_DEBIT_NOTE, "the debit note is for another escrow"
        if not 1 <= o.note.due <= MAX_AMOUNT:
            return Reason.BAD_DEBIT_NOTE, f"the debit note's amount due {o.note.due} is outside [1, 2^63-1]"
    if isinstance(o, EscrowSlashOrder):
        r = o.report
        if r.escrow != o.escrow:
            return Reason.BAD_EVIDENCE, "the breach report is for another escrow"
        if not 0 <= r.window <= MAX_WINDOW:
            return Reason.BAD_EVIDENCE, f"window {r.window} is outside [0, 2^40]"
        if not 1 <= r.probes <= MAX_PROBES:
            return Reason.BAD_EVIDENCE, f"probes {r.probes} is outside [1, 2^32]"
        if not 0 <= r.failures <= r.probes:
            return Reason.BAD_EVIDENCE, f"failures {r.failures} is outside [0, probes {r.probes}]"
    return None


def state_problem(e: Escrow | None, o: EscrowOrder) -> Problem | None:
    """Why the escrow `e` (None: not opened) cannot take `o` now, whatever the time, or None.
    The same answer on every replica that applied the escrow's orders before `o`'s escrow
    sequence (which is all `e` depends on)."""
    if isinstance(o, EscrowOpenOrder):
        if e is not None:
            return Reason.CONFLICT, f"escrow {o.escrow.hex()[:16]} of this agreement is open already"
        return None
    if e is None:
        return Reason.ESCROW_UNKNOWN, f"no escrow {o.escrow.hex()[:16]} on this replica (not opened, or not yet here)"
    if o.escrow_sequence != e.next_sequence:
        return (Reason.WRONG_SEQUENCE,
                f"escrow sequence {o.escrow_sequence} is not the escrow's next ({e.next_sequence})")
    if e.closed:
        return Reason.ESCROW_CLOSED, "the escrow is closed (refunded)"
    if isinstance(o, (EscrowCollateralOrder, EscrowPayoutOrder)) and o.sender != e.payee:
        return Reason.NOT_ESCROW_PARTY, "only the escrow's payee may lock collateral or collect payouts"
    if isinstance(o, EscrowSlashOrder) and o.sender != e.customer:
        return Reason.NOT_ESCROW_PARTY, "only the escrow's customer may slash"
    if isinstance(o, EscrowRefundOrder) and o.sender not in (e.customer, e.payee):
        return Reason.NOT_ESCROW_PARTY, "only the escrow's customer or payee may refund it"
    if isinstance(o, EscrowPayoutOrder):
        if not o.note.signed_by(e.customer):
            return Reason.BAD_DEBIT_NOTE, "the debit note is not signed by the escrow's customer"
        if o.note.due <= e.paid:
            return (Reason.BAD_DEBIT_NOTE, f"the note's {format_amount(o.note.due)} due is paid already "
                                           f"({format_amount(e.paid)} paid)")
        if o.note.due > e.amount:
            return (Reason.BAD_DEBIT_NOTE, f"the note's {format_amount(o.note.due)} due exceeds the escrowed "
                                           f"{format_amount(e.amount)}")
    if isinstance(o, EscrowSlashOrder):
        r = o.report
        if e.penalty == 0 or e.collateral - e.slashed == 0:
            return Reason.BAD_EVIDENCE, "nothing to slash: no penalty in the terms or no collateral left"
        if r.window <= e.last_window:
            return Reason.BAD_EVIDENCE, f"window {r.window} is not after the last slashed window {e.last_window}"
        if (r.probes - r.failures) * PPM >= e.uptime_ppm * r.probes:
            return (Reason.BAD_EVIDENCE, f"{r.probes - r.failures} of {r.probes} probes answered: not below "
                                         f"the guaranteed uptime of {e.uptime_ppm} ppm")
        signers = r.signers(e.witnesses)
        if len(signers) < e.threshold:
            return (Reason.BAD_EVIDENCE, f"the report carries {len(signers)} valid witness signatures, "
                                         f"the escrow needs {e.threshold}")
    return None


def time_problem(e: Escrow | None, o: EscrowOrder, now: float) -> Problem | None:
    """Whether `o` is in its phase at the validator's clock `now` (see the module docstring);
    call after `state_problem` returned None."""
    if isinstance(o, EscrowOpenOrder):
        deadline, grace = o.deadline, o.grace
    else:
        assert e is not None
        deadline, grace = e.deadline, e.grace
    at = f"at {now:.0f} by this validator's clock"
    if isinstance(o, (EscrowOpenOrder, EscrowCollateralOrder, EscrowPayoutOrder)):
        if now >= deadline:
            return Reason.ESCROW_TOO_LATE, f"the escrow's deadline {deadline} has passed ({at})"
    elif isinstance(o, EscrowSlashOrder):
        if now < deadline:
            return Reason.ESCROW_TOO_EARLY, f"slashing opens at the deadline {deadline} ({at})"
        if now >= deadline + grace:
            return Reason.ESCROW_TOO_LATE, f"slashing closed at {deadline + grace} ({at})"
    elif isinstance(o, EscrowRefundOrder):
        assert e is not None
        opens = deadline if o.sender == e.customer else deadline + grace
        if now < opens:
            who = "the customer" if o.sender == e.customer else "the payee"
            return Reason.ESCROW_TOO_EARLY, f"refunds by {who} open at {opens} ({at})"
    return None


def effect(e: Escrow | None, o: EscrowOrder) -> tuple[Escrow, tuple[tuple[bytes, int], ...]]:
    """The escrow after `o` (whose problems are None) and the credits it makes (account,
    micro-units > 0). The sender's debit (`o.debit()`) is the caller's."""
    if isinstance(o, EscrowOpenOrder):
        return Escrow(o.sender, o.payee, o.agreement, o.amount, o.deadline, o.grace, o.uptime_ppm, o.penalty,
                      o.witnesses, o.threshold), ()
    assert e is not None
    nxt = e.next_sequence + 1
    if isinstance(o, EscrowCollateralOrder):
        return replace(e, collateral=e.collateral + o.amount, next_sequence=nxt), ()
    if isinstance(o, EscrowPayoutOrder):
        return replace(e, paid=o.note.due, next_sequence=nxt), ((e.payee, o.note.due - e.paid),)
    if isinstance(o, EscrowSlashOrder):
        take = min(e.penalty, e.collateral - e.slashed)
        return (replace(e, slashed=e.slashed + take, last_window=o.report.window, next_sequence=nxt),
                ((e.customer, take),))
    credits = ((e.customer, e.amount - e.paid), (e.payee, e.collateral - e.slashed))
    return replace(e, closed=True, next_sequence=nxt), tuple((k, a) for k, a in credits if a > 0)


escrow_order_problem = order_problem
