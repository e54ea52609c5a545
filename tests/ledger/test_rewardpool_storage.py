"""Reward pools are crash-safe like transfers: the undo journal restores pool records exactly, a
full disk (a real tmpfs filled to the last page, tests/ledger/fullfs.py) leaves memory equal to
disk, `ledger.verify`'s replay reproduces every pool record and names an edited one, and a
validator that signed a pool's close still refuses its payouts after a restart (the lock is
reloaded from the persisted validator locks)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fognode.ledger.actions import Commit, PersistLock, SendRejection
from fognode.ledger.audit import audit_store
from fognode.ledger.errors import LedgerStorageFailed, Reason
from fognode.ledger.messages import Certificate, SignedOrder
from fognode.ledger.receipts import default_registry
from fognode.ledger.replica import MemoryHistory, Replica
from fognode.ledger.state import LedgerState
from fognode.ledger.store import LedgerStore
from fognode.ledger.validator import Validator

from .fullfs import Filler, small_fs
from .helpers import NOW, certify, key, make_genesis, pk, validator_keys
from .rewardpool_helpers import close, funded_announcement, open_pool, pay, pid, round_receipts, with_fl

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
    g = make_genesis()
    certs = pool_stream(4)
    r = Replica(LedgerState(g), MemoryHistory())
    for c in certs[:3]:
        r.receive("t", c)
    before = snapshot(r.state)
    r.state.begin()
    for c in certs[3:][::-1]:          # out of order: pending, then one cascade
        r.receive("t", c)
    assert r.state.applied == 12 and len(r.state.pools) == 4
    r.state.rollback()
    r.rolled_back()
    assert snapshot(r.state) == before and r.state.invariant_problems() == []


def _apply(store: LedgerStore, r: Replica, c: Certificate) -> None:
    r.state.begin()
    deltas = [a.delta for a in r.receive("t", c) if isinstance(a, Commit)]
    try:
        store.commit(deltas)
    except BaseException:
        r.state.rollback()
        r.rolled_back()
        raise
    r.state.end()
    r.committed()


def test_pools_on_a_full_disk_memory_equals_disk_and_replay_is_clean() -> None:
    g = make_genesis()
    certs = pool_stream(60)
    with small_fs("2m") as fs:
        filler = Filler(fs)
        store = LedgerStore(fs / "db", g)
        r = Replica(store.load_state(), store)
        for c in certs[:9]:
            _apply(store, r, c)
        filler.fill()
        with pytest.raises(LedgerStorageFailed, match="No space left on device"):
            for c in certs[9:]:
                _apply(store, r, c)
        on_disk = store.load_state()
        assert on_disk.root() == r.state.root() and on_disk.pools == r.state.pools
        assert store.log_length() == r.state.applied
        root, pools = r.state.root(), dict(r.state.pools)
        store.close()
        filler.free()
        again = LedgerStore(fs / "db", g)
        st = again.load_state()
        assert st.root() == root and st.pools == pools and st.invariant_problems() == []
        assert audit_store(again) == []
        again.close()


def test_verify_names_an_edited_pool_record(tmp_path: Path) -> None:
    g = make_genesis()
    store = LedgerStore(tmp_path / "db", g)
    r = Replica(store.load_state(), store)
    for c in pool_stream(2):
        _apply(store, r, c)
    p = next(iter(r.state.pools))
    rec = r.state.pools[p]
    store.db.put(b"P/" + p, replace(rec, paid=rec.paid - 1).encode())
    problems = audit_store(store)
    assert any(x.startswith(f"reward pool {p.hex()}") and "paid" in x for x in problems), problems
    store.close()


def test_a_signed_close_survives_a_restart(tmp_path: Path) -> None:
    """A validator signs a pool's close, persists its lock, 'crashes'; restarted from its store
    it still refuses a payout from the pool."""
    g = make_genesis()
    vkey = validator_keys()[1]
    store = LedgerStore(tmp_path / "db", g)
    r = Replica(store.load_state(), store)
    _apply(store, r, pool_stream(1)[0])
    ann = funded_announcement(pk(FUNDER), BUDGET)
    P = pid(FUNDER, ann)
    v = Validator(g, vkey, r.state, store.load_locks(), with_fl(default_registry()))
    pool = r.state.pools[P]
    acts = v.receive("c", SignedOrder.sign(FUNDER, close(FUNDER, P, 0, 0, pool.digest, 1)), DEADLINE + 1)
    assert any(isinstance(a, PersistLock) for a in acts)
    for a in acts:
        if isinstance(a, PersistLock):
            store.persist_lock(a.order)
    store.close()
    store = LedgerStore(tmp_path / "db", g)
    v = Validator(g, vkey, store.load_state(), store.load_locks(), with_fl(default_registry()))
    acts = v.receive("c", SignedOrder.sign(PAYER, pay(PAYER, P, round_receipts(ann, 1)[0], 0)), NOW)
    rej = [a for a in acts if isinstance(a, SendRejection)]
    assert rej and rej[0].rejection.reason is Reason.POOL_CLOSED and "signed the close" in rej[0].rejection.message
    store.close()
