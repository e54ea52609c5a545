"""`fognode devnet` end to end: N processes, one genesis, Ctrl-C stops them all; a node's death
is reported and the node restarted; a re-run on the same --dir resumes or refuses."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from fognode.node.rpc.client import RpcClient
from fognode.tools.devnet import wait_until

pytestmark = pytest.mark.slow


def test_devnet_starts_and_stops_cleanly(short_tmp: Path) -> None:
    root = short_tmp / "dn"
    proc = subprocess.Popen([sys.executable, "-m", "fognode.tools.fognode", "devnet", "--nodes", "3", "--dir", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []

        def printed_table() -> bool:
            assert proc.stdout is not None
            lines.append(proc.stdout.readline())
            return "Ctrl-C stops every node" in lines[-1]

        wait_until(printed_table, timeout=90, what="the devnet table", interval=0)
        out = "".join(lines)
        socks = [root / f"node{i}" / "fognode.sock" for i in range(3)]
        for s in socks:
            assert str(s) in out
        genesis = {json.dumps(json.loads((root / f"node{i}" / "genesis.json").read_text()), sort_keys=True)
                   for i in range(3)}
        assert len(genesis) == 1  # one shared genesis
        pids = []
        for s in socks:
            with RpcClient(s) as c:
                wait_until(lambda c=c: len(c.call("node.peers")) == 2, timeout=60, what=f"{s} to see 2 peers")
        for i in range(3):
            pids.append(int((root / f"node{i}" / "fognode.lock").read_text().strip()))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


def _devnet(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fognode.tools.fognode", "devnet", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _read_until(proc: subprocess.Popen[str], marker: str, lines: list[str], *, timeout: float = 90) -> str:
    """Lines of `proc`'s output up to the one containing `marker` (bounded)."""
    def seen() -> bool:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line or proc.poll() is None, f"devnet exited with {proc.poll()}:\n{''.join(lines)}"
        lines.append(line)
        return marker in line

    wait_until(seen, timeout=timeout, what=f"{marker!r} in the devnet's output", interval=0)
    return "".join(lines)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


def test_a_dead_node_is_reported_restarted_and_the_devnet_resumes(short_tmp: Path) -> None:
    """Issue 15 items 1-3 through `fognode devnet` itself: the death of one node leaves the
    other running and is reported with a restart command that works; each node has its own
    metrics port and region; a re-run on the same --dir resumes (same genesis), a re-run
    that does not fit refuses; a node restarts alone from its node.toml."""
    root = short_tmp / "dn"
    proc = _devnet("--nodes", "2", "--dir", str(root), "--region", "eu-west,us-east")
    lines: list[str] = []
    try:
        table = _read_until(proc, "Ctrl-C stops every node", lines)
        manifest = json.loads((root / "devnet.json").read_text())
        nodes = manifest["nodes"]
        assert [n["region"] for n in nodes] == ["eu-west", "us-east"]
        metrics = [n["metrics_port"] for n in nodes]
        assert all(metrics) and len(set(metrics)) == 2
        for n in nodes:
            assert re.search(rf"^{n['index']}\s+{n['peer_id']}\s+{n['port']}\s+{n['metrics_port']}\s+"
                             rf"{n['region']}\s+{root}/node{n['index']}/fognode.sock$", table, re.M), table
            with urllib.request.urlopen(f"http://127.0.0.1:{n['metrics_port']}/metrics", timeout=10) as resp:
                assert b"fognode_node_uptime_seconds" in resp.read()
        with RpcClient(root / "node1" / "fognode.sock") as c:
            assert c.call("node.info")["region"] == "us-east"
        genesis = (root / "node0" / "genesis.json").read_bytes()

        # kill -9 node 1: reported with its exit code and log; node 0 keeps running
        pid1 = int((root / "node1" / "fognode.lock").read_text().strip())
        os.kill(pid1, signal.SIGKILL)
        report = _read_until(proc, "or run it alone:", lines, timeout=30)
        assert "node 1 exited with exit code -9 (SIGKILL); the other 1 node(s) keep running." in report
        assert f"last lines of {root}/node1/daemon.log:" in report
        assert f"devnet restart 1 --dir {root}" in report
        assert proc.poll() is None
        with RpcClient(root / "node0" / "fognode.sock") as c:
            assert c.call("node.info")["peer_id"] == nodes[0]["peer_id"]

        # the printed restart command works
        cmd = next(ln for ln in report.splitlines() if "restart it with:" in ln).split("restart it with: ", 1)[1]
        r = subprocess.run(shlex.split(cmd), capture_output=True, text=True, timeout=90)
        assert r.returncode == 0 and r.stdout.startswith("node 1 restarted (pid "), r.stderr
        with RpcClient(root / "node1" / "fognode.sock") as c:
            wait_until(lambda: len(c.call("node.peers")) == 1, timeout=30, what="node 1 to rejoin node 0")
        # a second devnet on the same dir is refused while this one runs
        r = subprocess.run([sys.executable, "-m", "fognode.tools.fognode", "devnet", "--dir", str(root)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "a devnet is already running under" in r.stderr
        assert "or start another with another --dir" in r.stderr       # the way out, as the README says
    finally:
        _stop(proc)
    assert proc.returncode == 0, "".join(lines)

    # a re-run that does not fit the recorded devnet is refused, naming the way out
    r = subprocess.run([sys.executable, "-m", "fognode.tools.fognode", "devnet", "--nodes", "3", "--dir", str(root)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"{root} holds a devnet of 2 nodes, not 3: drop --nodes to resume it, or start afresh" in r.stderr
    # a restart with no devnet running says how to go on
    r = subprocess.run([sys.executable, "-m", "fognode.tools.fognode", "devnet", "restart", "0", "--dir", str(root)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and f"no `fognode devnet` is running under {root}" in r.stderr
    assert f"run --datadir {root}/node0" in r.stderr

    # node 1 alone, from its node.toml: same port, metrics port and region; it finds node 0's address
    alone = subprocess.Popen([sys.executable, "-m", "fognode.tools.fognode", "run", "--datadir", str(root / "node1")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "FOGNODE_PASSPHRASE": ""})
    try:
        with RpcClient(root / "node1" / "fognode.sock") as c:
            info = wait_until(lambda: c.call("node.info"), timeout=60, what="node 1 alone to answer")
        assert info["region"] == "us-east"
        assert any(a.endswith(f"/tcp/{nodes[1]['port']}") or f"/tcp/{nodes[1]['port']}/" in a
                   for a in info["addresses"]), info["addresses"]
        assert f"bootstrap = [\"/ip4/127.0.0.1/tcp/{nodes[0]['port']}/p2p/{nodes[0]['peer_id']}\"]" in \
            (root / "node1" / "node.toml").read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics[1]}/health", timeout=10) as resp:
            assert resp.status == 200
    finally:
        alone.send_signal(signal.SIGINT)
        alone.wait(timeout=30)

    # the same --dir again resumes the devnet: same genesis, same peers, no "another genesis"
    proc = _devnet("--dir", str(root))
    lines = []
    try:
        out = _read_until(proc, "Ctrl-C stops every node", lines)
        assert out.startswith(f"devnet of 2 nodes under {root} (resumed)")
        assert (root / "node0" / "genesis.json").read_bytes() == genesis
        for i in range(2):
            with RpcClient(root / f"node{i}" / "fognode.sock") as c:
                info = c.call("node.info")
                assert info["peer_id"] == nodes[i]["peer_id"]
                assert info["roles"]["ledger"]["health"] == "healthy"
    finally:
        _stop(proc)
    assert proc.returncode == 0, "".join(lines)


def test_a_dir_that_holds_something_else_is_refused(short_tmp: Path) -> None:
    root = short_tmp / "other"
    (root / "node0").mkdir(parents=True)
    (root / "node0" / "identity.key").write_bytes(b"x" * 32)
    r = subprocess.run([sys.executable, "-m", "fognode.tools.fognode", "devnet", "--nodes", "2", "--dir", str(root)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr == (f"fognode: error: {root} is not empty and holds no devnet (devnet.json): refusing to "
                        f"write a new genesis there; start afresh with another --dir (or after `rm -r {root}`)\n")
    assert (root / "node0" / "identity.key").read_bytes() == b"x" * 32 and not (root / "node0" / "genesis.json").exists()


def test_a_restart_while_the_node_runs_alone_says_it_failed(short_tmp: Path) -> None:
    """`fognode devnet restart N` while node N runs alone (`fognode run --datadir D/nodeN`, as
    the death report offers): the devnet's new process fails on the data dir's lock, and the
    restart says so (exit 1, the lock's message) instead of "node N restarted" from the other
    daemon's answer on the same socket."""
    root = short_tmp / "dn"
    proc = _devnet("--nodes", "1", "--dir", str(root))
    lines: list[str] = []
    alone = None
    try:
        _read_until(proc, "Ctrl-C stops every node", lines)
        os.kill(int((root / "node0" / "fognode.lock").read_text().strip()), signal.SIGKILL)
        _read_until(proc, "or run it alone:", lines, timeout=30)
        alone = subprocess.Popen([sys.executable, "-m", "fognode.tools.fognode", "run", "--datadir", str(root / "node0")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={**os.environ, "FOGNODE_PASSPHRASE": ""})
        with RpcClient(root / "node0" / "fognode.sock") as c:
            wait_until(lambda: c.call("node.info"), timeout=60, what="node 0 alone to answer")
        r = subprocess.run([sys.executable, "-m", "fognode.tools.fognode", "devnet", "restart", "0", "--dir", str(root)],
                           capture_output=True, text=True, timeout=90)
        assert r.returncode == 1, r.stdout
        assert r.stderr.startswith("node 0 did not come back: node 0 exited with 2")
        assert f"another fognode daemon (pid {alone.pid}) is already running on {root / 'node0'}" in r.stderr
        assert alone.poll() is None
    finally:
        if alone is not None:
            alone.send_signal(signal.SIGINT)
            alone.wait(timeout=30)
        _stop(proc)
