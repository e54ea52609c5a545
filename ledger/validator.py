"""The validator: signs an order at most once per (sender, sequence), and only a valid one.

`Validator.receive(peer, order, now)` returns actions. A vote is always preceded by a
`PersistLock` for the same order: the adapter writes the lock (sync) before the vote leaves,
so a validator that crashes and restarts cannot sign a second order for the same sequence.
The core adds the lock to the in-memory table when it decides; the adapter writes it in the
same synchronous step (no await in between, so no other order is checked against the table
meanwhile) and, if the write fails, takes it out again (`LockTable.discard`) and sends no
vote: the table in memory never holds a lock the disk does not (service.py `_validate`).

Mint budget: each validator votes for at most `mint_limit(epoch)` micro-units of mints per
epoch, with limit = budget * (q - F) / (T - F) (T total stake, q quorum stake, F the largest
faulty stake tolerated). Each certificate carries at least q - F honest stake and honest
stake votes at most (T - F) * limit in total, so the certified mints of an epoch never exceed
its budget while at most F stake is faulty, whatever the order in which replicas apply them.

Escrows (escrow.py): orders spending one escrow come from different senders (the payee's
payouts, the customer's refund), so the per-sender lock alone would let a payout and a refund
of the same escrow state both be certified. Each escrow order therefore also takes the lock
(escrow id, escrow sequence): a validator votes for at most one order per escrow sequence,
whatever its kind and sender, and refuses any other with CONFLICT. Like the sender locks, it
is derived from the locked orders (`LockTable.add`), so it is persisted, reloaded and handed
over with them; where handed-over locks disagree on an escrow sequence (a split vote of the
old committee) this validator signs neither (`frozen_escrows`), whichever it got first.
The time rules of escrows are judged by this validator's clock (`now`, escrow.py).

Reward pools (rewardpool.py): payouts take the claim and scope locks of mints (one payout or
mint per claim, one commit per scope), and per pool the validator signs payouts only
from a pool that holds the cap of its receipts (FL: the session's budget; the claim and scope
locks bound the payouts by it) and for at most the pool's amount in all (`pool_reserved`). Once it signed any close of a pool it signs no
payout of it (`pools_closed`); it signs a close only when the claims of every payout it signed
for the pool (`pool_claims`) are paid at its replica and the close states its replica's
payouts. All three are derived from the locked orders (`LockTable.add`), like the rest. The
module docstring of rewardpool.py proves the pool invariants from these rules.

Claims and scopes (receipts.py): a validator signs one mint per receipt claim id, and mints
whose receipts share a scope only with the commit of the first one it signed for that scope.
Both are derived from the locked orders themselves (`LockTable.add`), so reloading persisted
locks or merging handed-over ones rebuilds them.
"""
from __future__ import annotations

from nacl.signing import SigningKey

from fognode.ledger.amounts import format_amount
from fognode.ledger.actions import PersistLock, ReportFork, SendRejection, SendVote, ValidatorAction
from fognode.ledger.errors import Reason
from fognode.ledger.committee import seal_time
from fognode.ledger.escrow import time_problem as escrow_time_problem
from fognode.ledger.escrow_orders import ESCROW_ORDERS
from fognode.ledger.genesis import Genesis
from fognode.ledger.messages import (BondOrder, ForkProof, MintOrder, Rejection, SignedOrder, UnbondOrder, Vote,
                                     order_problem)
from fognode.ledger.quorum import Committee
from fognode.ledger.receipts import EvidenceError, Receipt, ReceiptRegistry, VerifyContext
from fognode.ledger.rewardpool import Problem, time_problem as pool_time_problem
from fognode.ledger.rewardpool_orders import POOL_ORDERS, PoolCloseOrder, PoolOpenOrder, PoolOrder, PoolPayOrder
from fognode.ledger.state import LedgerState


class LockTable:
    """Orders this validator signed, by (sender, sequence), and what they reserved.

    Everything here is derived from the signed orders alone (`add` is also how persisted locks
    are reloaded and handed-over ones merged). `commits` maps a scope id to the commits of the
    locked mints of that scope: one for the validator's own votes (it refuses any other), two
    or more only if inherited locks disagree, which freezes the scope (`commit_problem`); a set
    keeps the outcome independent of the order in which locks are reloaded or merged."""

    def __init__(self) -> None:
        self.locks: dict[tuple[bytes, int], SignedOrder] = {}
        self.mint_reserved: dict[int, int] = {}
        self.receipts: set[bytes] = set()      # claim ids of the mints signed (receipts.py)
        self.commits: dict[bytes, set[bytes]] = {}    # scope id -> commits of the mints signed
        self.escrows: dict[tuple[bytes, int], SignedOrder] = {}   # (escrow id, escrow sequence) -> order
        self.frozen_escrows: set[tuple[bytes, int]] = set()       # inherited locks disagree there
        self.pool_claims: dict[bytes, set[bytes]] = {}   # pool id -> claim ids of the payouts signed
        self.pool_reserved: dict[bytes, int] = {}        # pool id -> micro-units of the payouts signed
        self.pools_closed: set[bytes] = set()            # pools whose close this validator signed

    def get(self, sender: bytes, sequence: int) -> SignedOrder | None:
        return self.locks.get((sender, sequence))

    def add(self, order: SignedOrder) -> None:
        self.locks[order.key] = order
        o = order.order
        if isinstance(o, ESCROW_ORDERS):
            held = self.escrows.setdefault((o.escrow, o.escrow_sequence), order)
            if held.tx_id != order.tx_id:
                self.frozen_escrows.add((o.escrow, o.escrow_sequence))
        if isinstance(o, PoolPayOrder):
            self.pool_claims.setdefault(o.pool, set()).add(o.receipt.claim_id)
            self.pool_reserved[o.pool] = self.pool_reserved.get(o.pool, 0) + o.amount
        if isinstance(o, PoolCloseOrder):
            self.pools_closed.add(o.pool)
        if isinstance(o, (MintOrder, PoolPayOrder)):
            if isinstance(o, MintOrder):
                self.mint_reserved[o.epoch] = self.mint_reserved.get(o.epoch, 0) + o.amount
            self.receipts.add(o.receipt.claim_id)
            r = o.receipt
            if r.scope_id is not None and r.commit is not None:
                self.commits.setdefault(r.scope_id, set()).add(r.commit)

    def discard(self, order: SignedOrder) -> None:
        """Undo `add(order)` (its lock could not be persisted): the derived reservations,
        claims and scope commits are rebuilt from the locks that remain."""
        if self.locks.get(order.key) != order:
            return
        del self.locks[order.key]
        remaining = list(self.locks.values())
        self.locks, self.mint_reserved, self.receipts, self.commits = {}, {}, set(), {}
        self.escrows, self.frozen_escrows = {}, set()
        self.pool_claims, self.pool_reserved, self.pools_closed = {}, {}, set()
        for so in remaining:
            self.add(so)

    def escrow_problem(self, order: SignedOrder) -> str:
        """Why voting for escrow order `order` would break the escrow lock ("" if it would
        not, or if `order` is no escrow order): another order holds its (escrow, escrow
        sequence), or inherited locks disagree there (then the sequence is frozen here)."""
        o = order.order
        if not isinstance(o, ESCROW_ORDERS):
            return ""
        key = (o.escrow, o.escrow_sequence)
        where = f"escrow {o.escrow.hex()[:16]} sequence {o.escrow_sequence}"
        if key in self.frozen_escrows:
            return f"{where} is frozen on this validator: the locks it inherited hold different orders"
        held = self.escrows.get(key)
        if held is not None and held.tx_id != order.tx_id:
            return f"already signed order {held.tx_id.hex()[:16]} for {where}"
        return ""

    def commit_problem(self, receipt: Receipt) -> str:
        """Why a mint of `receipt` would break the one-commit-per-scope rule ("" if it would not)."""
        if receipt.scope_id is None or receipt.commit is None:
            return ""
        held = self.commits.get(receipt.scope_id)
        if not held or held == {receipt.commit}:
            return ""
        scope = receipt.body["scope"].hex()[:16]
        if len(held) > 1:
            return (f"scope {scope} is frozen on this validator: the locks it inherited carry "
                    f"{len(held)} different commits")
        return (f"this validator already signed mints of scope {scope} with commit "
                f"{next(iter(held)).hex()[:16]}; this receipt's commit {receipt.commit.hex()[:16]} "
                f"is another split of the same scope")

    def __len__(self) -> int:
        return len(self.locks)


def _pool_short(pool: bytes) -> str:
    return pool.hex()[:16]


def mint_limit(genesis: Genesis, epoch: int, committee: Committee | None = None) -> int:
    """The mint allowance of one validator in `epoch` (`committee`: that epoch's, default
    the genesis committee)."""
    c = committee if committee is not None else genesis.committee_for(epoch)
    q, f, t = c.quorum_stake, c.max_faulty_stake, c.total
    return genesis.emission.budget(epoch) * (q - f) // (t - f)


class Validator:
    def __init__(self, genesis: Genesis, key: SigningKey, state: LedgerState, locks: LockTable,
                 receipts: ReceiptRegistry, handovers: set[int] | None = None) -> None:
        self.genesis = genesis
        self.key = key
        self.pubkey = bytes(key.verify_key)
        self.state = state
        self.locks = locks
        self.receipts = receipts
        self.handovers: set[int] = set() if handovers is None else handovers   # changes whose locks it holds
        self.sealed = 0        # handed its locks over to epoch `sealed`: signs no order before it
        self.rejected: dict[Reason, int] = {}

    def ready(self, epoch: int) -> bool:
        """Whether this validator holds the locks handed over at the committee change that
        brought the committee of `epoch` (handover.py); always true under the genesis one."""
        era = self.state.committees.era_start(epoch)
        return era == 0 or era in self.handovers

    def seal(self, epoch: int) -> None:
        """Sign no order of an epoch before `epoch` any more (its locks are being handed over)."""
        self.sealed = max(self.sealed, epoch)

    def is_member(self, epoch: int) -> bool:
        return self.pubkey in self.state.committee_for(epoch)

    def _reject(self, peer: str, so: SignedOrder, reason: Reason, message: str) -> list[ValidatorAction]:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return [SendRejection(peer, Rejection(so.tx_id, reason, message))]

    def receive(self, peer: str, so: SignedOrder, now: float) -> list[ValidatorAction]:
        """Check `so`; return [PersistLock, SendVote] or [SendRejection] (+ ReportFork)."""
        o = so.order
        g = self.genesis
        problem = order_problem(o)
        if problem:
            return self._reject(peer, so, *problem)
        if o.chain != g.chain_id:
            return self._reject(peer, so, Reason.WRONG_CHAIN,
                                f"order is for chain {o.chain!r}, this is {g.chain_id!r}")
        if not so.signature_ok():
            return self._reject(peer, so, Reason.BAD_SIGNATURE, "the sender's signature does not verify")
        prior = self.locks.get(o.sender, o.sequence)
        if prior is not None and prior.tx_id == so.tx_id:
            # the client asks again: the same vote, nothing new to lock (safe in any epoch),
            # unless inherited locks gave the escrow it spends to another order
            other = self.locks.escrow_problem(so)
            if other:
                return self._reject(peer, so, Reason.CONFLICT, other)
            return [SendVote(peer, Vote.sign(self.key, so.tx_id))]
        current = g.epoch_at(now)
        if o.epoch not in (current, current - 1):
            return self._reject(peer, so, Reason.WRONG_EPOCH,
                                f"order is for epoch {o.epoch}, this validator is in epoch {current}")
        if o.epoch < self.sealed:
            return self._reject(peer, so, Reason.WRONG_EPOCH,
                                f"this validator handed its locks over to the committee of epoch {self.sealed}: "
                                f"orders of epoch {o.epoch} are closed")
        if o.epoch != current:
            # stake orders of an epoch must be final when the next one begins (committee.py);
            # other orders of the previous epoch while the committee has not changed, or for
            # the grace period before the old committee hands its locks over (handover.py)
            if isinstance(o, (BondOrder, UnbondOrder)):
                return self._reject(peer, so, Reason.WRONG_EPOCH,
                                    f"bond/unbond orders must be of the current epoch {current}, not {o.epoch}")
            if (self.state.committee_for(o.epoch).members != self.state.committee_for(current).members
                    and now >= seal_time(g, current)):
                return self._reject(peer, so, Reason.WRONG_EPOCH,
                                    f"the committee changed at epoch {current} and the previous one has handed "
                                    f"its locks over: orders of epoch {o.epoch} are closed")
        if not self.is_member(o.epoch):
            return self._reject(peer, so, Reason.NON_COMMITTEE_SIGNER,
                                f"this node is not a validator of epoch {o.epoch}")
        if not self.ready(o.epoch):
            return self._reject(peer, so, Reason.NOT_YET,
                                f"the committee changed at epoch {self.state.committees.era_start(o.epoch)} and "
                                f"this validator has not received the previous committee's locks yet: ask again")
        if o.fee < g.fee:
            return self._reject(peer, so, Reason.FEE_TOO_LOW, f"fee {format_amount(o.fee)} is below the chain's fee {format_amount(g.fee)}")
        if prior is not None:
            acts = self._reject(peer, so, Reason.CONFLICT,
                                f"already signed order {prior.tx_id.hex()[:16]} for sequence {o.sequence}")
            return [ReportFork(ForkProof(prior, so), peer), *acts]
        other = self.locks.escrow_problem(so)
        if other:
            return self._reject(peer, so, Reason.CONFLICT, other)
        problem = self.state.order_problem(o)
        if problem:
            return self._reject(peer, so, *problem)
        if isinstance(o, ESCROW_ORDERS):
            problem = escrow_time_problem(self.state.escrows.get(o.escrow), o, now)
            if problem:
                return self._reject(peer, so, *problem)
        if isinstance(o, POOL_ORDERS):
            problem = self._pool_problem(o, now)
            if problem:
                return self._reject(peer, so, *problem)
        if isinstance(o, MintOrder):
            if o.receipt.claim_id in self.locks.receipts:
                return self._reject(peer, so, Reason.RECEIPT_USED,
                                    "this validator already signed a mint for this receipt's claim")
            try:
                worth = self.receipts.max_reward(o.receipt, self._verify_context(o.epoch))
            except EvidenceError as e:
                return self._reject(peer, so, Reason.BAD_EVIDENCE, str(e))
            if o.amount > worth:
                return self._reject(peer, so, Reason.BAD_EVIDENCE,
                                    f"mint of {format_amount(o.amount)} exceeds the receipt's worth {format_amount(worth)}")
            other_split = self.locks.commit_problem(o.receipt)
            if other_split:
                return self._reject(peer, so, Reason.BAD_EVIDENCE, other_split)
            limit = mint_limit(g, o.epoch, self.state.committee_for(o.epoch))
            reserved = self.locks.mint_reserved.get(o.epoch, 0)
            if reserved + o.amount > limit:
                return self._reject(peer, so, Reason.BUDGET_EXCEEDED,
                                    f"epoch {o.epoch}: {format_amount(reserved)} of this validator's {format_amount(limit)} "
                                    f"mint allowance is taken; {format_amount(o.amount)} more does not fit")
        self.locks.add(so)
        return [PersistLock(so), SendVote(peer, Vote.sign(self.key, so.tx_id))]

    def _verify_context(self, epoch: int) -> VerifyContext:
        g = self.genesis
        return VerifyContext(committee=self.state.committee_for(epoch), epoch=epoch, epoch_length=g.epoch_length,
                             uptime_reward_per_hour=g.uptime_reward_per_hour)

    def _pool_problem(self, o: PoolOrder, now: float) -> Problem | None:
        """The validator's rules of a pool order past the replica's `state_problem`: the phase
        by this validator's clock, and its own locks (the module docstring)."""
        pool = self.state.pools.get(o.pool)
        if pool is None and not isinstance(o, PoolOpenOrder):
            return Reason.POOL_UNKNOWN, f"no reward pool {_pool_short(o.pool)} on this replica"
        problem = pool_time_problem(pool, o, now)
        if problem or pool is None:
            return problem
        if isinstance(o, PoolCloseOrder):
            missing = [c for c in self.locks.pool_claims.get(o.pool, ()) if c not in self.state.used_receipts]
            if missing:
                return (Reason.POOL_UNSETTLED, f"{len(missing)} payouts this validator signed from pool "
                                               f"{_pool_short(o.pool)} are not applied here yet: retry")
            return None
        if not isinstance(o, PoolPayOrder):
            return None
        if o.pool in self.locks.pools_closed:
            return Reason.POOL_CLOSED, f"this validator signed the close of pool {_pool_short(o.pool)}"
        if o.receipt.claim_id in self.locks.receipts:
            return Reason.RECEIPT_USED, "this validator already signed a payment for this receipt's claim"
        try:
            worth, funder, session, cap = self.receipts.pool_reward(o.receipt, self._verify_context(o.epoch))
        except EvidenceError as e:
            return Reason.BAD_EVIDENCE, str(e)
        if (funder, session) != (pool.funder, pool.session):
            return (Reason.BAD_EVIDENCE, f"the receipt's work was funded by {funder.hex()[:16]} for session "
                                         f"{session.hex()[:16]}, not by pool {_pool_short(o.pool)}")
        if pool.amount < cap:
            return (Reason.POOL_EXHAUSTED, f"pool {_pool_short(o.pool)} holds {format_amount(pool.amount)}, less "
                                           f"than its session's receipts may claim in all ({format_amount(cap)}): "
                                           f"it pays none of them")
        if o.amount > worth:
            return (Reason.BAD_EVIDENCE,
                    f"payout of {format_amount(o.amount)} exceeds the receipt's worth {format_amount(worth)}")
        other_split = self.locks.commit_problem(o.receipt)
        if other_split:
            return Reason.BAD_EVIDENCE, other_split
        reserved = self.locks.pool_reserved.get(o.pool, 0)
        if reserved + o.amount > pool.amount:
            return (Reason.POOL_EXHAUSTED, f"this validator signed payouts of {format_amount(reserved)} from pool "
                                           f"{_pool_short(o.pool)}'s {format_amount(pool.amount)}; "
                                           f"{format_amount(o.amount)} more does not fit")
        return None
