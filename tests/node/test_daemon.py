"""One real daemon process: readiness, node.* methods, the lock, clean shutdown."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fognode.node.errors import RpcError
from fognode.node.rpc.client import DaemonUnreachable, RpcClient
from fognode.tools.devnet import free_port, wait_until

from tests.conftest import NodeFactory


def test_single_node_info_peers_and_graceful_stop(node_factory: NodeFactory) -> None:
    net = node_factory(1)
    node = net.nodes[0]
    info = node.rpc("node.info")
    assert info["peer_id"] == node.peer_id
    assert any(a.endswith(f"/tcp/{node.port}/p2p/{node.peer_id}") for a in info["addresses"])
    assert info["roles"]["monitor"]["health"] == "healthy"
    assert node.rpc("node.peers") == []
    assert oct(node.socket.stat().st_mode & 0o777) == "0o600"
    t0 = time.monotonic()
    rc = net.stop(0, sig=signal.SIGTERM)
    assert rc == 0 and time.monotonic() - t0 < 5
    assert not node.socket.exists()
    log = node.log_path.read_text()
    assert "stopping (SIGTERM)" in log and "Traceback" not in log


def test_node_stop_method_and_restart_keeps_peer_id(node_factory: NodeFactory) -> None:
    net = node_factory(1)
    node = net.nodes[0]
    assert node.rpc("node.stop") == {"stopping": True}
    assert node.proc is not None and node.proc.wait(timeout=10) == 0
    net.start(0)
    assert node.rpc("node.info")["peer_id"] == node.peer_id


def test_second_daemon_on_same_datadir_is_refused(node_factory: NodeFactory) -> None:
    net = node_factory(1)
    node = net.nodes[0]
    r = subprocess.run([sys.executable, "-m", "fognode.tools.fognode", "run", "--datadir", str(node.datadir),
                        "--listen", "/ip4/127.0.0.1/tcp/0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert f"another fognode daemon (pid {node.proc.pid})" in r.stderr  # type: ignore[union-attr]
    assert node.rpc("node.info")["peer_id"] == node.peer_id  # the first one is unharmed


def test_connect_errors_are_clear(node_factory: NodeFactory) -> None:
    net = node_factory(1)
    node = net.nodes[0]
    with pytest.raises(RpcError) as e:
        node.rpc("node.connect", ["not-a-multiaddr"])
    assert e.value.code == 102
    with pytest.raises(RpcError) as e:
        node.rpc("node.connect", ["/ip4/127.0.0.1/tcp/1/p2p/12D3KooWBmwkafWE2fqfzS96VoTZVg5jm5cTsmzRZbTVx1ktB4HS"])
    assert e.value.code == 101 and "could not connect" in e.value.message
    with pytest.raises(RpcError) as e:
        node.rpc("node.disconnect", ["12D3KooWBmwkafWE2fqfzS96VoTZVg5jm5cTsmzRZbTVx1ktB4HS"])
    assert e.value.code == 103


def test_metrics_and_health_endpoint(node_factory: NodeFactory) -> None:
    port = free_port()
    net = node_factory(1, start=False)
    net.nodes[0].args = ["--metrics-port", str(port)]
    net.start(0)
    node = net.nodes[0]
    node.rpc("node.info")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'fognode_node_role_healthy{role="monitor"} 1.0' in body
    assert "fognode_node_rpc_request_seconds" in body
    assert "fognode_node_uptime_seconds" in body
    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read())
    assert health["status"] == "ok" and health["peer_id"] == node.peer_id
    assert node.rpc("monitor.health")["roles"]["monitor"]["health"] == "healthy"


def test_daemon_does_not_import_torch(node_factory: NodeFactory) -> None:
    """The daemon must start without importing torch (it is imported lazily by FL training)."""
    net = node_factory(1)
    pid = net.nodes[0].proc.pid  # type: ignore[union-attr]
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "libtorch" not in maps


def test_many_clients_at_once(node_factory: NodeFactory) -> None:
    net = node_factory(1)
    clients = [RpcClient(net.nodes[0].socket) for _ in range(20)]
    try:
        for c in clients:
            assert c.call("node.info")["peer_id"] == net.nodes[0].peer_id
    finally:
        for c in clients:
            c.close()
    wait_until(lambda: net.nodes[0].rpc("node.info"), timeout=5, what="node.info after 20 clients")


def test_socket_answers_while_warming_up_and_a_stop_then_is_clean(node_factory: NodeFactory) -> None:
    """The control socket opens before the roles and libp2p are loaded: until the node is ready,
    calls get NODE_NOT_READY (100) naming the stage; node.stop works then and exits 0. (On a
    fast machine the warm-up may be over before the first answer: then the stop is a normal one.)"""
    net = node_factory(1, start=False)
    node = net.nodes[0]
    net.start(0, wait=False)

    def first_answer() -> dict[str, Any] | None:
        assert node.alive(), net.log_tail(0)
        try:
            return {"result": node.rpc("node.info", timeout=10)}
        except RpcError as e:
            return {"code": e.code, "message": e.message, "data": e.data}
        except DaemonUnreachable:
            return None

    got = wait_until(first_answer, timeout=60, what="the control socket's first answer", interval=0.005)
    if "code" in got:
        assert got["code"] == 100 and "the daemon is warming up (" in got["message"], got
        assert got["data"]["phase"] in got["message"]
    assert node.rpc("node.stop", timeout=30) == {"stopping": True}
    assert node.proc is not None and node.proc.wait(timeout=30) == 0
    log = node.log_path.read_text()
    assert "Traceback" not in log and not node.socket.exists()
    if "code" in got:
        assert "stopping while warming up (node.stop)" in log or "stopping (node.stop)" in log
