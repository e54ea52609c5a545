"""Escrow orders: lock a customer's funds for one market agreement, pay them out against debit
notes the customer co-signs, refund the rest after the deadline, slash the provider's collateral
on a proven SLA breach (escrow.py has the rules, state.py applies them).

Every escrow order is an ordinary ledger order (sender, sender's sequence, epoch, fee: the
sender pays the fee and its sequence lock keeps its balance from being spent twice) that also
names the escrow it spends and the escrow's sequence: validators vote at most once per
(escrow id, escrow sequence) across all escrow order kinds (validator.py), the escrow's own
lock, so two orders from different senders (the provider's payout, the customer's refund)
can never both be certified for one state of the escrow.

- `EscrowOpenOrder` (sender: the customer) creates escrow `escrow_id(chain, customer,
  agreement)` at escrow sequence 0 and locks `amount`, with the SLA terms slashing checks.
- `EscrowCollateralOrder` (sender: the payee) locks `amount` of the provider's own balance into
  the escrow as collateral.
- `EscrowPayoutOrder` (sender: the payee) carries a `DebitNote` signed by the customer: the
  cumulative amount due so far. It pays `due - paid` (notes are monotone and idempotent).
- `EscrowRefundOrder` (sender: the customer, or the payee once the grace period is over)
  closes the escrow: the customer gets the unpaid funds, the payee its unslashed collateral.
- `EscrowSlashOrder` (sender: the customer) carries a `BreachReport`: one observation window
  of the SLA, signed by a threshold of the witnesses named when the escrow was opened.

Debit notes and breach reports are signed over pack({"v", "kind", ...}) with their own kinds
("ledger.debit_note", "ledger.sla_breach") and name the escrow, whose id names the chain, so
no signature is valid for anything else. Decoders check structure and raise
RemoteProtocolError; the reasoned checks are in escrow.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Union

from nacl.signing import SigningKey

from fognode.ledger.order_base import VERSION, OrderBase, OrderKind, owned_id, wire_int
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields, pack, verify, verify_bytes

MAX_WITNESSES = 16
_ESCROW_TAG = b"fognode-escrow/1"


def escrow_id(chain: str, customer: bytes, agreement: bytes) -> bytes:
    """The id of the escrow `customer` opens for `agreement` (the market agreement's hash) on
    `chain`: BLAKE2b-256(tag || len(chain) || chain || customer || agreement). Nobody else can
    open (or pre-empt) the escrow of a customer's agreement."""
    return owned_id(_ESCROW_TAG, chain, customer, agreement)


@dataclass(frozen=True)
class DebitNote:
    """The customer's acknowledgement that `due` micro-units in total are owed under `escrow`."""

    escrow: bytes
    due: int
    signature: bytes

    def signed_body(self) -> dict[str, Any]:
        return {"v": VERSION, "kind": "ledger.debit_note", "escrow": self.escrow, "due": self.due}

    @classmethod
    def sign(cls, customer: SigningKey, escrow: bytes, due: int) -> "DebitNote":
        body = {"v": VERSION, "kind": "ledger.debit_note", "escrow": escrow, "due": due}
        return cls(escrow, due, customer.sign(pack(body)).signature)

    def signed_by(self, customer: bytes) -> bool:
        return verify(customer, self.signed_body(), self.signature)

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "escrow": self.escrow, "due": self.due, "sig": self.signature}


@dataclass(frozen=True)
class BreachReport:
    """One SLA observation window of `escrow`: `failures` of `probes` probes failed. Signed by
    witnesses ((pubkey, signature) pairs); a breach when the observed uptime is below the
    escrow's guarantee (escrow.py)."""

    escrow: bytes
    window: int
    probes: int
    failures: int
    signatures: tuple[tuple[bytes, bytes], ...]

    def signed_body(self) -> dict[str, Any]:
        return {"v": VERSION, "kind": "ledger.sla_breach", "escrow": self.escrow, "window": self.window,
                "probes": self.probes, "failures": self.failures}

    def witness_signature(self, witness: SigningKey) -> tuple[bytes, bytes]:
        return bytes(witness.verify_key), witness.sign(pack(self.signed_body())).signature

    def signers(self, allowed: tuple[bytes, ...]) -> set[bytes]:
        """The distinct keys of `allowed` whose signature over this report verifies."""
        body = pack(self.signed_body())
        out: set[bytes] = set()
        for k, sig in self.signatures:
            if k in allowed and k not in out and verify_bytes(k, body, sig):
                out.add(k)
        return out

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "escrow": self.escrow, "window": self.window, "probes": self.probes,
                "failures": self.failures, "sigs": [[k, s] for k, s in self.signatures]}



class _EscrowSpend(OrderBase):
    """An order that spends an existing escrow at the escrow's sequence `escrow_sequence`."""

    escrow: bytes
    escrow_sequence: int

    def _spend(self) -> dict[str, Any]:
        return {**self._common(), "escrow": self.escrow, "escrow_sequence": self.escrow_sequence}


@dataclass(frozen=True)
class EscrowOpenOrder(OrderBase):
    """The customer (sender) locks `amount` for `agreement`, payable to `payee` until
    `deadline` (unix seconds); after it the customer may take the rest back, and after
    `deadline + grace` the payee may close it too. SLA terms: `uptime_ppm` guaranteed uptime
    (parts per million), `penalty` slashed from the collateral per proven breach window,
    `witnesses` whose `threshold` signatures make a breach report a proof (0: the customer's
    signature alone; the provider accepts that by locking collateral)."""

    agreement: bytes
    payee: bytes
    amount: int
    deadline: int
    grace: int
    uptime_ppm: int = 0
    penalty: int = 0
    witnesses: tuple[bytes, ...] = ()
    threshold: int = 0
    kind: ClassVar[OrderKind] = OrderKind.ESCROW_OPEN

    @property
    def escrow(self) -> bytes:
        return escrow_id(self.chain, self.sender, self.agreement)

    @property
    def escrow_sequence(self) -> int:
        return 0

    def body(self) -> dict[str, Any]:
        return {**self._common(), "agreement": self.agreement, "payee": self.payee, "amount": self.amount,
                "deadline": self.deadline, "grace": self.grace, "uptime_ppm": self.uptime_ppm,
                "penalty": self.penalty, "witnesses": list(self.witnesses), "threshold": self.threshold}

    def debit(self) -> int:
        return self.amount + self.fee


@dataclass(frozen=True)
class EscrowCollateralOrder(_EscrowSpend):
    """The payee (sender) locks `amount` of its own balance into the escrow as collateral."""

    escrow: bytes
    escrow_sequence: int
    amount: int
    kind: ClassVar[OrderKind] = OrderKind.ESCROW_COLLATERAL

    def body(self) -> dict[str, Any]:
        return {**self._spend(), "amount": self.amount}

    def debit(self) -> int:
        return self.amount + self.fee


@dataclass(frozen=True)
class EscrowPayoutOrder(_EscrowSpend):
    """The payee (sender) collects `note.due - paid` against the customer's debit note."""

    escrow: bytes
    escrow_sequence: int
    note: DebitNote
    kind: ClassVar[OrderKind] = OrderKind.ESCROW_PAYOUT

    def body(self) -> dict[str, Any]:
        return {**self._spend(), "note": self.note.to_wire()}


@dataclass(frozen=True)
class EscrowRefundOrder(_EscrowSpend):
    """Close the escrow: unpaid funds to the customer, unslashed collateral to the payee."""

    escrow: bytes
    escrow_sequence: int
    kind: ClassVar[OrderKind] = OrderKind.ESCROW_REFUND

    def body(self) -> dict[str, Any]:
        return self._spend()


@dataclass(frozen=True)
class EscrowSlashOrder(_EscrowSpend):
    """The customer (sender) takes the penalty out of the collateral on a breach report."""

    escrow: bytes
    escrow_sequence: int
    report: BreachReport
    kind: ClassVar[OrderKind] = OrderKind.ESCROW_SLASH

    def body(self) -> dict[str, Any]:
        return {**self._spend(), "report": self.report.to_wire()}


EscrowOrder = Union[EscrowOpenOrder, EscrowCollateralOrder, EscrowPayoutOrder, EscrowRefundOrder, EscrowSlashOrder]
ESCROW_ORDERS = (EscrowOpenOrder, EscrowCollateralOrder, EscrowPayoutOrder, EscrowRefundOrder, EscrowSlashOrder)
ESCROW_KINDS = frozenset(c.kind for c in ESCROW_ORDERS)


# -- decoders (structure only; escrow.py gives the reasoned rejections) ----------------------------

def decode_debit_note(raw: Any, *, peer: str | None = None) -> DebitNote:
    f = Fields(raw, "ledger.DebitNote", versions={VERSION}, peer=peer)
    n = DebitNote(f.bytes("escrow", size=32), wire_int(f, "due"), f.bytes("sig", size=64))
    f.done()
    return n


def decode_breach_report(raw: Any, *, peer: str | None = None) -> BreachReport:
    f = Fields(raw, "ledger.BreachReport", versions={VERSION}, peer=peer)
    escrow, window, probes, failures = f.bytes("escrow", size=32), wire_int(f, "window"), wire_int(f, "probes"), \
        wire_int(f, "failures")
    sigs = []
    for i, item in enumerate(f.list("sigs", max_len=MAX_WITNESSES)):
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], bytes)
                or not isinstance(item[1], bytes) or len(item[0]) != 32 or len(item[1]) != 64):
            raise RemoteProtocolError(f"ledger.BreachReport: sigs[{i}] must be [32-byte key, 64-byte signature]",
                                      peer=peer)
        sigs.append((item[0], item[1]))
    f.done()
    return BreachReport(escrow, window, probes, failures, tuple(sigs))


def decode_escrow_open(f: Fields, common: dict[str, Any], peer: str | None) -> EscrowOpenOrder:
    witnesses = f.list("witnesses", max_len=MAX_WITNESSES)
    if not all(isinstance(w, bytes) and len(w) <= 64 for w in witnesses):
        raise RemoteProtocolError("ledger.Order: witnesses must be keys (bytes)", peer=peer)
    return EscrowOpenOrder(**common, agreement=f.bytes("agreement", max_len=64), payee=f.bytes("payee", max_len=64),
                           amount=wire_int(f, "amount"), deadline=wire_int(f, "deadline"), grace=wire_int(f, "grace"),
                           uptime_ppm=wire_int(f, "uptime_ppm"), penalty=wire_int(f, "penalty"),
                           witnesses=tuple(witnesses), threshold=wire_int(f, "threshold"))


def _spend_fields(f: Fields) -> dict[str, Any]:
    return {"escrow": f.bytes("escrow", size=32), "escrow_sequence": wire_int(f, "escrow_sequence")}


def decode_escrow_collateral(f: Fields, common: dict[str, Any], peer: str | None) -> EscrowCollateralOrder:
    return EscrowCollateralOrder(**common, **_spend_fields(f), amount=wire_int(f, "amount"))


def decode_escrow_payout(f: Fields, common: dict[str, Any], peer: str | None) -> EscrowPayoutOrder:
    return EscrowPayoutOrder(**common, **_spend_fields(f), note=decode_debit_note(f.map("note", max_len=8), peer=peer))


def decode_escrow_refund(f: Fields, common: dict[str, Any], peer: str | None) -> EscrowRefundOrder:
    return EscrowRefundOrder(**common, **_spend_fields(f))


def decode_escrow_slash(f: Fields, common: dict[str, Any], peer: str | None) -> EscrowSlashOrder:
    return EscrowSlashOrder(**common, **_spend_fields(f),
                            report=decode_breach_report(f.map("report", max_len=8), peer=peer))


ESCROW_DECODERS: dict[OrderKind, Callable[[Fields, dict[str, Any], str | None], EscrowOrder]] = {
    OrderKind.ESCROW_OPEN: decode_escrow_open,
    OrderKind.ESCROW_COLLATERAL: decode_escrow_collateral,
    OrderKind.ESCROW_PAYOUT: decode_escrow_payout,
    OrderKind.ESCROW_REFUND: decode_escrow_refund,
    OrderKind.ESCROW_SLASH: decode_escrow_slash,
}
