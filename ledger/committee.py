"""Committee change at epoch boundaries: which stake forms the committee of an epoch, the
certificate by which the old committee certifies the new one, and the book of certified
committees every replica consults (`LedgerState.committee_for`).

Why this definition of "stake at the boundary". Replicas apply certificates per sender with
no total order across senders, so "the stake when epoch E ended" is not one state every
replica passes through. It is defined instead over a set of certificates every honest replica
eventually holds: the committee of epoch E+2 is derived from the genesis stakes plus the
bond/unbond certificates whose *order epoch* is <= E. Validators sign bond and unbond orders
only in their own epoch (not the previous one, unlike transfers, see validator.py), so no
honest validator signs a stake order of epoch <= E once epoch E+1 has begun; half of epoch
E+1 is then left for those certificates to spread before the old committee certifies.

Computation (`compute_members`): every account's stake as above; accounts with at least
`min_validator_stake` are candidates; the `max_validators` largest stakes win (ties broken by
address); the result is sorted by address. It depends only on the set of certificates, not on
the order they were applied in.

Certification. At `epoch_start(E+1) + epoch_length/2` (`signing_time`) every member of the
committee of epoch E+1 proposes the committee of E+2 to the other members (any node may
assemble the votes, see rotation.py). A member signs only if the proposed member list equals
the one it computes from its own replica, and the `prev_hash` names the committee it believes
certifies (that of E+1): otherwise it answers "not yet" and the proposer retries after both
synced. It signs one body per epoch (the lock is persisted before the vote leaves). Votes of
more than 2/3 of the stake of the E+1 committee make a `CommitteeCertificate`, which replicas
verify against their committee of E+1 and persist; from then on `committee_for(E+2)` is the
certified list. An epoch without a certificate keeps the latest certified committee before it
(or the genesis one), so the ledger never waits for a rotation.

Why `prev_hash`. A committee certificate is verified against the committee of the previous
epoch, which may itself be a certified one the replica has not received yet. `prev_hash` is
the digest of the member list that signed; a replica whose committee of E+1 has another digest
keeps the certificate aside until the missing one arrives, instead of refusing or (worse)
accepting it against the wrong committee. Certificates therefore chain, and two replicas that
hold the same committee certificates agree on `committee_for(e)` for every e.

Timing, and why not "after the boundary". The committee of E+2 must be fixed before any
order of E+2 is certified, or replicas would check the same certificate against different
committees depending on when the committee certificate reached them. It is therefore signed
halfway through E+1 (not after the E+2 boundary), which is only sound because stake orders
cannot be certified after their own epoch (validator.py), so the stake of epochs <= E is final
when E+1 begins. A transaction certificate of E+2 that reaches a replica before the committee
certificate waits for it (replica.py) instead of being refused.

Known limits (the lead must know): (1) the committee certificate of E+2 is produced during
E+1; a replica that receives a transaction certificate of epoch E+2 before the committee
certificate checks it against the fallback (the E+1 committee), which is correct unless the
committee certificate was assembled late and a quorum of the old committee had not received it
by then. (2) Per-sender uniqueness across a committee change is kept by the lock handover
(handover.py): the old committee seals `grace` seconds after the boundary and a new member
signs nothing until it holds the locks of more than 2/3 of the old stake. (3) A member that signed the body of some epoch whose certificate it never
received answers "not yet" to every later proposal (signing one would let two histories form
if that certificate surfaced later), so a round in which some but not a quorum of members
signed stops later rotations until its certificate is assembled; the ledger goes on with the
last certified committee meanwhile.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from nacl.signing import SigningKey

from fognode.ledger.errors import CertificateRejected, Reason
from fognode.ledger.genesis import MAX_COMMITTEE, Genesis
from fognode.ledger.quorum import Committee, check_signature
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields, digest, pack

VERSION = 1
FIRST_ROTATED_EPOCH = 2     # committee of E+2 from stakes of epochs <= E: epochs 0 and 1 are genesis'
Members = tuple[tuple[bytes, int], ...]


def members_hash(members: Iterable[tuple[bytes, int]]) -> bytes:
    """Digest of a member list (address, stake), in address order."""
    return digest(pack({"v": VERSION, "kind": "ledger.members", "members": [[k, s] for k, s in sorted(members)]}))


def committee_hash(c: Committee) -> bytes:
    return members_hash(c.members.items())


def compute_members(genesis: Genesis, stakes: Mapping[bytes, int]) -> Members:
    """The committee for `stakes` (address -> bonded micro-units): at least
    `min_validator_stake`, the `max_validators` largest (ties by address), sorted by address.
    Empty if nobody qualifies (the caller then keeps the previous committee)."""
    floor = max(1, genesis.min_validator_stake)
    cands = sorted(((k, s) for k, s in stakes.items() if s >= floor), key=lambda ks: (-ks[1], ks[0]))
    return tuple(sorted(cands[:genesis.max_validators]))


def signing_time(genesis: Genesis, epoch: int) -> float:
    """When the committee of `epoch` is proposed and signed: halfway through epoch - 1."""
    return genesis.epoch_start(epoch - 1) + genesis.epoch_length / 2


MAX_GRACE = 10.0          # seconds after a boundary an outgoing committee keeps signing


def grace(genesis: Genesis) -> float:
    """How long after an epoch boundary an outgoing committee keeps signing orders of the
    epoch before (so orders in flight at the boundary finish): 1/20 of an epoch, between 0.5
    and 10 seconds."""
    return min(MAX_GRACE, max(0.5, genesis.epoch_length / 20))


def seal_time(genesis: Genesis, epoch: int) -> float:
    """When the committee before `epoch` (if it differs) stops signing and hands its locks
    over to that of `epoch` (handover.py)."""
    return genesis.epoch_start(epoch) + grace(genesis)


def target_epoch(genesis: Genesis, now: float) -> int | None:
    """The epoch whose committee is due for signing at `now` (the next one, once halfway
    through the current epoch), or None."""
    current = genesis.epoch_at(now)
    target = current + 1
    if target < FIRST_ROTATED_EPOCH or now < signing_time(genesis, target):
        return None
    return target


@dataclass(frozen=True)
class CommitteeBody:
    """What the old committee signs: the members of `epoch`, certified by the committee whose
    member-list digest is `prev_hash`."""

    chain: str
    epoch: int
    members: Members
    prev_hash: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "kind": "ledger.committee", "chain": self.chain, "epoch": self.epoch,
                "members": [[k, s] for k, s in self.members], "prev": self.prev_hash}

    @property
    def body_hash(self) -> bytes:
        return digest(pack(self.to_wire()))

    def vote_message(self) -> bytes:
        return pack({"v": VERSION, "kind": "ledger.committee_vote", "body": self.body_hash})


@dataclass(frozen=True)
class CommitteeVote:
    body_hash: bytes
    validator: bytes
    signature: bytes

    @classmethod
    def sign(cls, key: SigningKey, body: CommitteeBody) -> "CommitteeVote":
        return cls(body.body_hash, bytes(key.verify_key), key.sign(body.vote_message()).signature)

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "body": self.body_hash, "validator": self.validator, "sig": self.signature}


@dataclass(frozen=True)
class CommitteeCertificate:
    body: CommitteeBody
    votes: tuple[tuple[bytes, bytes], ...]     # (validator, signature), sorted

    @property
    def epoch(self) -> int:
        return self.body.epoch

    @property
    def members(self) -> Members:
        return self.body.members

    @property
    def prev_hash(self) -> bytes:
        return self.body.prev_hash

    def committee(self) -> Committee:
        return Committee.of(dict(self.body.members))

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "body": self.body.to_wire(), "votes": [[k, s] for k, s in self.votes]}


# -- decoders ---------------------------------------------------------------------------------

def decode_committee_body(raw: Any, *, peer: str | None = None) -> CommitteeBody:
    f = Fields(raw, "ledger.CommitteeBody", versions={VERSION}, peer=peer)
    if f.str("kind", max_len=32) != "ledger.committee":
        raise RemoteProtocolError("ledger.CommitteeBody: kind must be 'ledger.committee'", peer=peer)
    chain = f.str("chain", max_len=64)
    epoch = f.int("epoch", lo=0, hi=2**40)
    members: list[tuple[bytes, int]] = []
    for i, item in enumerate(f.list("members", max_len=MAX_COMMITTEE)):
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], bytes) or len(item[0]) != 32
                or isinstance(item[1], bool) or not isinstance(item[1], int) or not 0 < item[1] < 2**63):
            raise RemoteProtocolError(f"ledger.CommitteeBody: members[{i}] must be [32-byte key, positive stake]",
                                      peer=peer)
        members.append((item[0], item[1]))
    if not members or [k for k, _ in members] != sorted({k for k, _ in members}):
        raise RemoteProtocolError("ledger.CommitteeBody: members must be non-empty, sorted by key, without repeats",
                                  peer=peer)
    body = CommitteeBody(chain, epoch, tuple(members), f.bytes("prev", size=32))
    f.done()
    return body


def decode_committee_vote(raw: Any, *, peer: str | None = None) -> CommitteeVote:
    f = Fields(raw, "ledger.CommitteeVote", versions={VERSION}, peer=peer)
    v = CommitteeVote(f.bytes("body", size=32), f.bytes("validator", size=32), f.bytes("sig", size=64))
    f.done()
    return v


def decode_committee_certificate(raw: Any, *, peer: str | None = None) -> CommitteeCertificate:
    f = Fields(raw, "ledger.CommitteeCertificate", versions={VERSION}, peer=peer)
    body = decode_committee_body(f.map("body", max_len=8), peer=peer)
    votes = []
    for i, item in enumerate(f.list("votes", max_len=MAX_COMMITTEE)):
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], bytes)
                or not isinstance(item[1], bytes) or len(item[0]) != 32 or len(item[1]) != 64):
            raise RemoteProtocolError(f"ledger.CommitteeCertificate: votes[{i}] must be [32-byte key, 64-byte "
                                      f"signature]", peer=peer)
        votes.append((item[0], item[1]))
    f.done()
    return CommitteeCertificate(body, tuple(votes))


# -- verification and the book ------------------------------------------------------------------

def verify_committee_certificate(cert: CommitteeCertificate, old: Committee, chain: str) -> None:
    """Raise CertificateRejected unless `cert` carries valid votes of more than 2/3 of the
    stake of `old` (the committee of the epoch before `cert.epoch`) and names it in prev_hash."""
    b = cert.body
    what = f"committee certificate of epoch {b.epoch}"
    if b.chain != chain:
        raise CertificateRejected(Reason.WRONG_CHAIN, f"{what} is for chain {b.chain!r}")
    if b.prev_hash != committee_hash(old):
        raise CertificateRejected(Reason.MALFORMED, f"{what} is certified by another committee than this "
                                                    f"replica's committee of epoch {b.epoch - 1}")
    seen: set[bytes] = set()
    stake = 0
    for validator, _sig in cert.votes:
        if validator in seen:
            raise CertificateRejected(Reason.DUPLICATE_SIGNER, f"{what} lists validator {validator.hex()[:16]} twice")
        seen.add(validator)
        s = old.members.get(validator)
        if s is None:
            raise CertificateRejected(Reason.NON_COMMITTEE_SIGNER,
                                      f"{what} is signed by {validator.hex()[:16]}, not in the committee of epoch "
                                      f"{b.epoch - 1}")
        stake += s
    if not old.is_quorum(stake):
        raise CertificateRejected(Reason.NO_QUORUM, f"{what} carries {stake} of {old.total} stake, needs more "
                                                    f"than 2/3 ({old.quorum_stake})")
    msg = b.vote_message()
    for validator, sig in cert.votes:
        if not check_signature(validator, msg, sig):
            raise CertificateRejected(Reason.BAD_SIGNATURE, f"{what}: vote of {validator.hex()[:16]} is invalid")


class CommitteeBook:
    """The certified committees a replica holds; `committee_for(e)` is the certified committee
    of e, else the latest certified before e, else the genesis committee."""

    def __init__(self, genesis: Genesis) -> None:
        self.genesis = genesis
        self.genesis_committee = genesis.committee
        self.certs: dict[int, CommitteeCertificate] = {}
        self._epochs: list[int] = []
        self._committees: dict[int, Committee] = {}
        self.waiting: dict[int, CommitteeCertificate] = {}   # prev_hash unknown yet (bounded)
        self._eras: dict[int, int] = {}     # certified epoch -> the epoch its committee took over

    def era_start(self, epoch: int) -> int:
        """The epoch at which the committee of `epoch` took over: the latest epoch <= `epoch`
        whose committee (members or stakes) differs from the one before it; 0 if the genesis
        committee still serves. Locks are handed over at that epoch (handover.py)."""
        i = bisect.bisect_right(self._epochs, epoch)
        return self._eras[self._epochs[i - 1]] if i else 0

    def committee_for(self, epoch: int) -> Committee:
        i = bisect.bisect_right(self._epochs, epoch)
        return self._committees[self._epochs[i - 1]] if i else self.genesis_committee

    def certified(self, epoch: int) -> CommitteeCertificate | None:
        return self.certs.get(epoch)

    def latest_epoch(self) -> int:
        return self._epochs[-1] if self._epochs else 0

    def after(self, epoch: int, limit: int = 64) -> list[CommitteeCertificate]:
        """Certified committees of epochs > `epoch`, in epoch order (what sync serves)."""
        i = bisect.bisect_right(self._epochs, epoch)
        return [self.certs[e] for e in self._epochs[i:i + limit]]

    def _insert(self, cert: CommitteeCertificate) -> None:
        before = self.committee_for(cert.epoch - 1)
        era_before = self.era_start(cert.epoch - 1)
        bisect.insort(self._epochs, cert.epoch)
        self.certs[cert.epoch] = cert
        new = cert.committee()
        self._committees[cert.epoch] = new
        self._eras[cert.epoch] = cert.epoch if new.members != before.members else era_before

    def load(self, certs: Iterable[CommitteeCertificate]) -> None:
        """Restore certificates this replica verified before (from its store)."""
        for c in sorted(certs, key=lambda c: c.epoch):
            self._insert(c)

    def check(self, cert: CommitteeCertificate) -> str:
        """Verify `cert` against this book without adding it: "new", "known" (the same one is
        held), "later" (its certifying committee is not held yet; keep it aside). Raises
        CertificateRejected (the relayer's fault) otherwise."""
        have = self.certs.get(cert.epoch)
        if have is not None:
            if have.body == cert.body:
                return "known"
            raise CertificateRejected(Reason.CONFLICT, f"a different committee certificate of epoch {cert.epoch} "
                                                       f"is already held: more than 1/3 of a committee is faulty")
        if cert.epoch < FIRST_ROTATED_EPOCH:
            raise CertificateRejected(Reason.WRONG_EPOCH, f"epoch {cert.epoch} uses the genesis committee")
        if self._epochs and self._epochs[-1] > cert.epoch:
            raise CertificateRejected(Reason.WRONG_EPOCH, f"committee certificate of epoch {cert.epoch} arrived "
                                                          f"after that of epoch {self._epochs[-1]} was certified")
        old = self.committee_for(cert.epoch - 1)
        if cert.prev_hash != committee_hash(old):
            return "later"
        verify_committee_certificate(cert, old, self.genesis.chain_id)
        return "new"

    def add(self, cert: CommitteeCertificate) -> list[CommitteeCertificate]:
        """Verify and add `cert`, then any waiting certificate it unblocks. Returns the
        certificates added (in epoch order; the caller persists them). Raises
        CertificateRejected."""
        verdict = self.check(cert)
        if verdict == "known":
            return []
        if verdict == "later":
            if len(self.waiting) < 64 or cert.epoch in self.waiting:
                self.waiting[cert.epoch] = cert
            return []
        self._insert(cert)
        added = [cert]
        self.waiting.pop(cert.epoch, None)
        for e in sorted(self.waiting):
            w = self.waiting[e]
            try:
                v = self.check(w)
            except CertificateRejected:
                del self.waiting[e]
                continue
            if v == "new":
                del self.waiting[e]
                self._insert(w)
                added.append(w)
            elif v == "known":
                del self.waiting[e]
        return added
