"""Evidence receipts for mint orders, and the verifiers that price them.

A receipt says "`beneficiary` earned something of `kind` in `epoch`", signed by `issuer`, the
role instance that observed it (an FL aggregator, a harvest session host, an SLA monitor, or a
validator for node uptime). Wire form::

    {"v": 1, "kind": "uptime", "issuer": <32>, "beneficiary": <32>, "epoch": 12,
     "body": {...kind-specific...}, "sig": <64>}

`sig` is the issuer's Ed25519 signature over pack() of every other field; the receipt id is
BLAKE2b-256 of that same encoding.

Claims. What is paid at most once is a receipt's *claim id*: when the body carries
`"claim": <32 bytes>` (what the reward is for, e.g. one FL round of one session), the claim id
is BLAKE2b-256(pack(["fognode-claim/1", kind, beneficiary, claim])), so two receipts for the
same thing (from two issuers, or re-issued with other details) pay once; without a claim the
claim id is the receipt id. Validators lock the claim ids they vote for (validator.py),
replicas record the claim ids of applied mints (state.py, store.py `r/` keys). A kind whose
receipts can be issued twice for one earning must make its verifier require the claim (the FL
verifier requires claim == its (session, round, peer) digest, so a body cannot dodge it).

Scopes. Claims pay each earning once; they do not bound a *set* of receipts that one issuer
splits a fixed amount over (an FL round's reward over its participants). For that a body may
carry `"scope": <32 bytes>` and `"commit": <32 bytes>` together (what the set is, e.g. one FL
round, and a digest of the whole split, e.g. a Merkle-sum root whose total the verifier
bounds). Validators sign mints whose receipts share a scope only if they carry the same commit:
the first commit a validator signs for a scope wins, a receipt with another one is refused
(`BAD_EVIDENCE`, naming the scope and both commits). The scope id is
BLAKE2b-256(pack(["fognode-scope/1", kind, scope])), so one kind cannot block another's scopes.
The lock table derives it from each locked mint's receipt (validator.py `LockTable.add`), so it
survives restarts (persisted locks) and reaches a new committee with the locks handed over
(handover.py). Locks inherited with two commits for one scope (old members that split their
votes) freeze the scope: no further mint of it is signed. Replicas need nothing new: a
certificate carries more than 2/3 of the stake, two quorums share honest stake and an honest
validator signs one commit per scope, so while at most F stake is faulty every certified mint
of a scope carries one commit (the same argument as the mint budget's, which replicas do not
re-check either). The limits: a validator that joins at a committee change inherits only the
unresolved locks, so a scope whose mints were all applied before the change is not locked
there (its claims, paid once at replicas too, stay the bound for that scope's other
receipts); and handed-over locks are checked for their sender's signature, not their
evidence, as for claims.

Pooled kinds. A verifier that also has `pool_of(receipt) -> (funder, session, cap)` (the
`PooledVerifier` protocol) prices work that its funder paid for in advance: its receipts are
paid only from the reward pool `funder` opened for `session` (rewardpool.py), never minted
(`max_reward` refuses them; `pool_reward` prices them for a pool payout). `cap` is what all
the receipts of the session can be worth together under the claim and scope locks (FL: the
session's reward budget); validators pay from a pool only if it holds at least that much, so
the certified payouts of a pool never exceed it (rewardpool.py, invariant 1). FL's "fl_update" is
such a kind: the session's announcement names the wallet that funded it.

Roles add kinds by implementing `ReceiptVerifier` and registering it with the ledger service
(`ledger_api(ctx.services).register_receipt_verifier(v)`, api.py). A verifier decodes the body
with `node.wire.Fields`, checks who may issue it and returns the largest reward (micro-units)
the receipt justifies; it raises `EvidenceError` saying what is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol as TypingProtocol

from nacl.signing import SigningKey

from fognode.ledger.errors import LedgerError
from fognode.ledger.quorum import Committee, check_signature
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields, digest, pack, plain

RECEIPT_VERSION = 1
MAX_KIND = 32
MAX_BODY_ENTRIES = 64
CLAIM_LEN = 32
CLAIM_TAG = "fognode-claim/1"
SCOPE_LEN = 32
COMMIT_LEN = 32
SCOPE_TAG = "fognode-scope/1"


class EvidenceError(LedgerError):
    """A receipt does not justify the mint (bad signature, wrong issuer, over its value)."""


@dataclass(frozen=True)
class Receipt:
    kind: str
    issuer: bytes
    beneficiary: bytes
    epoch: int
    body: dict[str, Any] = field(hash=False)
    sig: bytes
    unsigned_bytes: bytes = field(init=False, repr=False, compare=False, hash=False)
    receipt_id: bytes = field(init=False, repr=False, compare=False, hash=False)
    claim_id: bytes = field(init=False, repr=False, compare=False, hash=False)
    scope_id: bytes | None = field(init=False, repr=False, compare=False, hash=False)
    commit: bytes | None = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        ub = pack(self.unsigned())
        object.__setattr__(self, "unsigned_bytes", ub)
        object.__setattr__(self, "receipt_id", digest(ub))
        claim = self.body.get("claim")
        object.__setattr__(self, "claim_id", claim_id_of(self.kind, self.beneficiary, claim)
                           if isinstance(claim, bytes) else self.receipt_id)
        scope, commit = self.body.get("scope"), self.body.get("commit")
        if isinstance(scope, bytes) and isinstance(commit, bytes):
            object.__setattr__(self, "scope_id", scope_id_of(self.kind, scope))
            object.__setattr__(self, "commit", commit)
        else:       # not scoped (or malformed: ReceiptRegistry.max_reward refuses it)
            object.__setattr__(self, "scope_id", None)
            object.__setattr__(self, "commit", None)

    def unsigned(self) -> dict[str, Any]:
        return {"v": RECEIPT_VERSION, "kind": self.kind, "issuer": self.issuer,
                "beneficiary": self.beneficiary, "epoch": self.epoch, "body": self.body}

    def to_wire(self) -> dict[str, Any]:
        return {**self.unsigned(), "sig": self.sig}

    def signature_ok(self) -> bool:
        return check_signature(self.issuer, self.unsigned_bytes, self.sig)

    @classmethod
    def issue(cls, key: SigningKey, kind: str, beneficiary: bytes, epoch: int,
              body: dict[str, Any]) -> "Receipt":
        unsigned = {"v": RECEIPT_VERSION, "kind": kind, "issuer": bytes(key.verify_key),
                    "beneficiary": beneficiary, "epoch": epoch, "body": body}
        sig = key.sign(pack(unsigned)).signature
        return cls(kind=kind, issuer=bytes(key.verify_key), beneficiary=beneficiary, epoch=epoch,
                   body=body, sig=sig)


def claim_id_of(kind: str, beneficiary: bytes, claim: bytes) -> bytes:
    """The id under which a receipt with body `"claim": claim` is paid at most once."""
    return digest(pack([CLAIM_TAG, kind, beneficiary, claim]))


def scope_id_of(kind: str, scope: bytes) -> bytes:
    """The id under which a validator locks the one commit it signs for body `"scope": scope`."""
    return digest(pack([SCOPE_TAG, kind, scope]))


def decode_receipt(raw: Any, *, peer: str | None = None) -> Receipt:
    """Validate a receipt map; RemoteProtocolError naming the field."""
    f = Fields(raw, "ledger.Receipt", versions={RECEIPT_VERSION}, peer=peer)
    body = f.map("body", max_len=MAX_BODY_ENTRIES)
    plain(body, "ledger.Receipt: field 'body'", peer=peer)   # hashed and signed as received
    r = Receipt(
        kind=f.str("kind", max_len=MAX_KIND),
        issuer=f.bytes("issuer", size=32),
        beneficiary=f.bytes("beneficiary", size=32),
        epoch=f.int("epoch", lo=0, hi=2**40),
        body=body,
        sig=f.bytes("sig", size=64),
    )
    f.done()
    return r


@dataclass(frozen=True)
class VerifyContext:
    """What a verifier may consult: the committee and ledger parameters of the order's epoch."""

    committee: Committee
    epoch: int                  # the mint order's epoch
    epoch_length: int           # seconds
    uptime_reward_per_hour: int


class ReceiptVerifier(TypingProtocol):
    """One receipt kind. Implemented by the role that issues such receipts."""

    kind: str

    def max_reward(self, receipt: Receipt, ctx: VerifyContext) -> int:
        """Micro-units this receipt justifies; raise EvidenceError if it justifies nothing."""
        ...


class PooledVerifier(ReceiptVerifier, TypingProtocol):
    """A receipt kind paid from reward pools only (rewardpool.py)."""

    def pool_of(self, receipt: Receipt) -> tuple[bytes, bytes, int]:
        """(funder, session, cap) of the pool that pays this receipt, cap bounding the worth of
        all the session's receipts together; EvidenceError if it names none."""
        ...


def pooled(verifier: ReceiptVerifier) -> bool:
    """Whether receipts of `verifier.kind` are paid from reward pools only."""
    return callable(getattr(verifier, "pool_of", None))


class ReceiptRegistry:
    """Receipt verifiers by kind; the signature and epoch checks common to all kinds."""

    def __init__(self) -> None:
        self._by_kind: dict[str, ReceiptVerifier] = {}

    def register(self, verifier: ReceiptVerifier) -> None:
        if not verifier.kind or len(verifier.kind) > MAX_KIND:
            raise ValueError(f"bad receipt kind {verifier.kind!r}")
        if verifier.kind in self._by_kind and self._by_kind[verifier.kind] is not verifier:
            raise ValueError(f"receipt kind {verifier.kind!r} is registered twice")
        self._by_kind[verifier.kind] = verifier

    def kinds(self) -> list[str]:
        return sorted(self._by_kind)

    def max_reward(self, receipt: Receipt, ctx: VerifyContext) -> int:
        """The worth of a receipt a mint carries: `worth`, refusing pooled kinds."""
        v = self._verifier(receipt)
        if pooled(v):
            raise EvidenceError(f"receipts of kind {receipt.kind!r} are paid from the reward pool their work was "
                                f"funded with (a pool payout), never minted")
        return self.worth(receipt, ctx)

    def pool_reward(self, receipt: Receipt, ctx: VerifyContext) -> tuple[int, bytes, bytes, int]:
        """(worth, funder, session, cap) of a receipt a pool payout carries; EvidenceError for a
        kind that is not pooled or a receipt that names no pool."""
        v = self._verifier(receipt)
        if not pooled(v):
            raise EvidenceError(f"receipts of kind {receipt.kind!r} are minted, not paid from a reward pool")
        worth = self.worth(receipt, ctx)
        funder, session, cap = v.pool_of(receipt)   # type: ignore[attr-defined]
        return worth, funder, session, cap

    def _verifier(self, receipt: Receipt) -> ReceiptVerifier:
        v = self._by_kind.get(receipt.kind)
        if v is None:
            raise EvidenceError(f"receipt kind {receipt.kind!r} has no verifier on this validator "
                                f"(known: {self.kinds()})")
        return v

    def worth(self, receipt: Receipt, ctx: VerifyContext) -> int:
        """Raise EvidenceError unless the receipt is well signed, of a known kind, earned in
        the order's epoch or the one before, its claim (if any) is 32 bytes, its scope and
        commit (if any) come together and are 32 bytes each, and it is worth something;
        return its worth."""
        v = self._verifier(receipt)
        if receipt.epoch not in (ctx.epoch, ctx.epoch - 1):
            raise EvidenceError(f"receipt of epoch {receipt.epoch} cannot be claimed in epoch {ctx.epoch}")
        if not receipt.signature_ok():
            raise EvidenceError("receipt signature is invalid")
        claim = receipt.body.get("claim")
        if "claim" in receipt.body and (not isinstance(claim, bytes) or len(claim) != CLAIM_LEN):
            raise EvidenceError(f"receipt claim must be {CLAIM_LEN} bytes")
        if ("scope" in receipt.body) != ("commit" in receipt.body):
            raise EvidenceError("receipt scope and commit must come together")
        scope, commit = receipt.body.get("scope"), receipt.body.get("commit")
        if "scope" in receipt.body and (not isinstance(scope, bytes) or len(scope) != SCOPE_LEN
                                        or not isinstance(commit, bytes) or len(commit) != COMMIT_LEN):
            raise EvidenceError(f"receipt scope and commit must be {SCOPE_LEN} bytes each")
        worth = v.max_reward(receipt, ctx)
        if worth <= 0:
            raise EvidenceError(f"receipt of kind {receipt.kind!r} is worth nothing")
        return worth


def uptime_claim(epoch: int) -> bytes:
    """The `claim` every uptime receipt of `epoch` carries: one payment per node and epoch."""
    return digest(pack({"kind": "uptime", "epoch": epoch}))


class UptimeVerifier:
    """Node uptime: a committee validator attests it saw `beneficiary` up for `seconds`
    (uptime.py measures and claims).

    Body: {"seconds": int in [1, epoch_length], "claim": uptime_claim(epoch)}. Worth
    `seconds * uptime_reward_per_hour / 3600` (rounded down). The issuer must be in the
    committee of the mint order's epoch, and may not attest itself unless it is the only
    validator (a single-node network). The claim makes every uptime receipt of one node and
    epoch one claim, paid once, whoever issued it.
    """

    kind = "uptime"

    def max_reward(self, receipt: Receipt, ctx: VerifyContext) -> int:
        try:
            f = Fields(receipt.body, "ledger.UptimeReceipt")
            seconds = f.int("seconds", lo=1, hi=ctx.epoch_length)
            claim = f.bytes("claim", size=CLAIM_LEN)
            f.done()
        except RemoteProtocolError as e:
            raise EvidenceError(str(e)) from None
        if claim != uptime_claim(receipt.epoch):
            raise EvidenceError(f"uptime receipt's claim is not that of epoch {receipt.epoch}")
        if receipt.issuer not in ctx.committee:
            raise EvidenceError("uptime receipt is not issued by a committee validator")
        if receipt.issuer == receipt.beneficiary and len(ctx.committee.members) > 1:
            raise EvidenceError("a validator cannot attest its own uptime")
        return seconds * ctx.uptime_reward_per_hour // 3600


def default_registry() -> ReceiptRegistry:
    reg = ReceiptRegistry()
    reg.register(UptimeVerifier())
    return reg
