"""The LevelDB replica: atomic synced commits, restart, kill -9 mid-stream, locks, history."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fognode.ledger.actions import Commit
from fognode.ledger.errors import StoreError
from fognode.ledger.messages import Certificate, ForkProof, decode_certificate
from fognode.ledger.replica import Replica
from fognode.ledger.store import LedgerStore
from fognode.ledger.sync import stored_already, sync_response
from fognode.node.wire import pack, unpack

from .certstream import make_stream, reference_root, stream_genesis
from .helpers import key, make_genesis, pk, transfer

REPO = Path(__file__).resolve().parents[2]


def _apply(store: LedgerStore, r: Replica, certs: list, group: int = 1) -> None:
    pending = []
    for c in certs:
        pending += [a.delta for a in r.receive("t", c) if isinstance(a, Commit)]
        if len(pending) >= group:
            store.commit(pending)
            r.committed()
            pending = []
    store.commit(pending)
    r.committed()


def test_restart_gives_the_same_state(tmp_path: Path) -> None:
    certs = make_stream(300)
    store = LedgerStore(tmp_path / "db", stream_genesis())
    r = Replica(store.load_state(), store)
    _apply(store, r, certs[::-1])      # all out of order: pending pool, then one cascade
    root = r.state.root()
    assert root == reference_root(certs)[0]
    store.close()
    store = LedgerStore(tmp_path / "db", stream_genesis())
    s = store.load_state()
    assert s.root() == root and s.applied == 300 and s.invariant_problems() == []
    assert s.accounts == r.state.accounts
    assert store.log_length() == 300 and len(store.log_after(0, 1000)) == 300
    assert store.log_after(298, 10)[0][0] == 299
    c = certs[17]
    assert store.tx_at(*c.order.key) == c.tx_id
    found = store.certificate(c.tx_id)
    assert found is not None and found[1] == c
    # duplicates after restart are recognised from disk without re-applying
    r2 = Replica(s, store)
    assert r2.receive("t", c) == [] and r2.duplicates == 1


def test_group_commit_is_equivalent(tmp_path: Path) -> None:
    certs = make_stream(200)
    store = LedgerStore(tmp_path / "db", stream_genesis())
    r = Replica(store.load_state(), store)
    _apply(store, r, certs, group=64)
    store.close()
    s = LedgerStore(tmp_path / "db", stream_genesis()).load_state()
    assert s.root() == reference_root(certs)[0] and s.applied == 200


def test_history_index(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "db", make_genesis())
    r = Replica(store.load_state(), store)
    from .helpers import certify, validator_keys
    v = validator_keys()
    a, b, c = key(0), key(1), key(2)
    certs = [certify(transfer(a, pk(b), 10, 0), v[:3]), certify(transfer(b, pk(c), 5, 0), v[:3]),
             certify(transfer(a, pk(c), 7, 1), v[:3])]
    _apply(store, r, certs)
    hist_b = [cert.tx_id for _, cert in store.history(pk(b))]
    assert hist_b == [certs[1].tx_id, certs[0].tx_id]
    assert [i for i, _ in store.history(pk(c))] == [3, 2]
    assert store.history(pk(key(40))) == []


def test_other_chain_is_refused(tmp_path: Path) -> None:
    LedgerStore(tmp_path / "db", make_genesis()).close()
    with pytest.raises(StoreError, match="another genesis"):
        LedgerStore(tmp_path / "db", make_genesis(fee=5))


def test_locks_survive_restart(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "db", make_genesis())
    so = transfer(key(0), pk(key(1)), 10, 0)
    store.persist_lock(so)
    store.close()
    locks = LedgerStore(tmp_path / "db", make_genesis()).load_locks()
    assert locks.get(pk(key(0)), 0) == so and len(locks) == 1


def test_fork_proofs_are_kept_once(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "db", make_genesis())
    p = ForkProof(transfer(key(0), pk(key(1)), 10, 0), transfer(key(0), pk(key(2)), 10, 0))
    assert store.put_fork(p) and not store.put_fork(p)
    assert store.forks() == [p]


@pytest.mark.slow
def test_kill_9_mid_apply_leaves_a_consistent_prefix_then_catches_up(tmp_path: Path) -> None:
    n = 1500
    certs = make_stream(n)
    db = tmp_path / "db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.ledger.crash_child", str(db), str(n)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:          # kill it while it is writing, not before, not after
        if line.strip() == "done":
            break
        seen = int(line)
        if seen >= 400:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL and 400 <= seen < n
    store = LedgerStore(db, stream_genesis())
    s = store.load_state()
    assert s.invariant_problems() == []
    assert seen <= s.applied < n
    root, ref = reference_root(certs[:s.applied])
    assert s.root() == root and s.accounts == ref.accounts
    assert store.log_length() == s.applied
    # catch up: feed the whole stream again (duplicates skipped), reach the others' root
    before = s.applied
    r = Replica(s, store)
    _apply(store, r, certs)
    assert r.state.root() == reference_root(certs)[0] and r.state.applied == n
    assert r.duplicates == before


def test_the_sync_response_is_built_from_the_stored_encodings(tmp_path: Path) -> None:
    """sync.py's response, built around the certificates' stored bytes, equals pack() of the
    map of decoded certificates it replaced, with and without committee certificates."""
    certs = make_stream(40)
    store = LedgerStore(tmp_path / "db", stream_genesis())
    r = Replica(store.load_state(), store)
    _apply(store, r, certs[:30], group=8)
    for after, limit in ((0, 1000), (5, 10), (30, 10)):
        items = store.log_after(after, limit)
        assert [p for p, _ in items] == list(range(after + 1, min(30, after + limit) + 1))
        wire = [[p, unpack(c)] for p, c in items]
        assert [decode_certificate(c) for _, c in wire] == certs[after:after + len(items)]
        for committees in (None, [], [{"v": 1, "epoch": 3, "sigs": [b"\x01" * 64]}]):
            resp: dict[str, Any] = {"v": 1, "certs": wire, "end": 30}
            if committees is not None:
                resp["committees"] = committees
            assert sync_response(items, store.log_length(), committees) == pack(resp)


def test_a_pulled_certificate_is_skipped_only_if_it_is_the_stored_one(tmp_path: Path) -> None:
    """sync.py `stored_already`: true only for the very bytes this replica stored for that
    (sender, sequence); another certificate for the sequence, one not applied here and
    malformed input are decoded and checked as before (False)."""
    certs = make_stream(20)
    store = LedgerStore(tmp_path / "db", stream_genesis())
    r = Replica(store.load_state(), store)
    _apply(store, r, certs[:10])
    for _, c in store.log_after(0, 100):
        assert stored_already(store, unpack(c))
    assert not any(stored_already(store, unpack(c.encoded())) for c in certs[10:])
    fewer = Certificate(certs[3].order, certs[3].votes[:-1])      # same order, one vote less
    assert not stored_already(store, unpack(fewer.encoded()))
    r3 = unpack(certs[3].encoded())
    r3["extra"] = 1
    assert not stored_already(store, r3)
    r3 = unpack(certs[3].encoded())
    r3["order"]["order"]["sequence"] = -1
    assert not stored_already(store, r3)
    for bad in (None, 7, "x", [], {"order": 1}, {"order": {"order": []}}, {"order": {"order": {"sender": 1}}},
                {"order": {"order": {"sender": b"\x01" * 32, "sequence": 2**64}}}):
        assert not stored_already(store, bad)
