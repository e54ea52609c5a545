"""Reward pools: the record and the rules of pool orders (rewardpool_orders.py), without IO.

Why pools. A reward that is minted is bounded only by the epoch's emission: a session starter
whose participants are its own Sybils could declare any budget and mint up to it. A pool is
funded from its funder's balance when the work is announced; payouts are debits from it, so
the work pays at most what was locked, and what is left goes back to the funder at the end.
Rewards of a pooled kind (its verifier has `pool_of`, receipts.py) are never minted.

Why not one escrow. A pool has many payees and several payers (an FL round's aggregator or its
fallbacks, regional and global aggregators): putting its payouts on one escrow sequence would
let two payers split the validators' votes and freeze it. Payouts take no pool sequence.
What keeps them from paying twice or too much is the evidence they carry, under the locks
mints already use (validator.py): one payout per receipt *claim* (an FL participant's update
in one round), one *commit* per scope (an FL round's split, whose total the verifier bounds),
so the receipts of a session are worth at most a *cap* together (FL: the reward budget,
`pool_of` in receipts.py); validators pay from a pool only if it holds the cap, and each
signs payouts of a pool for at most the pool's amount in all.

The record. `RewardPool`: funder, session, receipt kind, amount, deadline, grace, and what was
paid: `payouts` (count), `paid` (sum) and `acc`, the sum of the payouts' `payout_leaf`s mod
2^512 (an order-independent, collision-resistant multiset hash: the state root's); `closed`.
Stored and hashed into the state root as a versioned msgpack list (`RewardPool.encode`).

Phases, judged by each validator's clock when it votes (as escrows, escrow.py): payouts before
`deadline`; the funder's close from `deadline`; anyone's close from `deadline + grace` (the
refund always goes to the funder, so a participant, an aggregator or any node can settle a
pool whose funder died). The payers and the closers are therefore never racing, except within
the validators' clock skew of the deadline (wallets keep a margin, rewardpool_client.py).

Invariants (F = the largest faulty stake tolerated; proofs by quorum intersection: two
quorums share more than F stake, hence an honest validator):

1. Never more paid than funded. Validators pay only from a pool holding the receipts' cap,
   and the claim and scope locks keep the certified payouts of a session within that cap
   (one split per round, each claim once: receipts.py "Scopes"), so certified payouts never
   exceed the pool's amount. A per-validator limit alone would not do: with votes spread,
   quorums of 2F+1 of 3F+1 validators can certify up to (3F+1)/(2F+1) times what each one
   signs. Replicas check it again: a payout applies only while `paid + amount <= amount`
   (otherwise the certificate is refused as one a faulty quorum signed), so at every
   replica and at every step 0 <= paid <= amount.
2. Never paid twice. A payout's claim is locked like a mint's (one vote per claim id per
   validator) and recorded as paid at replicas (`r/` keys, shared with mints), so a claim is
   paid at most once, by a payout or by a mint, never both.
3. Never paid after the close. A validator that signed any close of a pool refuses every later
   payout of it (`LockTable.pools_closed`). It signs a close only when (a) every payout it
   signed for the pool is applied at its replica (their claims are paid there) and (b) its
   replica's (payouts, paid, digest) of the pool are those the close states. Let P be a
   certified payout and C a certified close; an honest h signed both. If h signed C first, it
   refused P: contradiction. So h signed P first, and by (a) P was applied at h when h signed
   C, so by (b) P is in the set C states. Hence every certified payout is in C's set, and
   (collision resistance of the digest) C's set is exactly the set of certified payouts.
   Two closes of one pool state the same set (an honest signer of both had its pool frozen
   by the first), so a second close applies as a no-op paying only its fee.
4. Refund + payouts == funded, exactly. A replica applies a close only when its own pool
   record shows the stated set (`blocked`: it waits for missing payouts, which are certified
   by 3); the close then credits `amount - paid` to the funder and sets `closed`; later
   payout certificates (none exist while 3 holds) are refused. `held` (amount - paid while
   open, 0 once closed) counts in the supply invariant (state.py `holdings`).
5. Replay. Payouts commute (sums, a set of claims, a sum of leaves) and the close waits for
   its stated set, so every replica holding the same certificates holds the same pool record
   and the same root, whatever order they arrived in.

The price (as for FastPay accounts and escrows), two liveness limits, never safety ones:
- a payout a validator signed that never gathers a quorum (its sender gave up after a few
  votes) keeps that validator from signing the close until someone drives the payout to a
  certificate (any node holding the signed order may);
- a close built on a replica that missed a certified payout states too few payouts: it is
  never certified (3), but validators as far behind may vote for it, and then it keeps its
  sender's sequence (the sender's wallet is stuck behind it, as behind any order split
  between validators). The pool itself is not stuck: a close stating the right set, from
  another wallet, is still signed (the lock only stops payouts). Closers therefore close
  from a synced replica some time after the deadline (rewardpool_client.py, FL funding.py).
Nothing is lost or paid twice meanwhile.

Rules: `order_problem` (fields), `state_problem` (against the record, as the validator's
replica holds it), `time_problem`, `blocked` (the replica's view: apply, wait or refuse),
`effect` (the record after the order, and the credits it makes).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import msgpack

from fognode.ledger.amounts import MAX_AMOUNT, format_amount
from fognode.ledger.errors import Reason
from fognode.ledger.rewardpool_orders import (MAX_RECEIPT_KIND, PoolCloseOrder, PoolOpenOrder, PoolOrder,
                                              PoolPayOrder, digest_bytes, payout_leaf)
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import unpack

POOL_RECORD_VERSION = 1
MAX_DEADLINE = 2 ** 40           # unix seconds
MAX_GRACE = 2 ** 32              # seconds

Problem = tuple[Reason, str]


@dataclass(frozen=True)
class RewardPool:
    funder: bytes
    session: bytes
    receipt_kind: str
    amount: int
    deadline: int
    grace: int
    paid: int = 0
    payouts: int = 0
    acc: int = 0                 # sum of payout_leaf(tx id) over the applied payouts, mod 2^512
    closed: bool = False

    @property
    def held(self) -> int:
        """Micro-units the pool still holds (counted in the supply invariant)."""
        return 0 if self.closed else self.amount - self.paid

    @property
    def digest(self) -> bytes:
        return digest_bytes(self.acc)

    def encode(self) -> bytes:
        return msgpack.packb([POOL_RECORD_VERSION, self.funder, self.session, self.receipt_kind, self.amount,
                              self.deadline, self.grace, self.paid, self.payouts, self.digest, self.closed],
                             use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "RewardPool":
        """Raises RemoteProtocolError if `data` is not a record of a known version."""
        v = unpack(data, what="ledger reward pool record")
        if not isinstance(v, list) or len(v) != 11 or v[0] != POOL_RECORD_VERSION:
            raise RemoteProtocolError("ledger reward pool record: not a version-1 record of 11 fields")
        (_v, funder, session, kind, amount, deadline, grace, paid, payouts, acc, closed) = v
        ints = (amount, deadline, grace, paid, payouts)
        if (not all(isinstance(x, bytes) and len(x) == 32 for x in (funder, session)) or not isinstance(kind, str)
                or not all(type(x) is int and 0 <= x <= 2 ** 64 for x in ints) or not isinstance(closed, bool)
                or not isinstance(acc, bytes) or len(acc) != 64):
            raise RemoteProtocolError("ledger reward pool record: a field has the wrong type or size")
        return cls(funder, session, kind, amount, deadline, grace, paid, payouts, int.from_bytes(acc, "big"),
                   closed)

    def problems(self) -> list[str]:
        """What `ledger.verify` reports about this record (nothing for a healthy one)."""
        out = []
        if not 0 <= self.paid <= self.amount:
            out.append(f"paid {self.paid} is outside [0, funded {self.amount}]")
        if self.payouts < 0 or (self.payouts == 0) != (self.paid == 0):
            out.append(f"{self.payouts} payouts do not fit {self.paid} paid")
        return out

    def view(self) -> dict[str, Any]:
        """A JSON-friendly summary (hex keys; the caller turns keys into addresses)."""
        return {"session": self.session.hex(), "kind": self.receipt_kind, "amount": self.amount, "paid": self.paid,
                "payouts": self.payouts, "deadline": self.deadline, "grace": self.grace, "closed": self.closed,
                "held": self.held, "refunded": self.amount - self.paid if self.closed else 0,
                "digest": self.digest.hex()}


def _amount_problem(what: str, amount: int, fee: int, lo: int = 1) -> Problem | None:
    if not lo <= amount <= MAX_AMOUNT:
        return Reason.BAD_AMOUNT, f"{what} {amount} is outside [{lo}, 2^63-1] micro-units"
    if amount + fee > MAX_AMOUNT:
        return Reason.BAD_AMOUNT, f"{what} plus fee overflows 64 bits"
    return None


def order_problem(o: PoolOrder) -> Problem | None:
    """The first field-level problem of a pool order (sender, fee and sequence are checked by
    messages.order_problem first), or None."""
    if isinstance(o, PoolOpenOrder):
        if len(o.session) != 32:
            return Reason.BAD_POOL, f"session id is {len(o.session)} bytes, not a 32-byte hash"
        if not 1 <= len(o.receipt_kind) <= MAX_RECEIPT_KIND:
            return Reason.BAD_POOL, f"receipt kind must be 1 to {MAX_RECEIPT_KIND} characters"
        if not 1 <= o.deadline <= MAX_DEADLINE:
            return Reason.BAD_POOL, f"deadline {o.deadline} is outside [1, 2^40] unix seconds"
        if not 1 <= o.grace <= MAX_GRACE:
            return Reason.BAD_POOL, f"grace {o.grace} is outside [1, 2^32] seconds"
        return _amount_problem("amount", o.amount, o.fee)
    if isinstance(o, PoolPayOrder):
        if len(o.receipt.beneficiary) != 32:
            return Reason.BAD_ADDRESS, "the receipt's beneficiary is not a 32-byte key"
        return _amount_problem("amount", o.amount, o.fee)
    if not 0 <= o.payouts <= MAX_AMOUNT:
        return Reason.BAD_POOL, f"payouts {o.payouts} is outside [0, 2^63-1]"
    if not 0 <= o.paid <= MAX_AMOUNT:
        return Reason.BAD_POOL, f"paid {o.paid} is outside [0, 2^63-1]"
    return None


def _settled(p: RewardPool, o: PoolCloseOrder) -> bool:
    return (p.payouts, p.paid, p.digest) == (o.payouts, o.paid, o.payouts_digest)


def _short(pool: bytes) -> str:
    return pool.hex()[:16]


def state_problem(p: RewardPool | None, o: PoolOrder) -> Problem | None:
    """Why the pool `p` (None: not opened on this replica) cannot take `o` now, whatever the
    time, or None."""
    if isinstance(o, PoolOpenOrder):
        if p is not None:
            return Reason.CONFLICT, f"pool {_short(o.pool)} of this session is open already"
        return None
    if p is None:
        return Reason.POOL_UNKNOWN, f"no reward pool {_short(o.pool)} on this replica (not opened, or not yet here)"
    if isinstance(o, PoolPayOrder):
        if p.closed:
            return Reason.POOL_CLOSED, f"reward pool {_short(o.pool)} is closed"
        if o.receipt.kind != p.receipt_kind:
            return Reason.BAD_EVIDENCE, f"the pool pays receipts of kind {p.receipt_kind!r}, not {o.receipt.kind!r}"
        if p.paid + o.amount > p.amount:
            return (Reason.POOL_EXHAUSTED, f"reward pool {_short(o.pool)} holds {format_amount(p.amount - p.paid)} "
                                           f"of its {format_amount(p.amount)}; a payout of {format_amount(o.amount)} "
                                           f"does not fit")
        return None
    if not _settled(p, o):
        if p.closed:
            return (Reason.POOL_CLOSED, f"reward pool {_short(o.pool)} was closed after {p.payouts} payouts "
                                        f"of {format_amount(p.paid)}, not the {o.payouts} of {format_amount(o.paid)} "
                                        f"this close states")
        return (Reason.POOL_UNSETTLED, f"this replica holds {p.payouts} payouts of {format_amount(p.paid)} from pool "
                                       f"{_short(o.pool)}, the close states {o.payouts} of {format_amount(o.paid)} "
                                       f"(or other payouts): retry once they are applied")
    return None


def time_problem(p: RewardPool | None, o: PoolOrder, now: float) -> Problem | None:
    """Whether `o` is in its phase at the validator's clock `now` (see the module docstring);
    call after `state_problem` returned None."""
    at = f"at {now:.0f} by this validator's clock"
    if isinstance(o, PoolOpenOrder):
        if now >= o.deadline:
            return Reason.POOL_TOO_LATE, f"the pool's deadline {o.deadline} has passed ({at})"
        return None
    assert p is not None
    if isinstance(o, PoolPayOrder):
        if now >= p.deadline:
            return Reason.POOL_TOO_LATE, f"payouts from the pool closed at its deadline {p.deadline} ({at})"
        return None
    opens = p.deadline if o.sender == p.funder else p.deadline + p.grace
    if now < opens:
        who = "its funder" if o.sender == p.funder else "others than its funder"
        return Reason.POOL_TOO_EARLY, f"closing the pool opens at {opens} for {who} ({at})"
    return None


def blocked(p: RewardPool | None, o: PoolOrder, used_receipts: set[bytes]) -> str | None:
    """The replica's view of a certified pool order (state.py `blocked`): None (applies now),
    "sequence" (wait: the pool, or payouts the close states, are not here yet) or "invalid"
    (a faulty quorum certified it: it can never apply)."""
    if isinstance(o, PoolOpenOrder):
        return "invalid" if p is not None else None
    if p is None:
        return "sequence"
    if isinstance(o, PoolPayOrder):
        if (p.closed or o.receipt.claim_id in used_receipts or p.paid + o.amount > p.amount
                or o.receipt.kind != p.receipt_kind):
            return "invalid"
        return None
    if _settled(p, o):
        return None
    if p.closed or p.payouts >= o.payouts or p.paid > o.paid:
        return "invalid"     # payouts only add: this replica can never reach the stated set
    return "sequence"


def effect(p: RewardPool | None, o: PoolOrder, tx_id: bytes) -> tuple[RewardPool, tuple[tuple[bytes, int], ...]]:
    """The pool after `o` (whose `blocked` is None) and the credits it makes (account,
    micro-units > 0). The sender's debit (`o.debit()`) is the caller's."""
    if isinstance(o, PoolOpenOrder):
        return RewardPool(o.sender, o.session, o.receipt_kind, o.amount, o.deadline, o.grace), ()
    assert p is not None
    if isinstance(o, PoolPayOrder):
        return (replace(p, paid=p.paid + o.amount, payouts=p.payouts + 1, acc=(p.acc + payout_leaf(tx_id)) % (1 << 512)),
                ((o.receipt.beneficiary, o.amount),))
    if p.closed:
        return p, ()         # a second close of the same set: only its fee
    rest = p.amount - p.paid
    return replace(p, closed=True), (((p.funder, rest),) if rest > 0 else ())
