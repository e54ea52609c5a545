"""fognode-cli end to end against a live daemon process."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import NodeFactory


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fognode.tools.cli", *args], capture_output=True, text=True,
                          timeout=60)


def test_cli_against_a_live_node(node_factory: NodeFactory) -> None:
    net = node_factory(2)
    a, b = net.nodes
    d = ["--datadir", str(a.datadir)]

    r = cli(*d, "--json", "node", "info")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["peer_id"] == a.peer_id

    r = cli(*d, "node", "info")  # readable table
    assert r.returncode == 0 and f"peer_id" in r.stdout and a.peer_id in r.stdout
    assert "roles.monitor.health" in r.stdout

    r = cli(*d, "help")  # commands come from the daemon
    assert r.returncode == 0
    for cmd in ("node info", "node connect", "monitor network"):
        assert cmd in r.stdout

    r = cli(*d, "help", "node.connect")
    assert r.returncode == 0 and "MULTIADDR" in r.stdout

    r = cli(*d, "--json", "node", "connect", b.addr)  # positional param
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"peer_id": b.peer_id}

    r = cli(*d, "node", "connect", "garbage")
    assert r.returncode == 1 and "102" in r.stderr and "bad multiaddr" in r.stderr

    r = cli(*d, "node", "conect")
    assert r.returncode == 2 and "node connect" in r.stderr


def test_cli_without_daemon_names_the_socket(short_tmp) -> None:  # type: ignore[no-untyped-def]
    r = cli("--datadir", str(short_tmp), "node", "info")
    assert r.returncode == 3
    assert str(short_tmp / "fognode.sock") in r.stderr
    assert "fognode run --datadir" in r.stderr
