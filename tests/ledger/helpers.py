"""Shared builders for ledger tests: deterministic keys, a genesis, a committee that votes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nacl.signing import SigningKey

from fognode.ledger.actions import PersistLock, SendRejection, SendVote
from fognode.ledger.address import encode_address
from fognode.ledger.amounts import MICRO
from fognode.ledger.genesis import Genesis
from fognode.ledger.messages import Certificate, Order, SignedOrder, TransferOrder, Vote
from fognode.ledger.receipts import default_registry
from fognode.ledger.replica import MemoryHistory, Replica
from fognode.ledger.state import LedgerState
from fognode.ledger.validator import LockTable, Validator

CHAIN = "fognode-test"
T0 = 1_800_000_000
NOW = T0 + 10.0


def key(i: int) -> SigningKey:
    return SigningKey(bytes([i + 1]) * 32)


def pk(k: SigningKey) -> bytes:
    return bytes(k.verify_key)


def genesis_dict(n_validators: int = 4, funded: int = 3, *, fee: int = 1000, fee_destination: str = "burn",
                 budget: int = 100 * MICRO, stakes: list[int] | None = None) -> dict[str, Any]:
    vals = [key(100 + i) for i in range(n_validators)]
    users = [key(i) for i in range(funded)]
    stakes = stakes or [1000 * MICRO] * n_validators
    return {"ledger": {
        "v": 1, "chain_id": CHAIN, "genesis_time": T0, "epoch_length": 3600,
        "balances": {encode_address(pk(u)): 1000 * MICRO for u in users},
        "validators": [{"address": encode_address(pk(v)), "stake": s} for v, s in zip(vals, stakes)],
        "emission": {"initial_epoch_budget": budget, "halving_epochs": 0, "tail_epoch_budget": 0},
        "fee": fee, "fee_destination": fee_destination, "unbonding_epochs": 2,
        "uptime_reward_per_hour": 10 * MICRO,
    }}


def make_genesis(**kw: Any) -> Genesis:
    return Genesis.from_node_genesis(genesis_dict(**kw))


def validator_keys(n: int = 4) -> list[SigningKey]:
    return [key(100 + i) for i in range(n)]


def transfer(sender: SigningKey, recipient: bytes, amount: int, seq: int, *, fee: int = 1000,
             memo: str = "", chain: str = CHAIN, epoch: int = 0) -> SignedOrder:
    return SignedOrder.sign(sender, TransferOrder(chain=chain, epoch=epoch, sender=pk(sender), sequence=seq,
                                                  fee=fee, recipient=recipient, amount=amount, memo=memo))


def certify(so: SignedOrder, signers: list[SigningKey]) -> Certificate:
    return Certificate.from_votes(so, [Vote.sign(k, so.tx_id) for k in signers])


@dataclass
class Node:
    """One validator + replica sharing one state, as a daemon would run them."""

    key: SigningKey
    genesis: Genesis
    state: LedgerState = field(init=False)
    locks: LockTable = field(init=False)
    validator: Validator = field(init=False)
    replica: Replica = field(init=False)
    persisted: list[SignedOrder] = field(default_factory=list)
    committee_locks: dict[int, Any] = field(default_factory=dict)   # the committee signer's locks

    def __post_init__(self) -> None:
        self.state = LedgerState(self.genesis)
        self.locks = LockTable()
        self.validator = Validator(self.genesis, self.key, self.state, self.locks, default_registry())
        self.replica = Replica(self.state, MemoryHistory())

    def ask(self, so: SignedOrder, now: float = NOW) -> Vote | SendRejection:
        acts = self.validator.receive("client", so, now)
        vote = [a for a in acts if isinstance(a, SendVote)]
        if vote:
            # the lock must come first, for this very order
            assert isinstance(acts[0], PersistLock) and acts[0].order == so or \
                self.locks.get(*so.key) == so
            self.persisted.extend(a.order for a in acts if isinstance(a, PersistLock))
            return vote[0].vote
        rej = [a for a in acts if isinstance(a, SendRejection)]
        assert rej, acts
        return rej[0]


def order_of(so: SignedOrder) -> Order:
    return so.order
