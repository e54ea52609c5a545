"""Adopted workers against a real CPU-bound child process: SIGSTOP when work is suspended (its
CPU time stops growing), SIGCONT on resume and when handed back; a worker that appears while
suspended is stopped; the service meters it into its harvest session and emits the seed's
events; a process restarted under the same worker is counted from zero and added."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import trio

from fognode.node.events import EventBus
from fognode.protocols.harvest.contribution import ContributionLedger, SessionState
from fognode.protocols.harvest.contribution_store import ContributionStore
from fognode.protocols.harvest.events import HarvestContribution, HarvestSessionStarted
from fognode.protocols.harvest.executor import Executor
from fognode.protocols.harvest.meter import Sample
from fognode.protocols.harvest.metrics import HarvestMetrics
from fognode.protocols.harvest.policy import HarvestPolicy
from fognode.protocols.harvest.policy_core import PolicyCore
from fognode.protocols.harvest.service import HarvestService
from fognode.protocols.harvest.workers import AdoptedWorkers
from prometheus_client import CollectorRegistry

from tests.polling import wait_until

BUSY = "import time\nwhile True:\n    sum(range(10000))\n"


def cpu(p: subprocess.Popen[bytes]) -> float:
    t = psutil.Process(p.pid).cpu_times()
    return t.user + t.system


@pytest.fixture
def busy():
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, "-c", BUSY])
        procs.append(p)
        return p
    yield start
    for p in procs:
        p.kill()
        p.wait()


async def grows(p: subprocess.Popen[bytes], by: float = 0.05, within: float = 30.0) -> bool:
    start = cpu(p)
    with trio.move_on_after(within):
        while cpu(p) - start < by:
            await trio.sleep(0.05)
        return True
    return False


def status(p: subprocess.Popen[bytes]) -> str:
    return psutil.Process(p.pid).status()


async def test_suspend_stops_and_resume_continues_a_real_child(busy) -> None:
    p = busy()
    w = AdoptedWorkers()
    a = w.adopt(b"s" * 16, "busy", lambda: p.pid, trio.current_time())
    assert await grows(p)
    w.suspend(trio.current_time())
    await wait_until(lambda: status(p) == psutil.STATUS_STOPPED, 10, "the child to stop")
    frozen = cpu(p)
    await trio.sleep(0.5)          # a measurement window, not a wait: no CPU time in it
    assert cpu(p) == frozen
    w.resume(trio.current_time())
    assert await grows(p)
    # stopped again, then handed back: the worker is continued
    w.suspend(trio.current_time())
    await wait_until(lambda: status(p) == psutil.STATUS_STOPPED, 10, "the child to stop")
    sid, usage = w.release(a.handle, trio.current_time())  # type: ignore[misc]
    assert sid == b"s" * 16 and usage.suspended_s > 0
    assert await grows(p)
    assert len(w) == 0


async def test_a_worker_that_starts_while_suspended_is_stopped(busy) -> None:
    w = AdoptedWorkers()
    pid: list[int] = []
    w.suspend(trio.current_time())
    w.adopt(b"s" * 16, "late", lambda: pid[0] if pid else None, trio.current_time())
    p = busy()
    pid.append(p.pid)
    w.enforce(trio.current_time())
    await wait_until(lambda: status(p) == psutil.STATUS_STOPPED, 10, "the child to stop")
    w.resume(trio.current_time())
    assert await grows(p)


def test_a_restarted_worker_is_counted_from_zero_and_added() -> None:
    w = AdoptedWorkers()
    a = w.adopt(b"s" * 16, "w", lambda: 1, 0.0)
    w.record(a.handle, 100, Sample(50.0, 1000), 1.0)    # 50 s before adoption: not counted
    w.record(a.handle, 100, Sample(52.0, 1000), 2.0)
    w.record(a.handle, 200, Sample(0.5, 2000), 3.0)     # restarted: a new process
    w.record(a.handle, 200, Sample(1.5, 2000), 4.0)
    _, usage = w.release(a.handle, 5.0)  # type: ignore[misc]
    assert usage.cpu_s == pytest.approx(3.0) and usage.peak_rss_bytes == 2000


async def test_the_service_meters_adopted_work_into_its_session(busy, tmp_path: Path) -> None:
    bus = EventBus()
    sub = bus.subscribe("test", [HarvestSessionStarted, HarvestContribution])
    ledger = ContributionLedger(ContributionStore(tmp_path / "c"), "me", 1000.0)
    reg = CollectorRegistry()
    svc = HarvestService(peer_id="me", ledger=ledger, executor=Executor(), workers=AdoptedWorkers(),
                         core=PolicyCore(HarvestPolicy()), metrics=HarvestMetrics.create(reg),
                         events=bus, clock=lambda: 1000.0, base_policy=HarvestPolicy(), overrides={},
                         save_overrides=lambda o: None)
    p = busy()
    async with svc.adopt("fl", "ab" * 32, "fl task process", lambda: p.pid) as s:
        assert await grows(p, by=0.3)
        await svc.sample()
        assert svc.live_usage(s.session_id).cpu_s > 0.1
        assert [w["name"] for w in svc.current_work()] == ["fl task process"]
    assert svc.current_work() == []
    report = svc.stop_session(s.session_id, completed=True)
    assert report.session.state is SessionState.COMPLETED
    assert report.session.usage.cpu_s >= 0.3 and report.totals.cpu_seconds == report.session.usage.cpu_s
    started, contributed = await sub.receive(), await sub.receive()
    assert isinstance(started, HarvestSessionStarted) and started.work == "fl"
    assert isinstance(contributed, HarvestContribution) and contributed.state == "completed"
    assert contributed.cpu_seconds == report.session.usage.cpu_s
    assert reg.get_sample_value("fognode_harvest_cpu_seconds_total") == report.session.usage.cpu_s
    assert reg.get_sample_value("fognode_harvest_sessions_total", {"kind": "fl", "state": "completed"}) == 1
    svc.close("test over")
