"""Reward pools are crash-safe like transfers: the undo journal restores pool records exactly, a
full disk (a real tmpfs filled to the last page, tests/ledger/fullfs.py) leaves memory equal to
disk, `ledger.verify`'s replay reproduces every pool record and names an edited one, and a
validator that signed a pool's close still refuses its payouts after a restart (the lock is
reloaded from the persisted validator locks). The checks are storage_checks.py's, shared with
the escrows."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fognode.ledger.actions import SendRejection
from fognode.ledger.errors import Reason
from fognode.ledger.messages import Certificate, SignedOrder
from fognode.ledger.receipts import default_registry
from fognode.ledger.replica import MemoryHistory, Replica
from fognode.ledger.state import LedgerState

from .helpers import NOW, certify, key, make_genesis, pk, validator_keys
from .rewardpool_helpers import close, funded_announcement, open_pool, pay, pid, round_receipts, with_fl
from .storage_checks import (check_full_disk, check_rollback_restores,
                             check_verify_names_an_edited_record, restart_validator)

FUNDER, PAYER = key(0), key(1)
BUDGET = 3_000_000
DEADLINE = int(NOW) + 1000


def pool_stream(n: int) -> list[Certificate]:
    """n funded sessions of the funder, each paid its round 1 receipts by the payer (seen from
    a replica that applies them in this order)."""
    signers = validator_keys()[:3]
    out: list[Certificate] = []
    paid = 0
    for i in range(n):
        ann = funded_announcement(pk(FUNDER), BUDGET + i)
        out.append(certify(SignedOrder.sign(FUNDER, open_pool(FUNDER, ann, BUDGET + i, i, deadline=DEADLINE)),
                           signers))
        for r in round_receipts(ann, 1)[:2]:
            out.append(certify(SignedOrder.sign(PAYER, pay(PAYER, pid(FUNDER, ann), r, paid)), signers))
            paid += 1
    return out


def snapshot(s: LedgerState) -> tuple[Any, ...]:
    return dict(s.accounts), s.supply, dict(s.pools), set(s.used_receipts), s.applied, s.accumulator, s.root()


def test_rollback_restores_pool_records_exactly() -> None:
    assert check_rollback_restores(pool_stream(4), 3, snapshot, lambda s: s.pools) == 4


def test_pools_on_a_full_disk_memory_equals_disk_and_replay_is_clean() -> None:
    check_full_disk(pool_stream(60), lambda s: s.pools)


def test_verify_names_an_edited_pool_record(tmp_path: Path) -> None:
    certs = pool_stream(2)
    r = Replica(LedgerState(make_genesis()), MemoryHistory())
    for c in certs:
        r.receive("t", c)
    check_verify_names_an_edited_record(tmp_path, certs, lambda s: s.pools, next(iter(r.state.pools)),
                                        b"P/", "reward pool")


def test_a_signed_close_survives_a_restart(tmp_path: Path) -> None:
    """A validator signs a pool's close, persists its lock, 'crashes'; restarted from its store
    it still refuses a payout from the pool."""
    ann = funded_announcement(pk(FUNDER), BUDGET)
    P = pid(FUNDER, ann)
    first = pool_stream(1)[0]
    r = Replica(LedgerState(make_genesis()), MemoryHistory())
    r.receive("t", first)
    digest = r.state.pools[P].digest
    acts = restart_validator(tmp_path, first, with_fl(default_registry()),
                             SignedOrder.sign(FUNDER, close(FUNDER, P, 0, 0, digest, 1)), DEADLINE + 1,
                             SignedOrder.sign(PAYER, pay(PAYER, P, round_receipts(ann, 1)[0], 0)), NOW)
    rej = [a for a in acts if isinstance(a, SendRejection)]
    assert rej and rej[0].rejection.reason is Reason.POOL_CLOSED and "signed the close" in rej[0].rejection.message
