"""The contribution ledger's group commit (group_commit.py) over a real LevelDB: credits from
many tasks share fsyncs, each acknowledged only once durable; an acknowledged credit survives
a kill -9 of a real process; a write that fails (a real full tmpfs) reaches its caller, stops
the writer and refuses every later write."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from fognode.protocols.harvest.contribution import ContributionLedger
from fognode.protocols.harvest.contribution_store import ContributionStore, HarvestStorageFailed
from fognode.protocols.harvest.receipts import FL_ROUND

from tests.harvest.test_contribution import ME, NOW, SID, round_receipt
from tests.ledger.fullfs import Filler, small_fs

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import sys, trio
from pathlib import Path
from fognode.protocols.harvest.contribution import ContributionLedger
from fognode.protocols.harvest.contribution_store import ContributionStore
from fognode.protocols.harvest.receipts import FL_ROUND
from tests.harvest.test_contribution import ME, NOW, SID, round_receipt

async def main():
    led = ContributionLedger(ContributionStore(Path(sys.argv[1])), ME, NOW)
    led.start("fl", SID.hex(), NOW)
    led.store.flush()
    async def one(r):
        led.credit(FL_ROUND, round_receipt({ME: 1.0}, round_no=r), NOW + r)
        await led.store.barrier()
        print("acked", r, led.store.writer.syncs, flush=True)
    async with trio.open_nursery() as n:
        await n.start(led.store.writer.run)
        for r in range(1, 100_000):
            n.start_soon(one, r)
            if r % 16 == 0:
                await trio.sleep(0)
trio.run(main)
"""


async def test_credits_from_many_tasks_share_fsyncs_and_wait_until_durable(tmp_path: Path) -> None:
    led = ContributionLedger(ContributionStore(tmp_path / "c"), ME, NOW)
    led.start("fl", SID.hex(), NOW)
    led.store.flush()
    base = led.store.writer.syncs
    durable: list[int] = []
    receipts = {r: round_receipt({ME: 1.0}, round_no=r) for r in range(1, 201)}

    async def one(r: int) -> None:
        led.credit(FL_ROUND, receipts[r], NOW + r)
        submitted.append(r)
        assert r not in durable
        await led.store.barrier()
        durable.append(r)

    submitted: list[int] = []

    async def slow_disk(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The first fsync takes until every credit is submitted (the writer thread waits
        for the write lock, as it would for a slow disk)."""
        with led.store.writer._lock:
            task_status.started()
            while len(submitted) < 200:
                await trio.sleep(0.005)

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            await n.start(led.store.writer.run)
            await n.start(slow_disk)
            async with trio.open_nursery() as credits:
                for r in range(1, 201):
                    credits.start_soon(one, r)
            n.cancel_scope.cancel()
    syncs = led.store.writer.syncs - base
    assert sorted(durable) == list(range(1, 201))
    assert 1 <= syncs <= 3, syncs     # group commit: what arrived during an fsync shares the next
    led.close()
    again = ContributionLedger(ContributionStore(tmp_path / "c"), ME, NOW + 1000)
    try:
        assert again.totals().validated == 200
    finally:
        again.close()


@pytest.mark.slow
def test_an_acknowledged_credit_survives_kill_9(tmp_path: Path) -> None:
    """A child credits receipts from many tasks and prints each once durable; kill -9 while it
    is writing: every acknowledged credit is in the store, written with fewer fsyncs."""
    path = tmp_path / "c"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True)
    acked: set[int] = set()
    syncs = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            _, r, s = line.split()
            acked.add(int(r))
            syncs = max(syncs, int(s))
            if len(acked) >= 300:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL and len(acked) >= 300
    assert syncs < len(acked), (syncs, len(acked))
    led = ContributionLedger(ContributionStore(path), ME, NOW + 10**6)
    try:
        kept = {c.receipt_id for c in led.credits(limit=10**6)}
        want = {_receipt_id(r) for r in acked}
        assert want <= kept
    finally:
        led.close()


def _receipt_id(r: int) -> bytes:
    from fognode.protocols.harvest.receipts import verify_evidence
    return verify_evidence(FL_ROUND, round_receipt({ME: 1.0}, round_no=r), ME).receipt_id


async def test_a_failed_write_reaches_its_caller_and_stops_the_writer() -> None:
    with small_fs("2m") as fs:
        led = ContributionLedger(ContributionStore(fs / "c"), ME, NOW)
        led.start("fl", SID.hex(), NOW)
        led.store.flush()
        filler = Filler(fs)
        filler.fill()
        failure: list[BaseException] = []

        async def writer(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await led.store.writer.run(task_status=task_status)
            except HarvestStorageFailed as e:
                failure.append(e)

        try:
            with trio.fail_after(60):
                async with trio.open_nursery() as n:
                    await n.start(writer)
                    with pytest.raises(HarvestStorageFailed, match="No space left"):
                        for r in range(1, 10_000):     # the log's last page takes a few
                            led.credit(FL_ROUND, round_receipt({ME: 1.0}, round_no=r, sid=SID),
                                       NOW + r)
                            await led.store.barrier()
                    while not failure:
                        await trio.sleep(0.01)
            assert "credit" in str(failure[0]) and str(fs / "c") in str(failure[0])
            with pytest.raises(HarvestStorageFailed, match="No space left"):
                led.credit(FL_ROUND, round_receipt({ME: 1.0}, round_no=99_999), NOW)
            with pytest.raises(HarvestStorageFailed, match="No space left"):
                await led.store.barrier()
        finally:
            filler.free()
            led.store.db.close()
