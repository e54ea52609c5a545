"""The ledger state machine: accounts, supply, staking, and an incremental state root.

State = accounts (balance, next sequence, bonded stake, unbonding entries, head of the hash
chain of the account's applied transactions), supply counters (initial, minted, burned),
minted amount per epoch, the set of receipt claim ids already paid (receipts.py: the
claim id is the receipt id unless the receipt names what it claims), and the escrows
(escrow.py: what each holds counts in the supply; an escrow order applies only at its escrow's
next escrow sequence, so every replica sees the same escrow record at each step) and the reward
pools (rewardpool.py: what each holds counts in the supply; payouts commute, a close waits for
the payouts it states).

State root. Each entry of the state is a leaf h = BLAKE2b-512(tag || key || value); the
accumulator is the sum of all leaves modulo 2^512 (a homomorphic multiset hash, AdHash/LtHash
family). Changing one entry subtracts its old leaf and adds its new one, so applying a
certificate costs a few hashes whatever the size of the state, and the root does not depend on
the order in which entries changed: replicas holding the same certificates hold byte-identical
roots. root = BLAKE2b-256("fognode-ledger-root/1" || chain id || accumulator).

Applying is commutative across senders (balances are sums), and ordered per sender by the
sequence number. A certificate is applied only when it is the sender's next sequence and the
sender can cover its debit (incoming transfers it depends on may still be on their way); the
replica keeps it pending until then, so no balance is ever negative.

Undo. Between `begin()` and `end()` every change `apply` makes is journaled (old values of the
touched entries, plus supply, apply count and accumulator), and `rollback()` restores the
state exactly as it was at `begin()`. The ledger service brackets each apply-and-write with
them: a batch whose store write fails is rolled back before anything else runs, so the state
in memory never runs ahead of the state on disk (service.py `_apply_batch`).

Staging (group commit, service.py). `staging()` is a second state object the replica and the
validator work on ahead of the disk; the state everyone else reads catches up by
`install(delta)` once the delta is durable, which sets exactly the records the store wrote
(the state a restart would load) and checks that the accumulator comes out the same. An
account's and the supply's leaf is hashed once per record object (records.py), so that check
costs additions, not the hashes again; `recompute_accumulator` hashes everything afresh.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any, Iterable

from fognode.ledger.amounts import format_amount
from fognode.ledger.committee import CommitteeBook, Members, compute_members
from fognode.ledger.errors import Reason
from fognode.ledger.escrow import Escrow, effect as escrow_effect, state_problem as escrow_problem
from fognode.ledger.escrow_orders import ESCROW_ORDERS, EscrowOpenOrder, EscrowOrder
from fognode.ledger.genesis import FeeDestination, Genesis
from fognode.ledger.messages import (BondOrder, Certificate, MintOrder, Order, TransferOrder,
                                     UnbondOrder)
from fognode.ledger.quorum import Committee
from fognode.ledger.records import Account, Delta, Supply, leaf
from fognode.ledger.rewardpool import (RewardPool, blocked as pool_blocked, effect as pool_effect,
                                       state_problem as pool_problem)
from fognode.ledger.rewardpool_orders import POOL_ORDERS, PoolPayOrder
from fognode.ledger.rewards import calculate_rewards
from fognode.node.wire import pack

MOD = 1 << 512
MAX_UNBONDING_ENTRIES = 32


def _epoch_key(epoch: int) -> bytes:
    return epoch.to_bytes(8, "big")


class LedgerState:
    """In-memory replica state. Mutated only through `apply` and `install`; restored by the store."""

    # (kind, key, old value) of each change since begin(), or None when not journaling
    _journal: list[tuple[str, Any, Any]] | None = None
    _saved: tuple[Supply, int, int] | None = None
    # root(): (accumulator, root) of the last call; the root is a function of the accumulator
    # alone (the prefix is fixed per chain), so it is valid exactly while `_acc` is that value
    _root_memo: tuple[int, bytes] | None = None

    def __init__(self, genesis: Genesis) -> None:
        self.genesis = genesis
        self.committee = genesis.committee
        self.accounts: dict[bytes, Account] = {}
        self.supply = Supply(initial=genesis.initial_supply())
        self.minted_by_epoch: dict[int, int] = {}
        self.used_receipts: set[bytes] = set()      # claim ids of applied mints
        self.applied = 0
        self.stake_deltas: dict[int, dict[bytes, int]] = {}
        self.escrows: dict[bytes, Escrow] = {}      # escrow.py
        self.pools: dict[bytes, RewardPool] = {}    # rewardpool.py
        self.committees = CommitteeBook(genesis)
        self._acc = 0
        self._root_prefix = b"fognode-ledger-root/1" + genesis.chain_id.encode()
        self._add(leaf(b"S", b"", self.supply.encode()))
        for k, amount in genesis.balances:
            self._set_account(k, Account(balance=amount))
        for k, stake in genesis.validators:
            self._set_account(k, replace(self.account(k), bonded=self.account(k).bonded + stake))

    @classmethod
    def restore(cls, genesis: Genesis, accounts: Iterable[tuple[bytes, Account]], supply: Supply,
                minted_by_epoch: dict[int, int], used_receipts: set[bytes], applied: int,
                accumulator: int, stake_deltas: dict[int, dict[bytes, int]] | None = None,
                escrows: Iterable[tuple[bytes, Escrow]] = (),
                pools: Iterable[tuple[bytes, RewardPool]] = ()) -> "LedgerState":
        s = cls.__new__(cls)
        s.genesis = genesis
        s.committee = genesis.committee
        s.accounts = dict(accounts)
        s.supply = supply
        s.minted_by_epoch = dict(minted_by_epoch)
        s.used_receipts = set(used_receipts)
        s.applied = applied
        s.stake_deltas = {e: dict(d) for e, d in (stake_deltas or {}).items()}
        s.escrows = dict(escrows)
        s.pools = dict(pools)
        s.committees = CommitteeBook(genesis)
        s._acc = accumulator
        s._root_prefix = b"fognode-ledger-root/1" + genesis.chain_id.encode()
        return s

    def staging(self) -> "LedgerState":
        """A copy to apply ahead of the disk (module docstring); it shares the committee book."""
        s = LedgerState.restore(self.genesis, self.accounts.items(), self.supply, self.minted_by_epoch,
                                self.used_receipts, self.applied, self._acc, self.stake_deltas,
                                self.escrows.items(), self.pools.items())
        s.committees = self.committees
        return s

    def install(self, d: Delta) -> None:
        """Set what delta `d` (applied to a staging copy from this very state) changed.
        Raises RuntimeError (nothing is half-set past the check) if it does not follow on."""
        if d.index != self.applied + 1:
            raise RuntimeError(f"LedgerState.install: delta {d.index} does not follow apply {self.applied}")
        for k, a in d.accounts:
            self._set_account(k, a)
        if d.supply != self.supply:
            self._set_supply(d.supply)
        if d.minted_epoch is not None:
            self._set_minted(*d.minted_epoch)
        if d.escrow is not None:
            self._set_escrow(*d.escrow)
        if d.pool is not None:
            self._set_pool(*d.pool)
        if d.claim_id is not None:
            self.used_receipts.add(d.claim_id)
            self._add(leaf(b"R", d.claim_id, b""))
        if d.stake_delta is not None:
            epoch, staker, net = d.stake_delta
            self.stake_deltas.setdefault(epoch, {})[staker] = net
        self.applied = d.index
        if self._acc != d.accumulator:
            raise RuntimeError(f"LedgerState.install: apply {d.index} gives another state root than its delta")

    # -- accumulator --------------------------------------------------------------------

    def _add(self, leaf: int) -> None:
        self._acc = (self._acc + leaf) % MOD

    def _sub(self, leaf: int) -> None:
        self._acc = (self._acc - leaf) % MOD

    @property
    def accumulator(self) -> int:
        return self._acc

    def root(self) -> bytes:
        """BLAKE2b of the chain's prefix and the accumulator; memoised per accumulator value
        (every apply, install, rollback and restore sets `_acc`: a changed value recomputes)."""
        acc, memo = self._acc, self._root_memo
        if memo is not None and memo[0] == acc:
            return memo[1]
        root = hashlib.blake2b(self._root_prefix + acc.to_bytes(64, "big"), digest_size=32).digest()
        self._root_memo = (acc, root)
        return root

    def recompute_accumulator(self) -> int:
        """The accumulator from scratch (for `ledger.verify`): must equal `accumulator`."""
        acc = leaf(b"S", b"", self.supply.encode())
        for k, a in self.accounts.items():
            if not a.is_empty:
                acc += leaf(b"A", k, a.encode())
        for e, m in self.minted_by_epoch.items():
            acc += leaf(b"M", _epoch_key(e), pack(m))
        for r in self.used_receipts:
            acc += leaf(b"R", r, b"")
        for k, e in self.escrows.items():
            acc += leaf(b"E", k, e.encode())
        for k, p in self.pools.items():
            acc += leaf(b"P", k, p.encode())
        return acc % MOD

    # -- undo journal (see the module docstring) ----------------------------------------------

    def begin(self) -> None:
        """Start journaling changes (at most one journal at a time)."""
        if self._journal is not None:
            raise RuntimeError("LedgerState.begin() while a journal is open")
        self._journal = []
        self._saved = (self.supply, self.applied, self._acc)

    def end(self) -> None:
        """Keep the changes since `begin()` (they are on disk); stop journaling."""
        self._journal = None
        self._saved = None

    def rollback(self) -> None:
        """Undo every change since `begin()`, newest first; stop journaling."""
        j, saved = self._journal, self._saved
        if j is None or saved is None:
            raise RuntimeError("LedgerState.rollback() without begin()")
        for kind, key, old in reversed(j):
            table: dict[Any, Any]
            if kind == "a":
                table = self.accounts
            elif kind == "m":
                table = self.minted_by_epoch
            elif kind == "r":
                self.used_receipts.discard(key)
                continue
            elif kind == "e":
                table = self.escrows
            elif kind == "p":
                table = self.pools
            else:   # "k": key is (epoch, staker) in stake_deltas
                epoch, key = key
                table = self.stake_deltas.setdefault(epoch, {})
            if old is None:
                table.pop(key, None)
            else:
                table[key] = old
        for e in [e for e, d in self.stake_deltas.items() if not d]:
            del self.stake_deltas[e]        # epochs the undone applies had created
        self.supply, self.applied, self._acc = saved
        self.end()

    def _set_account(self, key: bytes, new: Account) -> None:
        old = self.accounts.get(key)
        if self._journal is not None:
            self._journal.append(("a", key, old))
        if old is not None and not old.is_empty:
            self._sub(old.leaf(key))
        if new.is_empty:
            self.accounts.pop(key, None)
        else:
            self._add(new.leaf(key))
            self.accounts[key] = new

    def _set_escrow(self, key: bytes, new: Escrow) -> None:
        old = self.escrows.get(key)
        if self._journal is not None:
            self._journal.append(("e", key, old))
        if old is not None:
            self._sub(leaf(b"E", key, old.encode()))
        self._add(leaf(b"E", key, new.encode()))
        self.escrows[key] = new

    def _set_pool(self, key: bytes, new: RewardPool) -> None:
        old = self.pools.get(key)
        if self._journal is not None:
            self._journal.append(("p", key, old))
        if old is not None:
            self._sub(leaf(b"P", key, old.encode()))
        self._add(leaf(b"P", key, new.encode()))
        self.pools[key] = new

    def _set_supply(self, new: Supply) -> None:
        self._sub(self.supply.leaf())
        self._add(new.leaf())
        self.supply = new

    def _set_minted(self, epoch: int, total: int) -> None:
        old = self.minted_by_epoch.get(epoch)
        if self._journal is not None:
            self._journal.append(("m", epoch, old))
        if old is not None:
            self._sub(leaf(b"M", _epoch_key(epoch), pack(old)))
        self._add(leaf(b"M", _epoch_key(epoch), pack(total)))
        self.minted_by_epoch[epoch] = total

    # -- queries --------------------------------------------------------------------------

    def account(self, key: bytes) -> Account:
        return self.accounts.get(key) or Account()

    def total_staked(self) -> int:
        return sum(a.bonded for a in self.accounts.values())

    def holdings(self) -> int:
        """Sum of every balance, bond, unbonding entry and escrow (must equal supply.total)."""
        return (sum(a.balance + a.bonded + sum(x for _, x in a.unbonding) for a in self.accounts.values())
                + sum(e.held for e in self.escrows.values()) + sum(p.held for p in self.pools.values()))

    def order_problem(self, order: Order) -> tuple[Reason, str] | None:
        """Why this state cannot take `order` as the sender's next order, or None."""
        acct = self.account(order.sender)
        if order.sequence != acct.next_sequence:
            return (Reason.WRONG_SEQUENCE,
                    f"sequence {order.sequence} is not the sender's next ({acct.next_sequence})")
        if acct.spendable(order.epoch) < order.debit():
            return (Reason.OVERSPEND,
                    f"the order needs {format_amount(order.debit())} tokens (amount and fee), the sender has "
                    f"{format_amount(acct.spendable(order.epoch))}")
        if isinstance(order, UnbondOrder):
            if acct.bonded < order.amount:
                return Reason.INSUFFICIENT_STAKE, f"unbonding {format_amount(order.amount)} of {format_amount(acct.bonded)} bonded"
            if len(acct.unbonding) >= MAX_UNBONDING_ENTRIES:
                return Reason.INSUFFICIENT_STAKE, f"already {MAX_UNBONDING_ENTRIES} unbonding entries pending"
        if isinstance(order, (MintOrder, PoolPayOrder)) and order.receipt.claim_id in self.used_receipts:
            return Reason.RECEIPT_USED, "this receipt's claim has already been paid"
        if isinstance(order, POOL_ORDERS):
            return pool_problem(self.pools.get(order.pool), order)
        if isinstance(order, ESCROW_ORDERS):
            return escrow_problem(self.escrows.get(order.escrow), order)
        return None

    def _escrow_blocked(self, o: EscrowOrder) -> str | None:
        """`blocked()` for the escrow side of an escrow order (escrow.py)."""
        e = self.escrows.get(o.escrow)
        if isinstance(o, EscrowOpenOrder):
            return "invalid" if e is not None else None
        if e is None or o.escrow_sequence > e.next_sequence:
            return "sequence"
        if o.escrow_sequence < e.next_sequence or escrow_problem(e, o) is not None:
            return "invalid"
        return None

    def blocked(self, cert: Certificate) -> str | None:
        """None if `cert` applies now; "sequence" if predecessors are missing; "funds" if an
        incoming transfer it depends on is missing; "applied" if its sequence is past;
        "invalid" if it can never apply (a faulty quorum certified it)."""
        o = cert.order.order
        acct = self.account(o.sender)
        if o.sequence < acct.next_sequence:
            return "applied"
        if o.sequence > acct.next_sequence:
            return "sequence"
        if isinstance(o, UnbondOrder) and acct.bonded < o.amount:
            return "invalid"
        if isinstance(o, MintOrder) and o.receipt.claim_id in self.used_receipts:
            return "invalid"
        if isinstance(o, ESCROW_ORDERS):
            why = self._escrow_blocked(o)
            if why is not None:
                return why
        if isinstance(o, POOL_ORDERS):
            why = pool_blocked(self.pools.get(o.pool), o, self.used_receipts)
            if why is not None:
                return why
        if acct.spendable(o.epoch) < o.debit():
            return "funds"
        return None

    # -- apply ----------------------------------------------------------------------------

    def apply(self, cert: Certificate) -> Delta:
        """Apply a verified certificate whose `blocked()` is None; return what changed.
        Raises ValueError (nothing changed) if it cannot apply now."""
        why = self.blocked(cert)
        if why is not None:
            raise ValueError(f"certificate cannot apply now ({why})")
        return self.apply_unblocked(cert)

    def apply_unblocked(self, cert: Certificate) -> Delta:
        """`apply` for a caller that has just seen `blocked(cert)` return None."""
        o = cert.order.order
        g = self.genesis
        touched: dict[bytes, Account] = {}
        accounts = self.accounts
        empty = Account()

        def get(k: bytes) -> Account:
            return touched.get(k) or accounts.get(k) or empty

        s = get(o.sender)
        if s.unbonding:
            s = s.release(o.epoch)
        bonded, unbonding = s.bonded, s.unbonding
        stake_delta = None
        if isinstance(o, BondOrder):
            bonded += o.amount
            stake_delta = (o.epoch, o.sender, self.stake_deltas.get(o.epoch, {}).get(o.sender, 0) + o.amount)
        elif isinstance(o, UnbondOrder):
            bonded -= o.amount
            unbonding = unbonding + ((o.epoch + g.unbonding_epochs, o.amount),)
            stake_delta = (o.epoch, o.sender, self.stake_deltas.get(o.epoch, {}).get(o.sender, 0) - o.amount)
        touched[o.sender] = Account(s.balance - o.debit(), s.next_sequence + 1, bonded, unbonding,
                                    hashlib.blake2b(s.head + cert.tx_id, digest_size=32).digest())
        parties: tuple[bytes, ...] = (o.sender,)
        supply = self.supply
        minted_epoch = None
        claim_id = None
        if isinstance(o, (TransferOrder, MintOrder)):
            r = get(o.recipient)
            touched[o.recipient] = Account(r.balance + o.amount, r.next_sequence, r.bonded, r.unbonding, r.head)
            if o.recipient != o.sender:
                parties = (o.sender, o.recipient)
        escrow = None
        if isinstance(o, ESCROW_ORDERS):
            new, credits = escrow_effect(self.escrows.get(o.escrow), o)
            escrow = (o.escrow, new)
            for k, amount in credits:
                a = get(k)
                touched[k] = Account(a.balance + amount, a.next_sequence, a.bonded, a.unbonding, a.head)
            parties = tuple(dict.fromkeys((o.sender, new.customer, new.payee)))
        pool = None
        if isinstance(o, POOL_ORDERS):
            np, credits = pool_effect(self.pools.get(o.pool), o, cert.tx_id)
            pool = (o.pool, np)
            for k, amount in credits:
                a = get(k)
                touched[k] = Account(a.balance + amount, a.next_sequence, a.bonded, a.unbonding, a.head)
            parties = tuple(dict.fromkeys((o.sender, np.funder, *(k for k, _ in credits))))
            if isinstance(o, PoolPayOrder):
                claim_id = o.receipt.claim_id
        if isinstance(o, MintOrder):
            supply = replace(supply, minted=supply.minted + o.amount)
            minted_epoch = (o.epoch, self.minted_by_epoch.get(o.epoch, 0) + o.amount)
            claim_id = o.receipt.claim_id
        if o.fee:
            if g.fee_destination is FeeDestination.BURN:
                supply = replace(supply, burned=supply.burned + o.fee)
            else:
                for k, share in calculate_rewards(dict(self.committee_for(o.epoch).members), o.fee).items():
                    a = get(k)
                    touched[k] = Account(a.balance + share, a.next_sequence, a.bonded, a.unbonding, a.head)
        for k, a in touched.items():
            self._set_account(k, a)
        if supply is not self.supply:
            self._set_supply(supply)
        if minted_epoch is not None:
            self._set_minted(*minted_epoch)
        if escrow is not None:
            self._set_escrow(*escrow)
        if pool is not None:
            self._set_pool(*pool)
        if claim_id is not None:
            if self._journal is not None and claim_id not in self.used_receipts:
                self._journal.append(("r", claim_id, None))
            self.used_receipts.add(claim_id)
            self._add(leaf(b"R", claim_id, b""))
        if stake_delta is not None:
            if self._journal is not None:
                self._journal.append(("k", (stake_delta[0], stake_delta[1]),
                                      self.stake_deltas.get(stake_delta[0], {}).get(stake_delta[1])))
            self.stake_deltas.setdefault(stake_delta[0], {})[stake_delta[1]] = stake_delta[2]
        self.applied += 1
        return Delta(cert=cert, index=self.applied, accounts=tuple(touched.items()), supply=self.supply,
                     minted_epoch=minted_epoch, claim_id=claim_id, accumulator=self._acc,
                     parties=parties, stake_delta=stake_delta, escrow=escrow, pool=pool)

    def committee_for(self, epoch: int) -> Committee:
        """The committee certifying orders of `epoch` (certified rotation, see committee.py)."""
        return self.committees.committee_for(epoch)

    def stakes_upto(self, epoch: int) -> dict[bytes, int]:
        """Bonded stake per account counting the genesis validators and the applied bond and
        unbond certificates whose order epoch is <= `epoch` (order-independent sums)."""
        stakes = dict(self.genesis.validators)
        for e, changes in self.stake_deltas.items():
            if e <= epoch:
                for k, d in changes.items():
                    stakes[k] = stakes.get(k, 0) + d
        return {k: v for k, v in stakes.items() if v > 0}

    def computed_members(self, epoch: int) -> Members:
        """The committee of `epoch` this replica computes (stakes of order epochs <= epoch - 2);
        empty if nobody qualifies."""
        return compute_members(self.genesis, self.stakes_upto(epoch - 2))

    def invariant_problems(self) -> list[str]:
        """What `ledger.verify` reports: supply accounting and the root accumulator."""
        problems = []
        held = self.holdings()
        if held != self.supply.total:
            problems.append(f"accounts hold {held} micro-units but supply is {self.supply.total} "
                            f"(initial {self.supply.initial} + minted {self.supply.minted} - burned {self.supply.burned})")
        if sum(self.minted_by_epoch.values()) != self.supply.minted:
            problems.append("minted per epoch does not add up to minted supply")
        for e, m in sorted(self.minted_by_epoch.items()):
            if m > self.genesis.emission.budget(e):
                problems.append(f"epoch {e}: minted {m}, over the budget {self.genesis.emission.budget(e)} "
                                f"(more than f validators were faulty)")
        if any(a.balance < 0 or a.bonded < 0 for a in self.accounts.values()):
            problems.append("a balance or a bond is negative")
        problems += [f"escrow {k.hex()}: {p}" for k, e in sorted(self.escrows.items()) for p in e.problems()]
        problems += [f"reward pool {k.hex()}: {p}" for k, r in sorted(self.pools.items()) for p in r.problems()]
        if self.recompute_accumulator() != self._acc:
            problems.append("the state root accumulator does not match the state (corrupt replica)")
        return problems
