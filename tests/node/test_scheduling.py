"""The daemon's CPU scheduling policy (node/scheduling.py): a real `fognode run` and every thread
it runs are under SCHED_BATCH by default and under SCHED_OTHER with `node.scheduling = normal`;
a process started after the policy was set inherits it (harvest jobs, FL task processes)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import NodeFactory

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux only")


def _policies(pid: int) -> set[int]:
    """The scheduling policy of every thread of process `pid`."""
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def test_a_daemon_and_all_its_threads_run_batch_by_default_and_normal_when_configured(
        node_factory: NodeFactory) -> None:
    batch = node_factory(1).nodes[0]
    normal = node_factory(1, extra_args=["--set", "node.scheduling=normal"]).nodes[0]
    assert batch.proc is not None and normal.proc is not None
    assert len(os.listdir(f"/proc/{batch.proc.pid}/task")) > 1     # its threads are counted too
    assert _policies(batch.proc.pid) == {os.SCHED_BATCH}
    assert _policies(normal.proc.pid) == {os.SCHED_OTHER}
    assert "CPU scheduling: batch (SCHED_BATCH)" in batch.log_path.read_text()
    assert "CPU scheduling: normal (SCHED_OTHER)" in normal.log_path.read_text()


def test_a_process_started_after_the_policy_is_set_inherits_it() -> None:
    code = ("import os, subprocess, sys; from fognode.node.scheduling import apply_scheduling; "
            "print(apply_scheduling('batch')); "
            "subprocess.run([sys.executable, '-c', 'import os; print(os.sched_getscheduler(0))'], check=True)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    said, child = out.stdout.split("\n")[:2]
    assert said == "CPU scheduling: batch (SCHED_BATCH)"
    assert int(child) == os.SCHED_BATCH
