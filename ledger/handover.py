"""Lock handover at a committee change: the new committee learns the old one's locks before it
signs anything (sans-IO; the trio adapter is handover_service.py).

The problem. A certificate is final, but it reaches replicas only when somebody relays it. A
sender can get order A for (sender, n) certified by the committee of epoch E, keep the
certificate to itself, and in epoch E+1 ask a *different* committee for order B on the same
(sender, n). The new members have not applied A and hold no lock on it, so without more they
would certify B: two final orders for one sequence.

The handover. When the committee of epoch c differs from that of c-1 (members or stakes):
1. Old members keep signing orders of epoch c-1 for a short grace after the boundary
   (`committee.grace`, so orders in flight at the boundary finish), then seal: from `seal_time(c)` on
   they sign no order of an epoch before c (re-sending a vote for an order they already
   locked stays allowed: it is the same vote).
2. A sealed old member W answers a handover request with its *unresolved locks* (orders of
   epochs < c it voted for whose (sender, sequence) its replica has not applied; inherited
   locks included) and `position`, the length of its apply log: every lock it resolved is
   covered by a certificate in that log.
3. A new member V signs orders of epochs >= c only once it holds the pages of old members
   with more than 2/3 of the old committee's stake, merged their locks into its own lock table
   (persisted, so they carry on to the next handover), and synced each of those members' logs
   up to `position`. Until then it answers `not_yet` and clients keep asking.

Why it is safe. A certified order A carries votes of more than 2/3 of the old stake; the
handover quorum too; the two overlap in more than 1/3, so in at least one honest member W
(at most f < 1/3 is faulty). W voted A before it sealed, so either W applied A (then A is in
W's log up to `position`, which V has applied before signing) or W reports A's lock. Either
way V refuses any other order for (sender, n). Locks are inherited, so an order certified
several committees back is still known. Reported locks are orders signed by their sender, so
a faulty old member cannot freeze an account with an invented lock.

The cost. An order left half-signed at the seal (some old votes, no certificate) locks its
(sender, sequence) for good, as an abandoned or equivocated order does in FastPay; the grace
period exists so that honest clients finish theirs. New members wait for a quorum of the old
committee to answer, so the old validators must stay online for the handover (their stake is
still bonded through the unbonding period).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fognode.ledger.actions import PersistLock, ReportFork, ValidatorAction
from fognode.ledger.committee import seal_time
from fognode.ledger.errors import LedgerError, Reason
from fognode.ledger.messages import ForkProof, SignedOrder, decode_signed_order
from fognode.ledger.quorum import Committee
from fognode.ledger.validator import Validator
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields

VERSION = 1
PAGE_LOCKS = 128          # locks per handover page (a page stays well under the 1 MiB frame)


class HandoverRefused(LedgerError):
    """An old member cannot hand its locks over (yet): `reason` NOT_YET means ask again later."""

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason.value}: {message}")


@dataclass(frozen=True)
class HandoverPage:
    """Part of an old member's unresolved locks, in (sender, sequence) order after `after`."""

    epoch: int                          # the epoch handed over to
    position: int                       # the giver's apply-log length when it answered
    locks: tuple[SignedOrder, ...]
    more: bool                          # another page follows (ask again after the last lock)

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "epoch": self.epoch, "position": self.position,
                "locks": [so.to_wire() for so in self.locks], "more": self.more}

    @classmethod
    def decode(cls, raw: Any, *, epoch: int, after: tuple[bytes, int] | None,
               peer: str | None = None) -> "HandoverPage":
        """Validate a page answering a request for `epoch` after `after`."""
        f = Fields(raw, "ledger.HandoverPage", versions={VERSION}, peer=peer)
        got = f.int("epoch", lo=0, hi=2**40)
        position = f.int("position", lo=0, hi=2**62)
        items = f.list("locks", max_len=PAGE_LOCKS)
        more = f.bool("more")
        f.done()
        if got != epoch:
            raise RemoteProtocolError(f"ledger.HandoverPage: for epoch {got}, asked for {epoch}", peer=peer)
        locks = tuple(decode_signed_order(x, peer=peer) for x in items)
        last = after
        for so in locks:
            if last is not None and so.key <= last:
                raise RemoteProtocolError("ledger.HandoverPage: locks are not in increasing (sender, sequence) "
                                          "order after the one asked for", peer=peer)
            if so.order.epoch >= epoch:
                raise RemoteProtocolError(f"ledger.HandoverPage: a lock of epoch {so.order.epoch} is not from "
                                          f"before epoch {epoch}", peer=peer)
            last = so.key
        if more and not locks:
            raise RemoteProtocolError("ledger.HandoverPage: an empty page says more follow", peer=peer)
        return cls(got, position, locks, more)


def changes_at(v: Validator, epoch: int) -> bool:
    st = v.state
    return epoch >= 1 and st.committee_for(epoch).members != st.committee_for(epoch - 1).members


def handover_page(v: Validator, epoch: int, after: tuple[bytes, int] | None, now: float, position: int,
                  limit: int = PAGE_LOCKS) -> HandoverPage:
    """The old member's side: seal epochs before `epoch` and return one page of its unresolved
    locks. `position` is the length of this replica's apply log. Raises HandoverRefused
    (NOT_YET: ask again later, after syncing; NON_COMMITTEE_SIGNER: ask someone else)."""
    g = v.genesis
    if not changes_at(v, epoch):
        raise HandoverRefused(Reason.NOT_YET, f"this replica holds no committee change at epoch {epoch} "
                                              f"(sync the committee certificate to it)")
    if v.pubkey not in v.state.committee_for(epoch - 1):
        raise HandoverRefused(Reason.NON_COMMITTEE_SIGNER, f"this node is not in the committee of epoch {epoch - 1}")
    sealed_at = seal_time(g, epoch)
    if now < sealed_at:
        raise HandoverRefused(Reason.NOT_YET, f"the committee of epoch {epoch - 1} signs until "
                                              f"{sealed_at - now:.1f} s from now; ask then")
    if not v.ready(epoch - 1):
        raise HandoverRefused(Reason.NOT_YET, f"this validator has not received the locks handed over to the "
                                              f"committee of epoch {epoch - 1} itself yet")
    v.seal(epoch)
    state = v.state
    unresolved = sorted(
        (key, so) for key, so in v.locks.locks.items()
        if so.order.epoch < epoch and state.account(key[0]).next_sequence <= key[1]
        and (after is None or key > after))
    page = tuple(so for _, so in unresolved[:limit])
    return HandoverPage(epoch, position, page, len(unresolved) > limit)


@dataclass
class HandoverIntake:
    """The new member's side for one committee change (`epoch`): merge the old members' pages
    and count the stake of those whose logs it has synced far enough."""

    epoch: int
    old: Committee
    me: bytes
    positions: dict[bytes, int] = field(default_factory=dict)     # giver -> position, all pages merged
    synced: set[bytes] = field(default_factory=set)
    merged: int = 0

    def merge(self, v: Validator, giver: bytes, page: HandoverPage, peer: str) -> list[ValidatorAction]:
        """Take one page from `giver` (an old member): each lock that is well signed, of this
        chain and not yet applied here becomes this validator's lock (PersistLock first, as
        for a vote); one conflicting with a lock held here is a fork proof (the lock held
        stays). Call `pages_done` after the last page."""
        acts: list[ValidatorAction] = []
        if giver not in self.old:
            return acts
        for so in page.locks:
            o = so.order
            if o.chain != v.genesis.chain_id or not so.signature_ok():
                continue        # a faulty giver's noise: it can only hide locks, not invent them
            if v.state.account(o.sender).next_sequence > o.sequence:
                continue        # applied here: the sequence is taken anyway
            prior = v.locks.get(o.sender, o.sequence)
            if prior is None:
                v.locks.add(so)
                acts.append(PersistLock(so))
                self.merged += 1
            elif prior.tx_id != so.tx_id:
                acts.append(ReportFork(ForkProof(prior, so), peer))
        return acts

    def pages_done(self, giver: bytes, position: int) -> None:
        if giver in self.old:
            self.positions[giver] = position

    def log_synced(self, giver: bytes, cursor: int) -> bool:
        """Record that this replica read `giver`'s log up to `cursor`; True once it covers
        the position of the giver's handover."""
        pos = self.positions.get(giver)
        if pos is not None and cursor >= pos:
            self.synced.add(giver)
        return giver in self.synced

    def stake(self) -> int:
        own = self.old.stake_of(self.me)       # an old member's own locks are in its table already
        return own + sum(self.old.stake_of(w) for w in self.synced if w != self.me)

    def complete(self) -> bool:
        return self.old.is_quorum(self.stake())

    def missing(self) -> list[bytes]:
        return [w for w in self.old.members if w != self.me and w not in self.synced]
