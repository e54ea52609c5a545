"""`fognode devnet` end to end: N processes, one genesis, Ctrl-C stops them all."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
                wait_until(lambda c=c: len(c.call("node.peers")) == 2, timeout=30, what=f"{s} to see 2 peers")
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
