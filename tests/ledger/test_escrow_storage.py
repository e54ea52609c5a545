"""Escrows are crash-safe like transfers: the undo journal restores escrow records exactly, a
full disk (a real tmpfs filled to the last page, tests/ledger/fullfs.py) leaves memory equal
to disk, `ledger.verify`'s replay reproduces every escrow record and names an edited one, and
the escrow lock survives a restart (reloaded from the persisted validator locks)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fognode.ledger.actions import Commit, PersistLock, SendRejection
from fognode.ledger.amounts import MICRO
from fognode.ledger.audit import audit_store
from fognode.ledger.errors import LedgerStorageFailed, Reason
from fognode.ledger.messages import Certificate
from fognode.ledger.replica import MemoryHistory, Replica
from fognode.ledger.state import LedgerState
from fognode.ledger.store import LedgerStore
from fognode.ledger.validator import Validator
from fognode.ledger.receipts import default_registry

from .escrow_helpers import eid, open_order, payout, refund, signed
from .fullfs import Filler, small_fs
from .helpers import NOW, certify, key, make_genesis, pk, validator_keys

CUSTOMER, PROVIDER = key(0), key(1)
DEADLINE = int(NOW) + 1000


def escrow_stream(n: int) -> list[Certificate]:
    """n escrows of the customer, each opened then paid twice by the provider (3n certificates)."""
    signers = validator_keys()[:3]
    out = []
    for i in range(n):
        ag = i.to_bytes(32, "big")
        e = eid(CUSTOMER, ag)
        out.append(certify(signed(CUSTOMER, open_order(CUSTOMER, pk(PROVIDER), 10 * MICRO, i, deadline=DEADLINE,
                                                       agreement=ag)), signers))
        out.append(certify(signed(PROVIDER, payout(PROVIDER, CUSTOMER, e, 1, 3 * MICRO, 2 * i)), signers))
        out.append(certify(signed(PROVIDER, payout(PROVIDER, CUSTOMER, e, 2, 7 * MICRO, 2 * i + 1)), signers))
    return out


def snapshot(s: LedgerState) -> tuple[Any, ...]:
    return dict(s.accounts), s.supply, dict(s.escrows), s.applied, s.accumulator, s.root()


def test_rollback_restores_escrow_records_exactly() -> None:
    g = make_genesis()
    certs = escrow_stream(6)
    r = Replica(LedgerState(g), MemoryHistory())
    for c in certs[:6]:
        r.receive("t", c)
    before = snapshot(r.state)
    r.state.begin()
    for c in certs[6:][::-1]:          # out of order: pending, then one cascade
        r.receive("t", c)
    assert r.state.applied == 18 and len(r.state.escrows) == 6
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


def test_escrows_on_a_full_disk_memory_equals_disk_and_replay_is_clean() -> None:
    g = make_genesis()
    certs = escrow_stream(60)
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
        assert on_disk.root() == r.state.root() and on_disk.escrows == r.state.escrows
        assert store.log_length() == r.state.applied
        root, escrows = r.state.root(), dict(r.state.escrows)
        store.close()
        filler.free()
        again = LedgerStore(fs / "db", g)
        st = again.load_state()
        assert st.root() == root and st.escrows == escrows and st.invariant_problems() == []
        assert audit_store(again) == []
        again.close()


def test_verify_names_an_edited_escrow_record(tmp_path: Path) -> None:
    g = make_genesis()
    store = LedgerStore(tmp_path / "db", g)
    r = Replica(store.load_state(), store)
    for c in escrow_stream(2):
        _apply(store, r, c)
    e = eid(CUSTOMER, (1).to_bytes(32, "big"))
    rec = r.state.escrows[e]
    store.db.put(b"E/" + e, replace(rec, paid=rec.paid - 1).encode())
    problems = audit_store(store)
    assert any(p.startswith(f"escrow {e.hex()}") and "paid" in p for p in problems), problems
    store.close()


def test_the_escrow_lock_survives_a_restart(tmp_path: Path) -> None:
    """A validator votes for a payout, persists its lock, 'crashes'; restarted from its store
    it still refuses the refund of the same escrow state."""
    g = make_genesis()
    vkey = validator_keys()[1]
    store = LedgerStore(tmp_path / "db", g)
    r = Replica(store.load_state(), store)
    _apply(store, r, escrow_stream(1)[0])
    e = eid(CUSTOMER, (0).to_bytes(32, "big"))
    v = Validator(g, vkey, r.state, store.load_locks(), default_registry())
    pay = signed(PROVIDER, payout(PROVIDER, CUSTOMER, e, 1, 1, 0))
    acts = v.receive("c", pay, NOW)
    for a in acts:
        if isinstance(a, PersistLock):
            store.persist_lock(a.order)
    store.close()
    store = LedgerStore(tmp_path / "db", g)
    v = Validator(g, vkey, store.load_state(), store.load_locks(), default_registry())
    acts = v.receive("c", signed(CUSTOMER, refund(CUSTOMER, e, 1, 1)), DEADLINE + 1)
    rej = [a for a in acts if isinstance(a, SendRejection)]
    assert rej and rej[0].rejection.reason is Reason.CONFLICT and "escrow" in rej[0].rejection.message
    store.close()
