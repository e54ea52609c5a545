"""Access fees: what a host checks before it serves a shard (sans-IO).

The accessor pays the owner first: a ledger transfer of at least the manifest's `fee` to the
manifest's `payee`, memo `fog.access:<hex service id>:<hex access key>`, where the access key
is an Ed25519 key the accessor makes for this access. The transfer's certificate is final
(a quorum of the committee signed it), and any node checks it offline against the committee
of its epoch. Then, for each shard, it asks the host with an `AccessRequest`: the service id,
the shard's hash, the certificate, the access key and that key's signature over
(host's hosting key, service id, shard, transaction id).

A host serves only when (`check_payment`): the certificate verifies; its order is a transfer
to the payee the owner registered with the host, of at least the fee the owner registered,
with exactly that memo; its epoch is the current ledger epoch or one of the `max_age` before
it (a payment is good for about that long); and the access key signed this request for this
host. Certificates are public (every replica gossips them), so the signature is what stops
anyone who saw a payment from using it: only the payer holds the access key. One payment
buys one access: each host serves a payment at most `max_uses` times per shard
(`PaymentUses`), enough to retry a broken transfer, too few to share a payment widely.

Whose fault: a request that does not decode is the sender's (MALFORMED); the refusals name
what the accessor must fix (NO_PAYMENT, FEE_TOO_LOW, STALE_PAYMENT, ...).
"""
from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from nacl.signing import SigningKey

from fognode.ledger.messages import Certificate, TransferOrder, decode_certificate
from fognode.node.errors import FognodeError, RemoteProtocolError
from fognode.node.wire import Fields, sign, verify

VERSION = 1
MEMO_PREFIX = "fog.access:"
MAX_USES = 3
MAX_TRACKED = 100_000


class Refusal(enum.Enum):
    MALFORMED = "malformed"                # the request does not decode
    NO_PAYMENT = "no_payment"              # no certificate came with it
    BAD_CERTIFICATE = "bad_certificate"    # not a quorum certificate of its epoch's committee
    NOT_A_TRANSFER = "not_a_transfer"      # the certified order is not a transfer
    WRONG_PAYEE = "wrong_payee"            # paid to someone else than the service's owner
    FEE_TOO_LOW = "fee_too_low"            # less than the service's access fee
    WRONG_MEMO = "wrong_memo"              # the memo does not name this service and access key
    STALE_PAYMENT = "stale_payment"        # the payment's epoch is too old (or in the future)
    BAD_PROOF = "bad_proof"                # the access key did not sign this request
    USED_UP = "used_up"                    # this payment was already served max_uses times here
    UNKNOWN_SHARD = "unknown_shard"        # this host keeps no such shard of this service
    HOSTING_UNPAID = "hosting_unpaid"      # the owner stopped paying for the hosting


class AccessRefused(FognodeError):
    """A host refused a shard; `reason` says which rule, the message the details."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.detail = message


def access_memo(sid: bytes, access_key: bytes) -> str:
    return f"{MEMO_PREFIX}{sid.hex()}:{access_key.hex()}"


def parse_memo(memo: str) -> tuple[bytes, bytes] | None:
    """(service id, access key) of an access payment's memo, or None if it is not one."""
    if not memo.startswith(MEMO_PREFIX):
        return None
    parts = memo[len(MEMO_PREFIX):].split(":")
    try:
        if len(parts) == 2 and all(len(p) == 64 for p in parts):
            return bytes.fromhex(parts[0]), bytes.fromhex(parts[1])
    except ValueError:
        pass
    return None


def proof_body(host: bytes, sid: bytes, shard: bytes, tx: bytes) -> dict[str, Any]:
    return {"t": "fog.access", "host": host, "sid": sid, "shard": shard, "tx": tx}


@dataclass(frozen=True)
class AccessRequest:
    sid: bytes
    shard: bytes
    cert: Certificate | None
    key: bytes
    sig: bytes

    @classmethod
    def make(cls, access_key: SigningKey, host: bytes, sid: bytes, shard: bytes,
             cert: Certificate | None) -> "AccessRequest":
        tx = cert.tx_id if cert is not None else b""
        return cls(sid, shard, cert, bytes(access_key.verify_key), sign(access_key, proof_body(host, sid, shard, tx)))

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": VERSION, "t": "get", "sid": self.sid, "shard": self.shard,
                               "key": self.key, "sig": self.sig}
        if self.cert is not None:
            out["cert"] = self.cert.to_wire()
        return out


def decode_access_request(raw: Any, *, peer: str | None = None) -> AccessRequest:
    """AccessRefused(MALFORMED) naming the field when `raw` is not an access request."""
    try:
        f = Fields(raw, "hosted access request", versions={VERSION}, peer=peer)
        if f.str("t", max_len=8) != "get":
            raise RemoteProtocolError("hosted access request: t is not 'get'", peer=peer)
        sid, shard = f.bytes("sid", size=32), f.bytes("shard", size=32)
        key, sig = f.bytes("key", size=32), f.bytes("sig", size=64)
        cert = decode_certificate(f.map("cert", max_len=8), peer=peer) if f.has("cert") else None
        f.done()
    except RemoteProtocolError as e:
        raise AccessRefused(Refusal.MALFORMED, str(e)) from None
    return AccessRequest(sid, shard, cert, key, sig)


@dataclass(frozen=True)
class FeeTerms:
    """What the owner registered with the host for one service."""

    sid: bytes
    payee: bytes
    fee: int


def check_payment(req: AccessRequest, terms: FeeTerms, host: bytes, *,
                  verify_cert: Callable[[Certificate], None], epoch: int, max_age: int = 1) -> Certificate | None:
    """The request's certificate when it pays for this access (module docstring), None for a
    service without fee; else AccessRefused naming the rule. `verify_cert` raises on a certificate that is not a quorum
    of its epoch's committee (LedgerApi.verify_certificate); `epoch` is the current epoch."""
    cert = req.cert
    if cert is None and terms.fee == 0:
        return None
    if cert is None:
        raise AccessRefused(Refusal.NO_PAYMENT, f"an access to this service costs {terms.fee} micro-units "
                                                "paid to its owner; no payment certificate came with the request")
    try:
        verify_cert(cert)
    except FognodeError as e:
        raise AccessRefused(Refusal.BAD_CERTIFICATE, str(e)) from None
    order = cert.order.order
    if not isinstance(order, TransferOrder):
        raise AccessRefused(Refusal.NOT_A_TRANSFER, f"the certified order is a {order.kind.value}, not a transfer")
    if order.recipient != terms.payee:
        raise AccessRefused(Refusal.WRONG_PAYEE, "the payment is not to the service's owner")
    if order.amount < terms.fee:
        raise AccessRefused(Refusal.FEE_TOO_LOW, f"paid {order.amount}, the fee is {terms.fee} micro-units")
    if order.memo != access_memo(terms.sid, req.key):
        raise AccessRefused(Refusal.WRONG_MEMO, "the memo does not name this service and the request's access key")
    if not epoch - max_age <= order.epoch <= epoch + 1:
        raise AccessRefused(Refusal.STALE_PAYMENT, f"paid in epoch {order.epoch}; this host accepts "
                                                   f"{epoch - max_age}..{epoch + 1}: pay again")
    if not verify(req.key, proof_body(host, req.sid, req.shard, cert.tx_id), req.sig):
        raise AccessRefused(Refusal.BAD_PROOF, "the access key did not sign this request for this host")
    return cert


class PaymentUses:
    """How often each (payment, shard) was served here; bounded (oldest forgotten first: a
    forgotten payment is stale by then at any sane epoch length and MAX_TRACKED)."""

    def __init__(self, max_uses: int = MAX_USES, capacity: int = MAX_TRACKED) -> None:
        self.max_uses = max_uses
        self.capacity = capacity
        self._uses: OrderedDict[tuple[bytes, bytes], int] = OrderedDict()

    def admit(self, tx: bytes, shard: bytes) -> None:
        """Count one serve; AccessRefused(USED_UP) past max_uses."""
        n = self._uses.get((tx, shard), 0)
        if n >= self.max_uses:
            raise AccessRefused(Refusal.USED_UP, f"this payment was served {n} times here; pay again")
        self._uses[(tx, shard)] = n + 1
        self._uses.move_to_end((tx, shard))
        while len(self._uses) > self.capacity:
            self._uses.popitem(last=False)
