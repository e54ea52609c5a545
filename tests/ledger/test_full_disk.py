"""A full disk never rolls back confirmed transfers (issue 10, item 1).

Every test here runs against a real filesystem that really fills up: a small tmpfs the test
mounts (tests/ledger/fullfs.py; skipped with the reason where mounting is not permitted) and a
filler file taking its last free page. Covered: the store's failed writes, the state's undo
journal, `ledger.verify`'s replay of the stored history against a corrupted store, the wallet
keystore, an in-process replica and an in-process validator whose ledger sits on the full
filesystem, and a real `fognode run` daemon that refuses with the reason, exits non-zero, and
after space is freed restarts with exactly the confirmed transfers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import plyvel
import pytest
import trio

from fognode.ledger.actions import Commit
from fognode.ledger.address import encode_address
from fognode.ledger.amounts import MICRO
from fognode.ledger.audit import audit_store
from fognode.ledger.errors import (LEDGER_INVARIANT_BROKEN, LEDGER_STORAGE_FAILED, LedgerStorageFailed, Reason,
                                   WalletError)
from fognode.ledger.genesis import DEV_STAKE
from fognode.ledger.messages import BondOrder, Rejection, SignedOrder, TransferOrder, Vote
from fognode.ledger.replica import MemoryHistory, Replica
from fognode.ledger.submit import NotCertified
from fognode.ledger.state import LedgerState
from fognode.ledger.store import LedgerStore
from fognode.ledger.wallet import Keystore
from fognode.node.errors import FatalStorageError, RpcError

from .certstream import make_stream, stream_genesis
from .cluster import ledger_cluster, wait_until
from .fullfs import Filler, small_fs
from .helpers import CHAIN, certify, key, pk, validator_keys
from .storage_checks import apply_committed

DISK_FULL = "No space left on device"


@pytest.fixture(autouse=True)
def dev_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOGNODE_PASSPHRASE", "")


def _snapshot(s: LedgerState) -> tuple[Any, ...]:
    return (dict(s.accounts), s.supply, dict(s.minted_by_epoch), set(s.used_receipts), s.applied,
            {e: dict(d) for e, d in s.stake_deltas.items()}, s.accumulator, s.root())


def _commit_all(store: LedgerStore, r: Replica, certs: list[Any]) -> None:
    for c in certs:
        deltas = [a.delta for a in r.receive("t", c) if isinstance(a, Commit)]
        store.commit(deltas)
        r.committed()


# -- the state's undo journal (what the service rolls back after a failed write) ------------------

def test_rollback_restores_the_exact_state() -> None:
    certs = make_stream(120)
    r = Replica(LedgerState(stream_genesis()), MemoryHistory())
    for c in certs[:40]:
        r.receive("t", c)
    before = _snapshot(r.state)
    r.state.begin()
    # out of order: a pending pool, then one cascade; plus a bond (stake per epoch)
    for c in certs[40:][::-1]:
        r.receive("t", c)
    vals = validator_keys()
    bond = SignedOrder.sign(key(0), BondOrder(chain=CHAIN, epoch=0, sender=pk(key(0)),
                                              sequence=r.state.account(pk(key(0))).next_sequence,
                                              fee=1000, amount=5 * MICRO))
    r.receive("t", certify(bond, vals[:3]))
    assert r.state.applied == 121 and r.state.stake_deltas
    r.state.rollback()
    r.rolled_back()
    assert _snapshot(r.state) == before
    assert r.state.invariant_problems() == []


# -- the store on a disk that fills up -----------------------------------------------------------

def test_store_write_on_a_full_disk_fails_loudly_once_and_changes_nothing() -> None:
    certs = make_stream(200)
    failures: list[LedgerStorageFailed] = []
    with small_fs("2m") as fs:
        filler = Filler(fs)
        store = LedgerStore(fs / "db", stream_genesis(), on_failure=failures.append)
        r = Replica(store.load_state(), store)
        _commit_all(store, r, certs[:20])
        filler.fill()
        committed = 20
        with pytest.raises(LedgerStorageFailed) as e:
            for c in certs[20:]:                   # the log file's last page takes a few more
                apply_committed(store, r, c)
                committed += 1
        msg = str(e.value)
        assert DISK_FULL in msg and str(fs / "db") in msg and "the disk is full" in msg
        assert isinstance(e.value, FatalStorageError) and e.value.path == str(fs / "db")
        assert len(failures) == 1 and store.failure is not None
        # sticky: later writes fail at once, whatever they are, and say the same
        so = SignedOrder.sign(key(0), TransferOrder(chain=CHAIN, epoch=0, sender=pk(key(0)), sequence=99,
                                                    fee=1000, recipient=pk(key(1)), amount=1))
        with pytest.raises(LedgerStorageFailed, match=DISK_FULL):
            store.persist_lock(so)
        assert len(failures) == 1 and store.load_locks().get(*so.key) is None
        # memory (rolled back) is the disk
        assert store.log_length() == committed == r.state.applied
        assert store.load_state().root() == r.state.root()
        root = r.state.root()
        store.close()
        filler.free()
        again = LedgerStore(fs / "db", stream_genesis())
        assert again.load_state().root() == root and again.log_length() == committed
        assert audit_store(again) == []
        again.close()


def test_opening_a_store_on_a_full_disk_is_a_storage_failure() -> None:
    with small_fs("1m") as fs:
        filler = Filler(fs)
        filler.fill()
        with pytest.raises(LedgerStorageFailed, match=DISK_FULL):
            LedgerStore(fs / "db", stream_genesis())
        filler.free()


# -- ledger verify: the stored state against a replay of the stored history ------------------------

def _store_with_history(path: Path, n: int = 40) -> tuple[LedgerStore, list[Any]]:
    certs = make_stream(n)
    store = LedgerStore(path, stream_genesis())
    _commit_all(store, Replica(store.load_state(), store), certs)
    return store, certs


def test_verify_replays_a_healthy_store_clean(tmp_path: Path) -> None:
    store, _ = _store_with_history(tmp_path / "db")
    assert audit_store(store) == []


def test_verify_reports_an_edited_account(tmp_path: Path) -> None:
    store, certs = _store_with_history(tmp_path / "db")
    who = certs[0].order.order.sender
    a = store.load_state().account(who)
    from dataclasses import replace
    store.db.put(b"a/" + who, replace(a, balance=a.balance + 5).encode(), sync=True)
    problems = audit_store(store)
    assert any(p.startswith(f"account {encode_address(who)}: the store holds balance {a.balance + 5}")
               and f"the history gives balance {a.balance}," in p for p in problems), problems


def test_verify_reports_a_deleted_certificate_and_log_gap(tmp_path: Path) -> None:
    store, certs = _store_with_history(tmp_path / "db")
    gone = certs[10]
    pos = store.certificate(gone.tx_id)[0]
    store.db.delete(b"t/" + gone.tx_id, sync=True)
    problems = audit_store(store)
    assert f"apply log position {pos}: the certificate of tx {gone.tx_id.hex()} is missing (t/ record)" in problems
    # the sender's later certificates no longer apply on the replay, and the state disagrees
    assert any("does not apply on the replayed state (sequence)" in p for p in problems)
    assert any(p.startswith("state root: the store holds") for p in problems)

    store2, _ = _store_with_history(tmp_path / "db2")
    store2.db.delete(b"o/" + (7).to_bytes(8, "big"), sync=True)
    problems = audit_store(store2)
    assert "apply log: positions 7..7 are missing (o/ records)" in problems
    assert "apply count: the store holds 40; the apply log has 39 entries" in problems


# -- the wallet keystore ------------------------------------------------------------------------

def test_wallet_write_on_a_full_disk_raises_and_keeps_the_old_files() -> None:
    with small_fs("1m") as fs:
        ks = Keystore(fs)
        first = ks.create("pw", "default")
        second = ks.create("pw", "other")
        default_text = (ks.dir / "default").read_text()
        filler = Filler(fs)
        filler.fill()
        with pytest.raises(WalletError) as e:
            ks.create("pw", "third")
        assert DISK_FULL in str(e.value) and str(ks.dir) in str(e.value) and "the disk is full" in str(e.value)
        with pytest.raises(WalletError, match=DISK_FULL):
            ks.set_default(second)
        # nothing half-written is left, the old files are whole and usable
        assert sorted(p.name for p in ks.dir.iterdir()) == sorted(
            ["default", f"{encode_address(first)}.json", f"{encode_address(second)}.json"])
        assert (ks.dir / "default").read_text() == default_text and ks.default() == first
        assert [w.pubkey for w in Keystore(fs).list()] == sorted([first, second], key=encode_address)
        assert bytes(Keystore(fs).unlock(first, "pw").verify_key) == first
        filler.free()
        ks.set_default(second)
        assert ks.default() == second


# -- an in-process replica and validator whose ledger is on the full filesystem ------------------

def _validators_only(n: int) -> dict[str, Any]:
    """A genesis override: only the first n cluster nodes are validators (cluster identities)."""
    from nacl.signing import SigningKey
    return {"validators": [{"address": encode_address(bytes(SigningKey(bytes([200 + i]) * 32).verify_key)),
                            "stake": DEV_STAKE} for i in range(n)]}


def _disk_state(datadir: Path, genesis: Any) -> LedgerStore:
    return LedgerStore(datadir / "ledger" / "db", genesis)


async def test_replica_on_a_full_disk_stops_with_memory_equal_to_disk(tmp_path: Path) -> None:
    """Node 1 (a replica, not a validator) keeps its ledger on a small filesystem that fills
    up while node 0 keeps certifying: its first failed write stops its ledger with memory
    equal to disk; after space is freed and it restarts, it holds every certificate."""
    with small_fs("2m") as fs:
        (fs / "ledger").mkdir(mode=0o700)
        async with ledger_cluster(tmp_path, 2, ledger_overrides=_validators_only(1), sync_interval=3600.0,
                                  ledger_dirs={1: fs / "ledger"}) as c:
            n0, n1 = c.nodes
            await wait_until(lambda: len(n0.svc.connected_peers()) >= 1)
            final = []
            for amount in (1, 2):
                final.append(await n0.svc.submitter.pay(n1.wallet, amount * MICRO, timeout=10))
            await wait_until(lambda: n1.svc.state.applied == 2)
            svc1 = n1.svc
            filler = Filler(fs)
            filler.fill()
            for amount in range(3, 40):            # the log file's last page takes a few more
                final.append(await n0.svc.submitter.pay(n1.wallet, amount * MICRO, memo="x" * 200, timeout=10))
                want = len(final)
                await wait_until(lambda: svc1.failure is not None or svc1.state.applied == want)
                if svc1.failure is not None:
                    break
            assert svc1.failure is not None, "the filesystem never filled up"
            assert DISK_FULL in str(svc1.failure) and str(n1.datadir / "ledger" / "db") in str(svc1.failure)
            with trio.fail_after(10):
                await n1.stopped.wait()
            assert isinstance(n1.failure, LedgerStorageFailed)
            # what was in memory when the ledger stopped is what is on disk (LevelDB's recovery at
            # open writes a table file: free the space first; the files are what they were)
            filler.free()
            disk = _disk_state(n1.datadir, svc1.genesis)
            on_disk = disk.load_state()
            assert (on_disk.applied, on_disk.root()) == (svc1.state.applied, svc1.state.root())
            assert on_disk.applied < len(final)
            disk.close()
            # refused while stopped: no order, no sync serving (the service says why)
            with pytest.raises(LedgerStorageFailed, match=DISK_FULL):
                svc1.check_usable()

            await c.start(1)
            await wait_until(lambda: n1.svc.state.applied == len(final), timeout=30)
            assert n1.svc.state.root() == n0.svc.state.root()
            assert {c_.tx_id for _, c_ in n1.svc.store.history(n1.wallet, 100)} == {c_.tx_id for c_ in final}
            assert audit_store(n1.svc.store) == []


@pytest.mark.slow
async def test_validator_lock_not_stored_means_no_vote(tmp_path: Path) -> None:
    """Both nodes are validators (a quorum needs both); node 1's ledger is on a filesystem
    that fills up. A lock it cannot write produces no vote, now or on a retry; every vote it
    gave has its lock on disk, so after a restart it refuses a conflicting order for each."""
    with small_fs("2m") as fs:
        (fs / "ledger").mkdir(mode=0o700)
        async with ledger_cluster(tmp_path, 2, sync_interval=3600.0, ledger_dirs={1: fs / "ledger"}) as c:
            n0, n1 = c.nodes
            await wait_until(lambda: len(n0.svc.connected_peers()) >= 1)
            me1 = bytes(n1.identity.verify_key)
            final = [await n0.svc.submitter.pay(n1.wallet, MICRO, timeout=10)]
            svc1 = n1.svc
            filler = Filler(fs)
            filler.fill()
            stuck = None
            for amount in range(2, 40):
                try:
                    final.append(await n0.svc.submitter.pay(n1.wallet, amount * MICRO, memo="y" * 200, timeout=4))
                except NotCertified as e:
                    stuck = e
                    break
            assert stuck is not None and svc1.failure is not None and DISK_FULL in str(svc1.failure)
            with trio.fail_after(10):
                await n1.stopped.wait()
            voted = [cert for cert in final if any(v == me1 for v, _ in cert.votes)]
            assert len(voted) == len(final)        # a quorum needs node 1
            filler.free()        # LevelDB's recovery at open writes; the files are what they were
            disk = _disk_state(n1.datadir, svc1.genesis)
            locks = disk.load_locks()
            assert {k: so.tx_id for k, so in svc1.locks.locks.items()} == \
                   {k: so.tx_id for k, so in locks.locks.items()}     # memory == disk
            for cert in voted:
                assert locks.get(*cert.order.key) == cert.order
            disk.close()

            await c.start(1)
            wallet0 = Keystore(n0.datadir).unlock(n0.wallet, "")
            for cert in voted:
                o = cert.order.order
                assert isinstance(o, TransferOrder)
                other = SignedOrder.sign(wallet0, TransferOrder(
                    chain=o.chain, epoch=o.epoch, sender=o.sender, sequence=o.sequence, fee=o.fee,
                    recipient=o.recipient, amount=o.amount + 1, memo="conflict"))
                replies = n1.svc.validate(n0.svc.ctx.peer_id, other)
                assert not any(isinstance(r, Vote) for r in replies), f"node 1 signed twice for {o.sequence}"
                assert any(isinstance(r, Rejection) and r.reason is Reason.CONFLICT for r in replies)
            # the order that was stuck completes now (the next send drives it first)
            await wait_until(lambda: len(n0.svc.connected_peers()) >= 1)
            final.append(await n0.svc.submitter.pay(n1.wallet, MICRO, timeout=20))
            assert final[-1].order.order.sequence == len(final)
            assert n0.svc.state.applied == len(final) + 1      # + the order that was stuck
            await wait_until(lambda: n1.svc.state.applied == n0.svc.state.applied, timeout=30)
            assert n1.svc.state.root() == n0.svc.state.root()


# -- the supervisor: a storage failure is fatal, never restarted -------------------------------------

async def test_supervisor_does_not_restart_a_ledger_whose_disk_is_full(autojump_clock: Any) -> None:
    """The real ledger role, its data dir on a full filesystem: its store cannot open; the
    supervisor shows it unhealthy with the reason, asks the daemon to stop, and never
    restarts it (a restart would only loop on the same disk)."""
    from nacl.signing import SigningKey
    from prometheus_client import CollectorRegistry

    from fognode.ledger.genesis import DEV_FUNDING, dev_genesis
    from fognode.ledger.protocol import LedgerConfig, LedgerRole
    from fognode.node.events import EventBus
    from fognode.node.role import NodeContext
    from fognode.node.roles import Supervisor
    from fognode.node.rpc.methods import MethodTable

    ident = SigningKey(bytes([9]) * 32)
    me = bytes(ident.verify_key)
    genesis = {"chain_id": "fog-test", "ledger": dev_genesis("fog-test", [(me, DEV_STAKE)], {me: DEV_FUNDING})}
    fatal: list[tuple[str, FatalStorageError]] = []
    with small_fs("1m") as fs:
        Filler(fs).fill()
        reg = CollectorRegistry()
        # the ledger fails before it touches the overlay (its store does not open)
        ctx = NodeContext(peer_id="p", identity=ident, overlay=None,
                          events=EventBus(reg), metrics=reg, datadir=fs, genesis=genesis)
        table = MethodTable()
        sup = Supervisor(ctx, table, backoff_initial=0.01, on_fatal=lambda role, e: fatal.append((role, e)))
        async with trio.open_nursery() as n:
            with trio.fail_after(10):
                await sup.start(n, LedgerRole, LedgerConfig())
            h = sup.health()["ledger"]
            assert h["health"] == "unhealthy" and h["restarts"] == 0
            assert h["detail"].startswith("storage failed, not restarted: the ledger store at") and DISK_FULL in h["detail"]
            assert [r for r, _ in fatal] == ["ledger"] and DISK_FULL in str(fatal[0][1])
            # its methods still answer, with the reason
            spec = table.get("ledger.info")
            assert spec is not None
            with pytest.raises(RpcError) as e:
                await spec.handler()
            assert e.value.code == LEDGER_STORAGE_FAILED and DISK_FULL in e.value.message
            await trio.sleep(600)          # virtual time (autojump clock): ten backoffs at most would pass
            assert sup.health()["ledger"]["restarts"] == 0 and len(fatal) == 1
            await sup.stop_all(1.0)
            n.cancel_scope.cancel()


# -- a real `fognode run` daemon ----------------------------------------------------------------

@pytest.mark.slow
def test_daemon_on_a_full_disk_refuses_exits_non_zero_and_restarts_with_every_confirmed_transfer(
        node_factory: Any) -> None:
    """One-node devnet (its own committee) whose ledger db lives on a 2 MiB tmpfs: sends
    before the disk fills are final; once it is full a send is refused with error 211 naming
    the db path and "No space left on device", the daemon shuts down cleanly with exit status
    2 and the reason on stderr; after freeing space and restarting, the history is exactly the
    sends that were reported final, the state root is the one before the failure, and
    `ledger verify` passes."""
    with small_fs("2m") as fs:
        net = node_factory(1, start=False)
        node = net.nodes[0]
        (fs / "ledger").mkdir(mode=0o700)
        (node.datadir / "ledger").symlink_to(fs / "ledger", target_is_directory=True)
        try:
            net.start(0, timeout=60)
            to = encode_address(pk(key(7)))
            final = [node.rpc("wallet.send", [to, str(i)], timeout=40)["tx"] for i in (1, 2)]
            root = node.rpc("ledger.state_root")
            filler = Filler(fs)
            filler.fill()
            refused: RpcError | None = None
            for i in range(3, 40):            # the log file's last page takes a few more
                try:
                    final.append(node.rpc("wallet.send", [to, str(i), "z" * 200], timeout=40)["tx"])
                    root = node.rpc("ledger.state_root")
                except RpcError as e:
                    refused = e
                    break
            assert refused is not None, "the filesystem never filled up"
            assert refused.code == LEDGER_STORAGE_FAILED, refused
            assert DISK_FULL in refused.message and str(node.datadir / "ledger" / "db") in refused.message
            assert node.proc is not None
            rc = node.proc.wait(timeout=30)
            assert rc == 2, f"daemon exited with {rc}:\n{net.log_tail(0)}"
            log = node.log_path.read_text(errors="replace")
            assert "LEDGER STOPPED" in log and "fognode: error: the ledger store at" in log and DISK_FULL in log
            node.proc = None

            filler.free()
            net.start(0, timeout=60)
            history = node.rpc("wallet.history", {"limit": 100, "verbose": True})
            assert sorted(h["tx"] for h in history if h["status"] == "final") == sorted(final)
            assert node.rpc("ledger.state_root") == root
            verdict = node.rpc("ledger.verify")
            assert verdict["ok"] and verdict["problems"] == []
            # and it works again
            assert node.rpc("wallet.send", [to, "1"], timeout=40)["status"] == "final"

            # a store that disagrees with its history: `ledger verify` names the record
            assert net.stop(0) == 0
            db = plyvel.DB(str(node.datadir / "ledger" / "db"))
            gone = bytes.fromhex(final[1])
            db.delete(b"t/" + gone, sync=True)
            db.close()
            net.start(0, timeout=60)
            with pytest.raises(RpcError) as e:
                node.rpc("ledger.verify")
            assert e.value.code == LEDGER_INVARIANT_BROKEN
            assert f"apply log position 2: the certificate of tx {final[1]} is missing (t/ record)" in \
                e.value.data["problems"]
        finally:
            net.stop_all()
