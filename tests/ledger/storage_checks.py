"""The crash-safety checks every kind of ledger record goes through (escrows, reward pools),
run on a certificate stream of that kind: the undo journal restores the records exactly, a
full disk (a real tmpfs filled to the last page, fullfs.py) leaves memory equal to disk with a
clean replay, `ledger.verify` names an edited record, and a validator's lock survives a
restart (`restart_validator`). `apply_committed` is one certificate applied and committed to
a real store, as the ledger role does it."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import pytest

from fognode.ledger.actions import Commit, PersistLock, ValidatorAction
from fognode.ledger.audit import audit_store
from fognode.ledger.errors import LedgerStorageFailed
from fognode.ledger.messages import Certificate, SignedOrder
from fognode.ledger.receipts import ReceiptRegistry
from fognode.ledger.replica import MemoryHistory, Replica
from fognode.ledger.state import LedgerState
from fognode.ledger.store import LedgerStore
from fognode.ledger.validator import Validator

from .fullfs import Filler, small_fs
from .helpers import make_genesis, validator_keys

# the records of one kind in a ledger state (state.escrows, state.pools)
Records = Callable[[LedgerState], Mapping[bytes, Any]]


def apply_committed(store: LedgerStore, r: Replica, c: Certificate) -> None:
    """Apply `c` at replica `r` and commit its deltas to `store` (rolled back if that fails)."""
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


def check_rollback_restores(certs: list[Certificate], first: int,
                            snapshot: Callable[[LedgerState], Any], records: Records) -> int:
    """Apply `certs[:first]`, then the rest in reverse order inside one journal scope (all of
    them must apply), roll back: `snapshot` of the state is as before and the invariants
    hold. Returns how many `records` there were before the rollback."""
    r = Replica(LedgerState(make_genesis()), MemoryHistory())
    for c in certs[:first]:
        r.receive("t", c)
    before = snapshot(r.state)
    r.state.begin()
    for c in certs[first:][::-1]:          # out of order: pending, then one cascade
        r.receive("t", c)
    assert r.state.applied == len(certs), (r.state.applied, len(certs))
    count = len(records(r.state))
    r.state.rollback()
    r.rolled_back()
    assert snapshot(r.state) == before and r.state.invariant_problems() == []
    return count


def check_full_disk(certs: list[Certificate], records: Records) -> None:
    """Commit `certs` to a store on a 2 MiB tmpfs, filled after the 9th: the write that fails
    raises, memory equals disk (root, log length, the `records`), and a reopened store
    replays cleanly."""
    g = make_genesis()
    with small_fs("2m") as fs:
        filler = Filler(fs)
        store = LedgerStore(fs / "db", g)
        r = Replica(store.load_state(), store)
        for c in certs[:9]:
            apply_committed(store, r, c)
        filler.fill()
        with pytest.raises(LedgerStorageFailed, match="No space left on device"):
            for c in certs[9:]:
                apply_committed(store, r, c)
        on_disk = store.load_state()
        assert on_disk.root() == r.state.root() and records(on_disk) == records(r.state)
        assert store.log_length() == r.state.applied
        root, kept = r.state.root(), dict(records(r.state))
        store.close()
        filler.free()
        again = LedgerStore(fs / "db", g)
        st = again.load_state()
        assert st.root() == root and records(st) == kept and st.invariant_problems() == []
        assert audit_store(again) == []
        again.close()


def check_verify_names_an_edited_record(tmp_path: Path, certs: list[Certificate],
                                        records: Records, record_id: bytes, prefix: bytes,
                                        label: str) -> None:
    """Commit `certs`, then lower the `paid` field of record `record_id` on disk (key
    `prefix` + id): `ledger.verify`'s audit names that record (`label` and its hex id) and
    the field."""
    store = LedgerStore(tmp_path / "db", make_genesis())
    r = Replica(store.load_state(), store)
    for c in certs:
        apply_committed(store, r, c)
    rec = records(r.state)[record_id]
    store.db.put(prefix + record_id, replace(rec, paid=rec.paid - 1).encode())
    problems = audit_store(store)
    assert any(p.startswith(f"{label} {record_id.hex()}") and "paid" in p for p in problems), problems
    store.close()


def restart_validator(tmp_path: Path, first: Certificate, registry: ReceiptRegistry,
                      locked: SignedOrder, at: float, then: SignedOrder,
                      then_at: float) -> list[ValidatorAction]:
    """A validator with a store holding `first` votes for `locked` (at `at`), persists its
    lock and 'crashes'; restarted from its store, its answer to `then` (at `then_at`)."""
    g = make_genesis()
    vkey = validator_keys()[1]
    store = LedgerStore(tmp_path / "db", g)
    r = Replica(store.load_state(), store)
    apply_committed(store, r, first)
    v = Validator(g, vkey, r.state, store.load_locks(), registry)
    acts = v.receive("c", locked, at)
    assert any(isinstance(a, PersistLock) for a in acts), acts
    for a in acts:
        if isinstance(a, PersistLock):
            store.persist_lock(a.order)
    store.close()
    store = LedgerStore(tmp_path / "db", g)
    try:
        v = Validator(g, vkey, store.load_state(), store.load_locks(), registry)
        return v.receive("c", then, then_at)
    finally:
        store.close()
