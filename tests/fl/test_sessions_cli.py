"""`fl sessions`, `fl status` and `fl export` as an operator uses them, through the real CLI
against real daemons (issue 15 item 14): the list shows strategy, start time, rounds and the
reason; `fl status --follow` prints a line per round and exits with the session's end, and
`fl status` shows the same compact table; an ended session survives a restart of its node;
`fl export` takes a relative path (resolved by the CLI) and keeps an existing file unless
--force."""
from __future__ import annotations

import json
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
    sid = coord.rpc("fl.start", {"task": "synthetic", "rounds": 2, "min_participants": 2, "participants": 2,
                                 "strategy": "fedavgm", "deadline": 20.0, "optin_seconds": 2.0,
                                 "dp_clip": 5.0, "dp_noise": 0.5,
                                 "task_params": {"max_samples": 100}})["session_id"]
    # --follow: one compact line per round as it completes, then the outcome (it waits for it)
    followed = subprocess.run([sys.executable, "-m", "fognode.tools.cli", "--datadir", str(coord.datadir),
                               "fl", "status", sid, "--follow"], capture_output=True, text=True, timeout=120)
    assert followed.returncode == 0, followed.stderr
    lines = followed.stdout.splitlines()
    rounds = [ln for ln in lines if ln.startswith("round ")]
    assert [ln.split()[1] for ln in rounds] == ["1", "2"], followed.stdout
    assert all(re.search(r"participants 2  accepted \d  loss \S+  accuracy \S+  duration \S+  epsilon \d", ln)
               for ln in rounds), rounds
    assert any(ln.split()[:2] == ["state", "completed"] for ln in lines), followed.stdout
    # without --follow: the same compact table; --verbose has every peer's weight
    plain = cli(coord.datadir, "fl", "status", sid)
    assert "rounds_table:" in plain.stdout and "weights" not in plain.stdout, plain.stdout
    assert re.search(r"^\s+round\s+participants\s+accepted\s+loss\s+accuracy\s+duration\s+epsilon$",
                     plain.stdout, re.M), plain.stdout
    assert "weights" in cli(coord.datadir, "fl", "status", sid, "--verbose").stdout

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
    st = coord.rpc("fl.status", [sid, True])
    assert st["archived"] and st["rounds_done"] == 2 and st["strategy"] == "fedavgm"
    out = cli(coord.datadir, "fl", "export", sid, "model.pt", cwd=short_tmp)    # relative to the CLI
    assert out.returncode == 0, out.stderr
    assert (short_tmp / "model.pt").stat().st_size > 0
    again = cli(coord.datadir, "fl", "export", sid, "model.pt", cwd=short_tmp)
    assert again.returncode == 1 and "exists: give --force" in again.stderr, again.stderr
    forced = cli(coord.datadir, "fl", "export", sid, "model.pt", "--force", cwd=short_tmp)
    assert forced.returncode == 0, forced.stderr
    # a directory is named as such (it was "exists: give --force", and --force then "Is a directory")
    for force in ([], ["--force"]):
        d = cli(coord.datadir, "fl", "export", sid, str(short_tmp), *force)
        assert d.returncode == 1 and f"{short_tmp} is a directory: give the path of the file to write" in d.stderr, \
            d.stderr
    # over raw JSON-RPC a relative path is refused, naming the param
    raw = cli(coord.datadir, "call", "fl.export", f'["{sid}", "model.pt"]')
    assert raw.returncode == 1 and "must be an absolute path" in raw.stderr, raw.stderr


def test_flower_semantics_reach_the_strategy_through_fl_start(node_factory: NodeFactory) -> None:
    """The README's strategies table: `--strategy-params '{"semantics": "flower"}'` for fedadam
    and the others that take it. fl.start refused it ("param 'strategy_params.semantics' must be
    a number"), so the Flower variants the strategies implement could not be chosen. The choice
    travels in the announcement as its index (numbers only: what every node's decoder takes)."""
    net = node_factory(2, extra_args=["--set", "protocols.fl.tick_interval=0.1"])
    coord, other = net.nodes
    wait_until(lambda: any(p["peer_id"] == other.peer_id for p in coord.rpc("node.peers")), timeout=30,
               what="the two nodes to connect")
    params = ["--strategy", "fedadam", "--strategy-params", '{"semantics": "flower", "eta": 0.1, "tau": 0.001}']
    started = cli(coord.datadir, "--json", "fl", "start", "synthetic", "--rounds", "1", "--min-participants", "2",
                  "--participants", "2", "--deadline", "20", "--optin-seconds", "2", *params)
    assert started.returncode == 0, started.stderr
    sid = json.loads(started.stdout)["session_id"]
    followed = subprocess.run([sys.executable, "-m", "fognode.tools.cli", "--datadir", str(coord.datadir),
                               "fl", "status", sid, "--follow"], capture_output=True, text=True, timeout=120)
    assert followed.returncode == 0 and "completed" in followed.stdout, followed.stdout + followed.stderr
    # both nodes built the Flower variant: the participant joined and its status names it
    st = other.rpc("fl.status", [sid, True])
    assert st["state"] == "completed", st
    bad = cli(coord.datadir, "fl", "start", "synthetic", "--strategy", "multikrum",
              "--strategy-params", '{"semantics": "flwr"}')
    assert bad.returncode == 1 and "error 502: multikrum: parameter 'semantics' must be one of paper, flower" \
        in bad.stderr, bad.stderr
