"""Contribution receipts: signed statements, by the party that received a device's work, of
what that work was worth. The contribution ledger (contribution.py) credits a device only
through them, so a node cannot claim work it did not do: every credit carries a signature by
someone else.

Two kinds of evidence are accepted, each verified by `verify_evidence(kind, data, worker)`:

- "fl_round": an FL `RoundReceipt` (protocols/fl/rewards/receipts.py), the aggregator's
  signed statement of the updates a round accepted, exactly as it travelled in the round's
  `RoundResult`. The worker is VALIDATED when the receipt lists it as accepted, REJECTED when it
  does not (the FL role hands a receipt over only for a round this node trained for). Tokens:
  round_reward x weight_ppm / 10^6, what the aggregator's "fl_update" ledger receipt for this
  worker mints (`weights_ppm`, the same rounding).
- "market_job": a `WorkReceipt` (below), signed by the market customer that received a job's
  result: the job id (the agreement id), validated or rejected, the tokens paid and the fuel
  of the accepted results (CPU seconds 0: the customer cannot see them; the provider's harvest
  session meters them). The customer's market role signs one per agreement with its final
  co-signed debit note (or, rejected, before it disputes an outvoted provider) and sends it on
  the job stream (market customer.py); the provider checks that it is by that agreement's
  customer, for itself and that agreement, and credits a validated one only when its tokens
  equal what the ledger paid out from the escrow (market provider.py). This module checks the
  signature and the worker; the contribution ledger credits one receipt per job, for a job
  this device has a market harvest session for.

Wire form of a `WorkReceipt` (one msgpack map; `sig` is the issuer's Ed25519 signature, with
the key inside its peer id, over `pack` of the map without `sig`)::

    {"v": 1, "kind": "market_job", "issuer": <peer id>, "worker": <peer id>,
     "job": <32 bytes>, "outcome": "validated" | "rejected", "tokens": <int micro-units>,
     "cpu_seconds": <float>, "fuel": <int>, "time": <unix s>, "sig": <64 bytes>}

A receipt is refused (`ReceiptRefused`, with a `RefuseReason`) when it is malformed or
oversize, its signature does not verify (forged or altered), it names another worker
(foreign: it is somebody else's credit), or its issuer is the worker itself (self-attested).
The ledger also refuses a receipt it already holds (its id: BLAKE2b-256 of the signed bytes).

What a colluding pair can and cannot gain: a worker W and an issuer I who agree can make W's
contribution ledger show work W never did (I signs whatever W asks), and inflate W's local
reliability score. Through the market role each such market credit costs them a signed
agreement, an escrow certified on the ledger (two fees), a job W really ran in a harvest session
and a payout of I's own tokens to W equal to the receipt's tokens; one credit per agreement.
W can also leave a rejected receipt uncredited: its ledger is its own account. They cannot make W's ledger credit work signed by anyone else, nor make
anybody's ledger credit I's signature for a third party. Tokens are not minted from this
ledger: FL mints need the ledger's "fl_update" evidence chain (anchored in the session
starter's announcement, bounded by its reward budget, paid once per claim) and market payments
move the customer's own escrowed tokens, so the pair can only move I's own budget to W, which
I could do with a transfer anyway. Reliability scores from these receipts are therefore a
device's own account of itself, for its operator and for the market's matching among parties
that trust its issuers; the network's trust in a device is the registry's reputation
(EigenTrust over signed observations), which a pair cannot pump without pre-trusted peers.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.peerid import peer_id_from_pubkey, peer_id_matches, pubkey_from_peer_id
from fognode.node.wire import DIGEST_LEN, SIG_LEN, Fields, digest, pack, sign, unpack, verify
from fognode.protocols.fl.rewards.receipts import PPM, decode_round_receipt, weights_ppm

WORK_RECEIPT_VERSION = 1
FL_ROUND = "fl_round"
MARKET_JOB = "market_job"
KINDS = (FL_ROUND, MARKET_JOB)
MAX_EVIDENCE = 64 * 1024     # bytes of one receipt (an FL round receipt lists <= 256 peers)
MAX_PEER_ID = 128
_U63 = 2**63 - 1


class Outcome(enum.Enum):
    VALIDATED = "validated"   # the receiver accepted the result
    REJECTED = "rejected"     # the receiver checked it and refused it


class RefuseReason(enum.Enum):
    MALFORMED = "malformed"          # not a receipt of that kind (shape, types, sizes)
    BAD_SIGNATURE = "bad_signature"  # not signed by its issuer: forged or altered
    FOREIGN = "foreign"              # names another worker: somebody else's credit
    SELF_ISSUED = "self_issued"      # the worker attests its own work
    DUPLICATE = "duplicate"          # this ledger already holds it
    UNKNOWN_KIND = "unknown_kind"    # neither fl_round nor market_job


class ReceiptRefused(RemoteProtocolError):
    """A contribution receipt was refused; `reason` says why (the issuer's or the sender's
    fault, never this node's)."""

    def __init__(self, reason: RefuseReason, message: str, *, peer: str | None = None) -> None:
        self.reason = reason
        super().__init__(f"contribution receipt refused ({reason.value}): {message}", peer=peer)


@dataclass(frozen=True)
class Credit:
    """What one verified receipt credits to its worker."""

    kind: str              # FL_ROUND or MARKET_JOB
    receipt_id: bytes      # BLAKE2b-256 of the evidence bytes (one credit per receipt)
    issuer: str            # peer id of the party that received the work and signed
    worker: str            # peer id credited
    ref: str               # what the work was for: the FL session id or the job id (hex)
    outcome: Outcome
    tokens: int            # micro-units the receipt entitles the worker to
    time: float            # when the issuer signed it (its clock)
    evidence: bytes = field(repr=False, default=b"")   # the signed bytes, kept to re-verify

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "receipt_id": self.receipt_id.hex(), "issuer": self.issuer,
                "worker": self.worker, "ref": self.ref, "outcome": self.outcome.value,
                "tokens": self.tokens, "time": self.time}


@dataclass(frozen=True)
class WorkReceipt:
    """A market customer's signed statement about one job a worker ran for it."""

    issuer: str
    worker: str
    job: bytes
    outcome: Outcome
    tokens: int
    cpu_seconds: float
    fuel: int
    time: float
    sig: bytes = field(default=b"", repr=False)

    def body(self) -> dict[str, Any]:
        return {"v": WORK_RECEIPT_VERSION, "kind": MARKET_JOB, "issuer": self.issuer,
                "worker": self.worker, "job": self.job, "outcome": self.outcome.value,
                "tokens": self.tokens, "cpu_seconds": float(self.cpu_seconds), "fuel": self.fuel,
                "time": float(self.time)}

    def encode(self) -> bytes:
        return pack({**self.body(), "sig": self.sig})


def sign_work_receipt(key: SigningKey, *, worker: str, job: bytes, outcome: Outcome,
                      tokens: int, cpu_seconds: float, fuel: int, time: float) -> WorkReceipt:
    """A receipt for `worker`'s job, signed by `key` (the customer that received the result)."""
    unsigned = WorkReceipt(peer_id_from_pubkey(bytes(key.verify_key)), worker, job, outcome,
                           tokens, float(cpu_seconds), fuel, float(time))
    return WorkReceipt(unsigned.issuer, worker, job, outcome, tokens, float(cpu_seconds), fuel,
                       float(time), sign(key, unsigned.body()))


def decode_work_receipt(data: bytes, *, peer: str | None = None) -> WorkReceipt:
    """Decode and authenticate a market work receipt (ReceiptRefused: MALFORMED or
    BAD_SIGNATURE)."""
    try:
        raw = unpack(data, max_size=MAX_EVIDENCE, what="work receipt")
        f = Fields(raw, "harvest.WorkReceipt", versions={WORK_RECEIPT_VERSION}, peer=peer)
        if f.str("kind", max_len=32) != MARKET_JOB:
            f._fail(f"field 'kind' must be {MARKET_JOB!r}")
        issuer = f.str("issuer", max_len=MAX_PEER_ID)
        worker = f.str("worker", max_len=MAX_PEER_ID)
        job = f.bytes("job", size=DIGEST_LEN)
        outcome_s = f.str("outcome", max_len=16)
        tokens = f.int("tokens", lo=0, hi=_U63)
        cpu = f.float("cpu_seconds", lo=0.0, hi=1e12)
        fuel = f.int("fuel", lo=0, hi=_U63)
        when = f.float("time", lo=0.0, hi=1e12)
        sig = f.bytes("sig", size=SIG_LEN)
        f.done()
        try:
            outcome = Outcome(outcome_s)
        except ValueError:
            f._fail(f"field 'outcome' must be validated or rejected, got {outcome_s[:16]!r}")
            raise   # unreachable: _fail raises
        try:
            key = pubkey_from_peer_id(issuer)
        except ValueError as e:
            f._fail(f"field 'issuer' is not an Ed25519 peer id ({e})")
            raise
    except RemoteProtocolError as e:
        raise ReceiptRefused(RefuseReason.MALFORMED, str(e), peer=peer) from None
    r = WorkReceipt(issuer, worker, job, outcome, tokens, cpu, fuel, when, sig)
    signed = {k: v for k, v in raw.items() if k != "sig"}
    if not verify(key, signed, sig):
        raise ReceiptRefused(RefuseReason.BAD_SIGNATURE,
                             f"work receipt is not signed by its issuer {issuer}", peer=peer)
    if pack(r.body()) != pack(signed):
        raise ReceiptRefused(RefuseReason.MALFORMED, "work receipt is not in canonical form "
                                                     "(e.g. an integer where a float belongs)", peer=peer)
    return r


def _fl_credit(data: bytes, worker: str, peer: str | None) -> Credit:
    try:
        r = decode_round_receipt(unpack(data, max_size=MAX_EVIDENCE, what="fl round receipt"),
                                 peer=peer)
    except RemoteProtocolError as e:
        reason = RefuseReason.BAD_SIGNATURE if "signature" in str(e) or "key does not match" in str(e) \
            else RefuseReason.MALFORMED
        raise ReceiptRefused(reason, str(e), peer=peer) from None
    if r.aggregator == worker or peer_id_matches(worker, r.aggregator_key):
        raise ReceiptRefused(RefuseReason.SELF_ISSUED, "an aggregator cannot attest its own "
                                                       "update", peer=peer)
    accepted = worker in {a.peer for a in r.accepted}
    tokens = r.round_reward * min(weights_ppm(r).get(worker, 0), PPM) // PPM if accepted else 0
    return Credit(FL_ROUND, digest(data), r.aggregator, worker, r.session_id.hex(),
                  Outcome.VALIDATED if accepted else Outcome.REJECTED, tokens, r.time, data)


def _market_credit(data: bytes, worker: str, peer: str | None) -> Credit:
    r = decode_work_receipt(data, peer=peer)
    if r.worker != worker:
        raise ReceiptRefused(RefuseReason.FOREIGN, f"the receipt credits {r.worker}, not "
                                                   f"{worker}", peer=peer)
    if r.issuer == worker:
        raise ReceiptRefused(RefuseReason.SELF_ISSUED, "a worker cannot attest its own job",
                             peer=peer)
    return Credit(MARKET_JOB, digest(data), r.issuer, worker, r.job.hex(), r.outcome, r.tokens,
                  r.time, data)


def verify_evidence(kind: str, data: bytes, worker: str, *, peer: str | None = None) -> Credit:
    """The credit `data` (a receipt of `kind`) gives `worker`, or ReceiptRefused.

    An FL round receipt that does not list `worker` is a REJECTED credit for it (the caller
    vouches that the worker trained for that round); a market receipt must name `worker`.
    `peer` names who handed the receipt over, for the error."""
    if len(data) > MAX_EVIDENCE:
        raise ReceiptRefused(RefuseReason.MALFORMED, f"{len(data)} bytes is over the "
                                                     f"{MAX_EVIDENCE}-byte limit", peer=peer)
    if kind == FL_ROUND:
        return _fl_credit(data, worker, peer)
    if kind == MARKET_JOB:
        return _market_credit(data, worker, peer)
    raise ReceiptRefused(RefuseReason.UNKNOWN_KIND, f"kind {kind[:32]!r} is not one of {KINDS}",
                         peer=peer)
