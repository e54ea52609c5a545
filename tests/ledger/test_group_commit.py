"""Group commit (ledger/writer.py) on real ledgers: many applies and locks share one fsync, the
next certificate is checked while a group is being written, and memory never runs ahead of
disk: the state every reader sees (balances, sequence, apply count, metrics, waiters) changes
only once the group is durable, and no vote leaves before its lock is on disk. A group whose
write fails never reaches that state and takes its locks out of the table."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from fognode.ledger.address import encode_address
from fognode.ledger.amounts import MICRO
from fognode.ledger.audit import audit_store
from fognode.ledger.errors import LedgerStorageFailed
from fognode.ledger.genesis import DEV_STAKE
from fognode.ledger.messages import Certificate, SignedOrder, TransferOrder
from fognode.ledger.store import LedgerStore
from fognode.ledger.wallet import Keystore

from .certstream import make_stream, reference_root, stream_genesis
from .cluster import LNode, ledger_cluster, wait_until
from .fullfs import Filler, small_fs
from .helpers import certify

REPO = Path(__file__).resolve().parents[2]
DISK_FULL = "No space left on device"
RECIPIENT = bytes([9]) * 32


@pytest.fixture(autouse=True)
def dev_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOGNODE_PASSPHRASE", "")


def _metric(node: LNode, name: str) -> float:
    assert node.ctx is not None
    return node.ctx.metrics.get_sample_value(name) or 0.0


def _applied_metric(node: LNode) -> float:
    return _metric(node, "fognode_ledger_certificates_applied_total")


def _certs(node: LNode, n: int) -> list[Certificate]:
    """n transfers from node's wallet (sequences 0..n-1), certified by node's validator
    identity (a 1-node cluster is its own committee)."""
    wallet = Keystore(node.datadir).unlock(node.wallet, "")
    g = node.svc.genesis
    return [certify(SignedOrder.sign(wallet, TransferOrder(
        chain=g.chain_id, epoch=0, sender=node.wallet, sequence=s, fee=g.fee,
        recipient=RECIPIENT, amount=1 + s, memo="")), [node.identity]) for s in range(n)]


async def test_applies_share_fsyncs_and_nothing_is_seen_before_it_is_durable(tmp_path: Path) -> None:
    """30 certificates of one sender, applied one after the other from 30 tasks while the disk
    is stalled: each is checked against the one before (in the staging state), none shows in
    the state readers see, in the store, the metrics or to waiters; released, they reach the
    disk in at most 2 synced writes, not 30, and the state equals the disk."""
    async with ledger_cluster(tmp_path, 1) as c:
        n0 = c.nodes[0]
        svc = n0.svc
        certs = _certs(n0, 30)
        syncs0, log0, metric0 = svc.writer.syncs, svc.store.log_length(), _applied_metric(n0)
        balance0, root0 = svc.balance(RECIPIENT), svc.state.root()
        acked: list[int] = []
        turn = [trio.Event() for _ in range(len(certs) + 1)]
        turn[0].set()

        async def apply(i: int) -> None:
            await turn[i].wait()
            deltas, queued = svc.ingest("test", [certs[i]])
            assert len(deltas) == 1 and not queued       # the previous one applied (ahead of disk)
            turn[i + 1].set()
            await svc.flushed()
            acked.append(i)

        async with trio.open_nursery() as nursery:
            async with svc.writer.quiesced():            # the disk is stalled: no group is written
                for i in range(len(certs)):
                    nursery.start_soon(apply, i)
                await wait_until(lambda: turn[-1].is_set())
                assert svc.work.applied == log0 + 30     # applied ahead of the disk...
                with trio.move_on_after(0.5):
                    await wait_until(lambda: bool(acked))
                assert acked == [] and svc.store.log_length() == log0      # ...nothing durable, nothing acked
                assert (svc.state.applied, svc.state.root(), svc.balance(RECIPIENT)) == (log0, root0, balance0)
                assert svc.state.account(n0.wallet).next_sequence == 0
                assert _applied_metric(n0) == metric0
                assert not await svc.wait_applied(certs[0].tx_id, 0.05)
                assert svc.ingest("test", [certs[5]]) == ([], False)    # in flight: a duplicate
        assert sorted(acked) == list(range(30))
        assert svc.state.applied == svc.store.log_length() == log0 + 30
        assert svc.store.load_state().root() == svc.state.root() == svc.work.root()
        assert svc.balance(RECIPIENT) == balance0 + sum(1 + s for s in range(30))
        assert _applied_metric(n0) == metric0 + 30
        assert 1 <= svc.writer.syncs - syncs0 <= 2, svc.writer.syncs - syncs0
        assert _metric(n0, "fognode_ledger_store_syncs_total") == svc.writer.syncs
        assert await svc.wait_applied(certs[-1].tx_id, 1.0)
        assert audit_store(svc.store) == []


async def test_a_send_writes_its_lock_with_its_in_flight_record(tmp_path: Path) -> None:
    """On the sending node of a committee of 4: the in-flight record with this node's lock, the
    certificate, the record's clearing: three synced writes (four when the lock had its own)."""
    with trio.fail_after(60):
        async with ledger_cluster(tmp_path, 4, sync_interval=3600.0) as c:
            n0 = c.nodes[0]
            svc = n0.svc
            await wait_until(lambda: all(len(n.ctx.overlay.peers()) == 3 for n in c.nodes))
            await wait_until(lambda: not any(svc.sync.is_syncing(p.peer_id) for p in n0.ctx.overlay.peers()))
            await svc.flushed()
            syncs0 = svc.writer.syncs
            res = await n0.role.wallet_send(encode_address(RECIPIENT), "1")
            assert res["status"] == "final"
            await svc.flushed()
            assert svc.writer.syncs - syncs0 == 3, svc.writer.syncs - syncs0
            assert svc.store.inflight(n0.wallet) is None


async def test_no_vote_leaves_before_its_lock_is_durable(tmp_path: Path) -> None:
    """Two validators (a quorum needs both). Node 1's disk is stalled: it takes the lock in
    memory but sends no vote, so node 0's send cannot complete; the vote leaves only once the
    lock is on disk, and node 1's balance changes only once the certificate is."""
    with trio.fail_after(60):
        async with ledger_cluster(tmp_path, 2, sync_interval=3600.0, request_timeout=10.0) as c:
            n0, n1 = c.nodes
            await wait_until(lambda: len(n0.svc.connected_peers()) >= 1)
            svc1 = n1.svc
            balance1 = svc1.balance(n1.wallet)
            result: list[Any] = []
            released = trio.Event()
            finished_after_release: list[bool] = []

            async def send() -> None:
                result.append(await n0.svc.submitter.pay(n1.wallet, MICRO, timeout=30))
                finished_after_release.append(released.is_set())

            async with trio.open_nursery() as nursery:
                async with svc1.writer.quiesced():
                    nursery.start_soon(send)
                    await wait_until(lambda: len(svc1.locks) == 1)         # locked in memory...
                    order = next(iter(svc1.locks.locks.values()))
                    assert len(svc1.store.load_locks()) == 0               # ...not on disk
                    with trio.move_on_after(1.5):
                        await wait_until(lambda: bool(result))
                    assert result == []                                     # so no vote left
                    released.set()
                # the writer is free: the lock is written, then the vote leaves
            assert finished_after_release == [True]
            assert result[0].order == order
            assert svc1.store.load_locks().get(*order.key) == order
            assert any(v == bytes(n1.identity.verify_key) for v, _ in result[0].votes)
            await wait_until(lambda: svc1.balance(n1.wallet) == balance1 + MICRO)
            assert svc1.store.certificate(result[0].tx_id) is not None


@pytest.mark.slow
async def test_a_failed_group_never_reaches_the_state_and_stops_the_ledger(tmp_path: Path) -> None:
    """Node 1 (a replica) keeps its ledger on a small filesystem. Its disk is stalled while
    node 0 certifies a burst; node 1 applies them ahead of the disk only (its readers see
    nothing), the filesystem fills, the disk resumes: the group write fails, none of its
    certificates ever shows (memory equals disk), none was reported, and the ledger stops."""
    validators = {"validators": [{"address": encode_address(bytes(SigningKey(bytes([200]) * 32).verify_key)),
                                  "stake": DEV_STAKE}]}
    with small_fs("2m") as fs:
        (fs / "ledger").mkdir(mode=0o700)
        async with ledger_cluster(tmp_path, 2, ledger_overrides=validators, sync_interval=3600.0,
                                  ledger_dirs={1: fs / "ledger"}) as c:
            n0, n1 = c.nodes
            await wait_until(lambda: len(n0.svc.connected_peers()) >= 1)
            await n0.svc.submitter.pay(n1.wallet, MICRO, timeout=10)
            svc1 = n1.svc
            await wait_until(lambda: svc1.state.applied == 1 and svc1.writer.latest() is None)
            filler = Filler(fs)
            filler.fill()
            for _round in range(6):        # the log file's last page takes a burst or two
                base = svc1.state.applied
                metric = _applied_metric(n1)
                async with svc1.writer.quiesced():
                    for k in range(8):
                        await n0.svc.submitter.pay(n1.wallet, (2 + k) * MICRO, memo="z" * 200, timeout=10)
                    await wait_until(lambda: svc1.work.applied == base + 8)    # ahead of the disk only
                    assert svc1.state.applied == svc1.store.log_length() == base
                    assert _applied_metric(n1) == metric
                await wait_until(lambda: svc1.failure is not None or svc1.writer.latest() is None)
                if svc1.failure is not None:
                    break
            assert svc1.failure is not None, "the filesystem never filled up"
            assert DISK_FULL in str(svc1.failure) and "certificates" in str(svc1.failure)
            # the group written before the stall may have made it; nothing of the failed one did
            assert base <= svc1.state.applied < base + 8
            assert _applied_metric(n1) == metric + (svc1.state.applied - base)
            with pytest.raises(LedgerStorageFailed, match=DISK_FULL):
                svc1.ingest("test", [])
            with trio.fail_after(10):
                await n1.stopped.wait()
            assert isinstance(n1.failure, LedgerStorageFailed)
            filler.free()
            disk = LedgerStore(n1.datadir / "ledger" / "db", svc1.genesis)
            on_disk = disk.load_state()
            assert (on_disk.applied, on_disk.root()) == (svc1.state.applied, svc1.state.root())
            assert audit_store(disk) == []
            disk.close()


@pytest.mark.slow
def test_kill_9_mid_group_commit_burst_keeps_everything_acknowledged(tmp_path: Path) -> None:
    """A child applies a certificate stream from 16 tasks through the group-commit writer and
    prints each certificate once its group is durable; kill -9 mid-burst: the store holds a
    consistent prefix of the stream that covers every acknowledged certificate, written with
    far fewer fsyncs than certificates."""
    n = 1500
    certs = make_stream(n)
    db = tmp_path / "db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.ledger.crash_child", str(db), str(n), "--group"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked, syncs = 0, 0
    for line in proc.stdout:          # kill it while it is writing, not before, not after
        if line.startswith("done"):
            break
        count, syncs = (int(x) for x in line.split())
        acked = max(acked, count)
        if acked >= 400:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL and 400 <= acked < n
    assert syncs < acked / 2, (syncs, acked)        # group commit: many certificates per fsync
    store = LedgerStore(db, stream_genesis())
    s = store.load_state()
    assert s.invariant_problems() == []
    assert acked <= s.applied < n
    root, ref = reference_root(certs[:s.applied])
    assert s.root() == root and s.accounts == ref.accounts
    assert store.log_length() == s.applied
    assert audit_store(store) == []
    store.close()
