"""`fl sessions`, `fl status` and `fl export` as an operator uses them, through the real CLI
against real daemons (issue 15 item 14): the list shows strategy, start time, rounds and the
reason; an ended session survives a restart of its node; `fl export` takes a relative path
(resolved by the CLI) and keeps an existing file unless --force."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fognode.tools.devnet import wait_until

from tests.conftest import NodeFactory

pytestmark = pytest.mark.slow


def cli(datadir: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fognode.tools.cli", "--datadir", str(datadir), *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def test_ended_session_is_listed_kept_across_a_restart_and_exported(node_factory: NodeFactory,
                                                                   short_tmp: Path) -> None:
    net = node_factory(2, extra_args=["--set", "protocols.fl.tick_interval=0.1"])
    coord, other = net.nodes
    wait_until(lambda: any(p["peer_id"] == other.peer_id for p in coord.rpc("node.peers")), timeout=30,
               what="the two nodes to connect")
    sid = coord.rpc("fl.start", {"task": "synthetic", "rounds": 1, "min_participants": 2, "participants": 2,
                                 "strategy": "fedavgm", "deadline": 20.0, "optin_seconds": 2.0,
                                 "task_params": {"max_samples": 100}})["session_id"]
    wait_until(lambda: coord.rpc("fl.status", [sid])["state"] != "running", timeout=90, interval=0.2,
               what="the session to end")
    assert coord.rpc("fl.status", [sid])["state"] == "completed"

    table = cli(coord.datadir, "fl", "sessions")
    assert table.returncode == 0, table.stderr
    header, _, row = table.stdout.splitlines()[:3]
    assert header.split() == ["session_id", "task", "strategy", "state", "role", "started", "rounds_done",
                              "rounds", "reason"]
    assert sid in row and "fedavgm" in row and "completed" in row
    assert re.search(r"20\d\d-\d\d-\d\d \d\d:\d\d UTC", row), row      # a time a person reads

    # the node restarts: the ended session is still there, and its model still exports
    net.stop(0)
    net.start(0)
    listed = coord.rpc("fl.sessions")
    assert [s["session_id"] for s in listed] == [sid] and listed[0]["state"] == "completed"
    st = coord.rpc("fl.status", [sid])
    assert st["archived"] and st["rounds_done"] == 1 and st["strategy"] == "fedavgm"
    out = cli(coord.datadir, "fl", "export", sid, "model.pt", cwd=short_tmp)    # relative to the CLI
    assert out.returncode == 0, out.stderr
    assert (short_tmp / "model.pt").stat().st_size > 0
    again = cli(coord.datadir, "fl", "export", sid, "model.pt", cwd=short_tmp)
    assert again.returncode == 1 and "exists: give --force" in again.stderr, again.stderr
    forced = cli(coord.datadir, "fl", "export", sid, "model.pt", "--force", cwd=short_tmp)
    assert forced.returncode == 0, forced.stderr
    # over raw JSON-RPC a relative path is refused, naming the param
    raw = cli(coord.datadir, "call", "fl.export", f'["{sid}", "model.pt"]')
    assert raw.returncode == 1 and "must be an absolute path" in raw.stderr, raw.stderr
