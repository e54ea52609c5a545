"""Ledger messages: orders, votes, certificates, rejections, fork proofs, and their decoders.

Orders: transfers, reward mints and stake changes here; escrow orders in escrow_orders.py and
reward-pool orders in rewardpool_orders.py (decoded through `decode_order` too, one decoder
per kind). All share order_base.py.

Every order is a versioned map signed by its sender over pack(body); its transaction id is
BLAKE2b-256(pack(body)). A validator's vote signs the small map {"v", "kind": "ledger.vote",
"tx": id}, so replicas hash 30-odd bytes per vote check, not the whole order. A certificate is
a signed order plus the votes of a quorum.

Decoders (`decode_*`) check structure (types, sizes, versions) and raise RemoteProtocolError;
the semantic checks that carry a rejection reason (amount range, memo length, address size)
are `order_problem()`, run by validators before anything else, so a client gets a reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import msgpack
from nacl.signing import SigningKey

from fognode.ledger.amounts import MAX_AMOUNT
from fognode.ledger.errors import Reason
from fognode.ledger.escrow import escrow_order_problem
from fognode.ledger.escrow_orders import (ESCROW_DECODERS, EscrowCollateralOrder, EscrowOpenOrder,
                                          EscrowOrder, EscrowPayoutOrder, EscrowRefundOrder,
                                          EscrowSlashOrder)
from fognode.ledger.order_base import VERSION, WIRE_INT, OrderBase, OrderKind
from fognode.ledger.quorum import check_signature, remember_signed
from fognode.ledger.receipts import Receipt, decode_receipt
from fognode.ledger.rewardpool import order_problem as pool_order_problem
from fognode.ledger.rewardpool_orders import (POOL_DECODERS, POOL_ORDERS, PoolCloseOrder, PoolOpenOrder,
                                              PoolPayOrder)
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields, digest, pack

MAX_MEMO_BYTES = 256
_WIRE_MEMO = 4096          # structural bound; the 256-byte rule is a reasoned rejection
_WIRE_INT = WIRE_INT       # structural bound; the 63-bit rule is a reasoned rejection
MAX_VOTES = 256


@dataclass(frozen=True)
class TransferOrder(OrderBase):
    recipient: bytes
    amount: int
    memo: str = ""
    kind: ClassVar[OrderKind] = OrderKind.TRANSFER

    def body(self) -> dict[str, Any]:
        return {**self._common(), "recipient": self.recipient, "amount": self.amount, "memo": self.memo}

    def debit(self) -> int:
        return self.amount + self.fee


@dataclass(frozen=True)
class MintOrder(OrderBase):
    """Credit `amount` new tokens to `recipient` (the receipt's beneficiary); the sender (who
    distributes the reward, often the beneficiary itself) pays the fee."""

    recipient: bytes
    amount: int
    receipt: Receipt
    kind: ClassVar[OrderKind] = OrderKind.MINT

    def body(self) -> dict[str, Any]:
        return {**self._common(), "recipient": self.recipient, "amount": self.amount,
                "receipt": self.receipt.to_wire()}


@dataclass(frozen=True)
class BondOrder(OrderBase):
    """Lock `amount` of the sender's balance as stake."""

    amount: int
    kind: ClassVar[OrderKind] = OrderKind.BOND

    def body(self) -> dict[str, Any]:
        return {**self._common(), "amount": self.amount}

    def debit(self) -> int:
        return self.amount + self.fee


@dataclass(frozen=True)
class UnbondOrder(OrderBase):
    """Start unbonding `amount` of stake; it becomes spendable `unbonding_epochs` later."""

    amount: int
    kind: ClassVar[OrderKind] = OrderKind.UNBOND

    def body(self) -> dict[str, Any]:
        return {**self._common(), "amount": self.amount}


Order = Union[TransferOrder, MintOrder, BondOrder, UnbondOrder, EscrowOpenOrder, EscrowCollateralOrder,
              EscrowPayoutOrder, EscrowRefundOrder, EscrowSlashOrder, PoolOpenOrder, PoolPayOrder, PoolCloseOrder]
_FLAT = (TransferOrder, BondOrder, UnbondOrder)


_VOTE_PREFIX, _VOTE_SUFFIX = pack({"v": VERSION, "kind": "ledger.vote", "tx": b"\xab" * 32}).split(b"\xab" * 32)


def vote_message(tx_id: bytes) -> bytes:
    """The bytes a validator signs to vote for transaction `tx_id`: pack({"v", "kind":
    "ledger.vote", "tx"}), built around the constant parts (tests check it equals pack())."""
    if len(tx_id) != 32:
        return pack({"v": VERSION, "kind": "ledger.vote", "tx": tx_id})
    return _VOTE_PREFIX + tx_id + _VOTE_SUFFIX


def _pack_flat(body: dict[str, Any]) -> bytes:
    """pack() of a map whose values are str/int/bytes only (transfer, bond, unbond bodies):
    the same canonical bytes without the generic recursive walk (tests check equality)."""
    return msgpack.packb(dict(sorted(body.items())), use_bin_type=True)


@dataclass(frozen=True)
class SignedOrder:
    order: Order
    signature: bytes
    body_bytes: bytes = field(init=False, repr=False, compare=False)
    tx_id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        body = self.order.body()
        b = _pack_flat(body) if isinstance(self.order, _FLAT) else pack(body)
        object.__setattr__(self, "body_bytes", b)
        object.__setattr__(self, "tx_id", digest(b))

    @classmethod
    def sign(cls, key: SigningKey, order: Order) -> "SignedOrder":
        if bytes(key.verify_key) != order.sender:
            raise ValueError("the signing key is not the order's sender")
        so = cls(order, key.sign(pack(order.body())).signature)
        remember_signed(order.sender, so.body_bytes, so.signature)
        return so

    def signature_ok(self) -> bool:
        return check_signature(self.order.sender, self.body_bytes, self.signature)

    @property
    def key(self) -> tuple[bytes, int]:
        return (self.order.sender, self.order.sequence)

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "order": self.order.body(), "sig": self.signature}

    def encoded(self) -> bytes:
        """pack(to_wire()), reusing the body bytes (a msgpack map is its header then its
        key/value encodings in order, and the keys "order" < "sig" < "v" are sorted)."""
        return (b"\x83" + _K_ORDER + self.body_bytes + _K_SIG + msgpack.packb(self.signature, use_bin_type=True)
                + _K_V + msgpack.packb(VERSION))


_K_ORDER = msgpack.packb("order")
_K_SIG = msgpack.packb("sig")
_K_V = msgpack.packb("v")
_K_VOTES = msgpack.packb("votes")
_K_PREV = msgpack.packb("prev")
_K_CERTS = msgpack.packb("certs")


def vote_reply(vote: Vote) -> bytes:
    """pack({"v": 1, "vote": vote.to_wire()}), the order stream's reply carrying a vote,
    without the generic walk (keys in sorted order; tests check it equals pack())."""
    return msgpack.packb({"v": VERSION, "vote": {"sig": vote.signature, "tx": vote.tx_id, "v": VERSION,
                                                  "validator": vote.validator}}, use_bin_type=True)


def cert_batch(certs: list[Certificate]) -> bytes:
    """pack({"v": 1, "certs": [c.to_wire() for c in certs]}), the certificate topic's batch,
    from each certificate's `encoded()` (keys "certs" < "v"; tests check it equals pack())."""
    p = msgpack.Packer(use_bin_type=True)
    return (b"\x82" + _K_CERTS + p.pack_array_header(len(certs)) + b"".join(c.encoded() for c in certs)
            + _K_V + msgpack.packb(VERSION))


def order_request(so: SignedOrder, prev: bytes | None) -> bytes:
    """pack({"v", "order": so.to_wire(), "prev"?}), the order stream's request for `so`, built
    from the order's body bytes and `prev` (the previous certificate's encoding, as the store
    holds it: `Certificate.encoded()`) without decoding or walking them again (keys "order" <
    "prev" < "v"; tests check it equals pack())."""
    v = _K_V + msgpack.packb(VERSION)
    if prev is None:
        return b"\x82" + _K_ORDER + so.encoded() + v
    return b"\x83" + _K_ORDER + so.encoded() + _K_PREV + prev + v


@dataclass(frozen=True)
class Vote:
    tx_id: bytes
    validator: bytes
    signature: bytes

    @classmethod
    def sign(cls, key: SigningKey, tx_id: bytes) -> "Vote":
        msg = vote_message(tx_id)
        vote = cls(tx_id, bytes(key.verify_key), key.sign(msg).signature)
        remember_signed(vote.validator, msg, vote.signature)
        return vote

    def signature_ok(self) -> bool:
        return check_signature(self.validator, vote_message(self.tx_id), self.signature)

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "tx": self.tx_id, "validator": self.validator, "sig": self.signature}


@dataclass(frozen=True)
class Certificate:
    order: SignedOrder
    votes: tuple[tuple[bytes, bytes], ...]    # (validator pubkey, signature)
    vote_message: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "vote_message", vote_message(self.order.tx_id))

    @property
    def tx_id(self) -> bytes:
        return self.order.tx_id

    @classmethod
    def from_votes(cls, order: SignedOrder, votes: list[Vote]) -> "Certificate":
        return cls(order, tuple(sorted((v.validator, v.signature) for v in votes)))

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "order": self.order.to_wire(), "votes": [[k, s] for k, s in self.votes]}

    def encoded(self) -> bytes:
        """pack(to_wire()) without re-walking the order (keys "order" < "v" < "votes")."""
        return (b"\x83" + _K_ORDER + self.order.encoded() + _K_V + msgpack.packb(VERSION) + _K_VOTES
                + msgpack.packb([[k, s] for k, s in self.votes], use_bin_type=True))


@dataclass(frozen=True)
class Rejection:
    tx_id: bytes
    reason: Reason
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "tx": self.tx_id, "reason": self.reason.value, "message": self.message}


@dataclass(frozen=True)
class ForkProof:
    """Two orders signed by one sender for one sequence: the sender tried to double-spend."""

    first: SignedOrder
    second: SignedOrder

    def valid(self) -> bool:
        a, b = self.first, self.second
        return (a.key == b.key and a.tx_id != b.tx_id and a.order.chain == b.order.chain
                and a.signature_ok() and b.signature_ok())

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "first": self.first.to_wire(), "second": self.second.to_wire()}


# -- semantic checks with reasons ----------------------------------------------------------

def order_problem(order: Order) -> tuple[Reason, str] | None:
    """The first field-level problem of an order as (reason, message), or None."""
    if len(order.sender) != 32:
        return Reason.BAD_ADDRESS, f"sender is {len(order.sender)} bytes, not a 32-byte key"
    if not 0 <= order.fee <= MAX_AMOUNT:
        return Reason.BAD_AMOUNT, f"fee {order.fee} is outside [0, 2^63-1]"
    if order.sequence < 0:
        return Reason.WRONG_SEQUENCE, f"sequence {order.sequence} is negative"
    if isinstance(order, (TransferOrder, MintOrder)):
        if len(order.recipient) != 32:
            return Reason.BAD_ADDRESS, f"recipient is {len(order.recipient)} bytes, not a 32-byte key"
    if isinstance(order, (TransferOrder, MintOrder, BondOrder, UnbondOrder)):
        if not 1 <= order.amount <= MAX_AMOUNT:
            return Reason.BAD_AMOUNT, f"amount {order.amount} is outside [1, 2^63-1] micro-units"
        if order.amount + order.fee > MAX_AMOUNT:
            return Reason.BAD_AMOUNT, "amount plus fee overflows 64 bits"
    if isinstance(order, TransferOrder):
        n = len(order.memo.encode("utf-8"))
        if n > MAX_MEMO_BYTES:
            return Reason.MEMO_TOO_LONG, f"memo is {n} bytes, over the limit of {MAX_MEMO_BYTES}"
    if isinstance(order, MintOrder) and order.receipt.beneficiary != order.recipient:
        return Reason.BAD_EVIDENCE, "mint recipient is not the receipt's beneficiary"
    if isinstance(order, POOL_ORDERS):
        return pool_order_problem(order)
    if not isinstance(order, (TransferOrder, MintOrder, BondOrder, UnbondOrder)):
        return escrow_order_problem(order)
    return None


# -- decoders ------------------------------------------------------------------------------

def decode_order(raw: Any, *, peer: str | None = None) -> Order:
    f = Fields(raw, "ledger.Order", versions={VERSION}, peer=peer)
    kind_s = f.str("kind", max_len=16)
    try:
        kind = OrderKind(kind_s)
    except ValueError:
        raise RemoteProtocolError(f"ledger.Order: unknown kind {kind_s!r}", peer=peer) from None
    common = dict(
        chain=f.str("chain", max_len=64),
        epoch=f.int("epoch", lo=0, hi=2**40),
        sender=f.bytes("sender", max_len=64),
        sequence=f.int("sequence", lo=-_WIRE_INT, hi=_WIRE_INT),
        fee=f.int("fee", lo=-_WIRE_INT, hi=_WIRE_INT),
    )
    order: Order
    if kind is OrderKind.TRANSFER:
        order = TransferOrder(**common, recipient=f.bytes("recipient", max_len=64),
                              amount=f.int("amount", lo=-_WIRE_INT, hi=_WIRE_INT),
                              memo=f.str("memo", max_len=_WIRE_MEMO))
    elif kind is OrderKind.MINT:
        order = MintOrder(**common, recipient=f.bytes("recipient", max_len=64),
                          amount=f.int("amount", lo=-_WIRE_INT, hi=_WIRE_INT),
                          receipt=decode_receipt(f.map("receipt", max_len=16), peer=peer))
    elif kind in ESCROW_DECODERS:
        order = ESCROW_DECODERS[kind](f, common, peer)
    elif kind in POOL_DECODERS:
        order = POOL_DECODERS[kind](f, common, peer)
    elif kind is OrderKind.BOND:
        order = BondOrder(**common, amount=f.int("amount", lo=-_WIRE_INT, hi=_WIRE_INT))
    else:
        order = UnbondOrder(**common, amount=f.int("amount", lo=-_WIRE_INT, hi=_WIRE_INT))
    f.done()
    return order


def decode_signed_order(raw: Any, *, peer: str | None = None) -> SignedOrder:
    f = Fields(raw, "ledger.SignedOrder", versions={VERSION}, peer=peer)
    so = SignedOrder(decode_order(f.map("order", max_len=32), peer=peer), f.bytes("sig", size=64))
    f.done()
    return so


def decode_vote(raw: Any, *, peer: str | None = None) -> Vote:
    f = Fields(raw, "ledger.Vote", versions={VERSION}, peer=peer)
    v = Vote(f.bytes("tx", size=32), f.bytes("validator", size=32), f.bytes("sig", size=64))
    f.done()
    return v


def decode_certificate(raw: Any, *, peer: str | None = None) -> Certificate:
    f = Fields(raw, "ledger.Certificate", versions={VERSION}, peer=peer)
    order = decode_signed_order(f.map("order", max_len=8), peer=peer)
    votes = []
    for i, item in enumerate(f.list("votes", max_len=MAX_VOTES)):
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], bytes)
                or not isinstance(item[1], bytes) or len(item[0]) != 32 or len(item[1]) != 64):
            raise RemoteProtocolError(f"ledger.Certificate: votes[{i}] must be [32-byte key, 64-byte signature]",
                                      peer=peer)
        votes.append((item[0], item[1]))
    f.done()
    return Certificate(order, tuple(votes))


def decode_rejection(raw: Any, *, peer: str | None = None) -> Rejection:
    f = Fields(raw, "ledger.Rejection", versions={VERSION}, peer=peer)
    tx = f.bytes("tx", size=32)
    reason_s = f.str("reason", max_len=32)
    try:
        reason = Reason(reason_s)
    except ValueError:
        raise RemoteProtocolError(f"ledger.Rejection: unknown reason {reason_s!r}", peer=peer) from None
    r = Rejection(tx, reason, f.str("message", max_len=1024))
    f.done()
    return r


def decode_fork_proof(raw: Any, *, peer: str | None = None) -> ForkProof:
    f = Fields(raw, "ledger.ForkProof", versions={VERSION}, peer=peer)
    p = ForkProof(decode_signed_order(f.map("first", max_len=8), peer=peer),
                  decode_signed_order(f.map("second", max_len=8), peer=peer))
    f.done()
    return p
