"""Lending another role's process to a harvest session (`HarvestService.adopt`, through the
executor's watch) against a real CPU-bound child: SIGSTOP while work is suspended (its CPU
time stops growing), SIGCONT on resume and when handed back; its CPU time from the moment it
was lent is metered into the session, which emits the seed's events when it ends."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import trio
from prometheus_client import CollectorRegistry

from fognode.node.events import EventBus
from fognode.protocols.harvest.contribution import ContributionLedger, SessionState
from fognode.protocols.harvest.contribution_store import ContributionStore
from fognode.protocols.harvest.events import HarvestContribution, HarvestSessionStarted
from fognode.protocols.harvest.executor import Executor
from fognode.protocols.harvest.metrics import HarvestMetrics
from fognode.protocols.harvest.policy import HarvestPolicy
from fognode.protocols.harvest.policy_core import PolicyCore
from fognode.protocols.harvest.policy_store import PolicyStore, StoredPolicy
from fognode.protocols.harvest.service import HarvestService

from tests.polling import wait_until
from tests.steps import TaskSteps

BUSY = "while True:\n    sum(range(10000))\n"


def cpu(p: subprocess.Popen[bytes]) -> float:
    t = psutil.Process(p.pid).cpu_times()
    return t.user + t.system


def status(p: subprocess.Popen[bytes]) -> str:
    return psutil.Process(p.pid).status()


async def grows(p: subprocess.Popen[bytes], by: float = 0.05, within: float = 30.0) -> bool:
    start = cpu(p)
    with trio.move_on_after(within):
        while cpu(p) - start < by:
            await trio.sleep(0.05)
        return True
    return False


@pytest.fixture
def busy():
    p = subprocess.Popen([sys.executable, "-c", BUSY])
    yield p
    p.kill()
    p.wait()


def service(tmp_path: Path, bus: EventBus, reg: CollectorRegistry) -> HarvestService:
    ledger = ContributionLedger(ContributionStore(tmp_path / "c"), "me", 1000.0)
    return HarvestService(peer_id="me", ledger=ledger, executor=Executor(poll_interval=0.05),
                          core=PolicyCore(HarvestPolicy()), metrics=HarvestMetrics.create(reg),
                          events=bus, clock=lambda: 1000.0, base_policy=HarvestPolicy(),
                          store=PolicyStore(tmp_path / "policy.json"), stored=StoredPolicy())


async def test_lent_work_stops_with_the_policy_and_is_metered(busy, tmp_path: Path) -> None:
    bus, reg = EventBus(), CollectorRegistry()
    sub = bus.subscribe("test", [HarvestSessionStarted, HarvestContribution])
    svc = service(tmp_path, bus, reg)
    before = cpu(busy)
    async with svc.adopt("fl", "ab" * 32, "fl task process", lambda: busy.pid) as s:
        [w] = svc.current_work()
        assert w["adopted"] and w["pid"] == busy.pid and w["session_id"] == s.session_id.hex()
        assert await grows(busy, by=0.3)
        svc.executor.suspend()                    # what the role does on the policy's Suspend
        await wait_until(lambda: status(busy) == psutil.STATUS_STOPPED, 10, "the child to stop")
        frozen = cpu(busy)
        await trio.sleep(0.5)                     # a measurement window: no CPU time in it
        assert cpu(busy) == frozen
        svc.executor.resume()
        assert await grows(busy)
        svc.executor.suspend()
        await wait_until(lambda: status(busy) == psutil.STATUS_STOPPED, 10, "the child to stop")
        await wait_until(lambda: svc.live_usage(s.session_id).cpu_s > 0.3, 10, "the meter")
    # handed back: running again, not watched any more, though work stays suspended
    assert svc.current_work() == []
    assert await grows(busy)
    report = await svc.end_session(s.session_id, completed=True)
    used = report.session.usage
    assert report.session.state is SessionState.COMPLETED
    assert 0.3 <= used.cpu_s <= cpu(busy) - before and used.suspended_s > 0.4
    assert used.peak_rss_bytes > 0 and report.totals.cpu_seconds == used.cpu_s
    started, contributed = await sub.receive(), await sub.receive()
    assert isinstance(started, HarvestSessionStarted) and started.work == "fl"
    assert isinstance(contributed, HarvestContribution) and contributed.state == "completed"
    assert contributed.cpu_seconds == used.cpu_s
    assert reg.get_sample_value("fognode_harvest_cpu_seconds_total") == used.cpu_s
    assert reg.get_sample_value("fognode_harvest_sessions_total", {"kind": "fl", "state": "completed"}) == 1
    svc.close("test over")


async def test_a_process_lent_while_suspended_is_stopped_at_once(busy, tmp_path: Path) -> None:
    svc = service(tmp_path, EventBus(), CollectorRegistry())
    svc.executor.suspend()
    async with svc.adopt("fl", "cd" * 32, "late", lambda: busy.pid):
        await wait_until(lambda: status(busy) == psutil.STATUS_STOPPED, 10, "the child to stop")
    assert await grows(busy)      # released running
    # no process yet: the body runs unwatched, in the session
    async with svc.adopt("fl", "cd" * 32, "none", lambda: None) as s:
        assert svc.current_work() == []
    assert svc.ledger.get(s.session_id).state is SessionState.RUNNING   # type: ignore[union-attr]
    svc.close("test over")
    assert svc.ledger.totals().abandoned == 1


async def test_lending_a_process_takes_no_scheduler_step_before_the_body(busy, tmp_path: Path) -> None:
    """The body of `adopt` runs in the step that enters it, with the process already watched
    (metered from a first reading, stopped if work is suspended): on a busy event loop each
    extra step waits for every other ready task, and FL writes its training request in the
    body. Leaving it takes one more step (the watcher's release). Counted with a trio
    instrument: the lending task's steps, which load does not change."""
    svc = service(tmp_path, EventBus(), CollectorRegistry())
    await svc.open_session("fl", "ef" * 32)

    steps = TaskSteps("one loan")
    seen: list[tuple[int, bool]] = []

    async def one_loan() -> None:
        async with svc.adopt("fl", "ef" * 32, "fl task process", lambda: busy.pid):
            [w] = svc.current_work()
            seen.append((steps.count, w["adopted"]))

    with steps:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one_loan, name="one loan")
    assert seen == [(1, True)]          # entered, watched and in the body in the first step
    assert steps.count == 2             # handed back: woken once the watcher is gone
    assert svc.current_work() == [] and await grows(busy)
    svc.close("test over")
