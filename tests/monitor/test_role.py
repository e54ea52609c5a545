"""The monitor role in real daemons: history, firing and pending alerts survive a restart (a
SIGKILL) and the detectors start warm from the stored history, an alert rule fires on a real
node when its only peer is SIGKILLed and runs the operator's hook, a hook that hangs is killed at
its limit, a rule with a typo'd metric refuses to start naming it, and `monitor.events --follow`
through the real CLI prints an event as it happens."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fognode.node.rpc.client import RpcError
from fognode.protocols.monitor.errors import MONITOR_BAD_RANGE, MONITOR_UNKNOWN_EVENT, MONITOR_UNKNOWN_METRIC
from fognode.protocols.monitor.series import Tier
from fognode.protocols.monitor.store import SeriesStore
from fognode.tools.devnet import wait_until

from tests.conftest import NodeFactory

FAST = ["--set", "protocols.monitor.sample_interval=0.5"]


def cli(datadir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fognode.tools.cli", "--datadir", str(datadir), *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_history_alerts_and_detectors_survive_a_restart_and_bad_queries_are_refused(
        node_factory: NodeFactory) -> None:
    net = node_factory(1, start=False)
    node = net.nodes[0]
    node.args += [*FAST, "--set", 'protocols.monitor.alerts=[{name = "lonely", metric = "node.peers", op = "<", '
                  'threshold = 1}, {name = "long", metric = "node.peers", op = "<", threshold = 1, for = "1h"}]']
    # three days of earlier history in the ring files (as a node that ran then would have left)
    store = SeriesStore(node.datadir / "monitor" / "series", [Tier.parse(t) for t in ("10s:1d", "5m:30d")])
    now = time.time()
    for i in range(3 * 288, 12, -1):
        store.series("node.peers").record(now - 300 * i, 0.0)
    for i in range(200, 6, -1):                                  # and its last half hour at 10 s
        store.series("node.peers").record(now - 10 * i, 0.0)
    store.close()
    net.start(0)
    rows = {m["name"]: m for m in node.rpc("monitor.metrics")}
    assert {"node.peers", "node.loop_lag_p99", "ledger.supply", "fl.round_duration_mean", "harvest.running",
            "market.offers", "onion.circuits_open"} <= set(rows)
    # the detectors learnt from the files at start: the seasonal one scores without two days of uptime
    assert rows["node.peers"]["detectors"] == ["robust_z", "seasonal_ewma"], rows["node.peers"]
    assert rows["node.gossip_in_rate"]["detectors"] == []               # no history of that one
    pts = wait_until(lambda: node.rpc("monitor.series", ["ledger.supply", "10m"])["points"] or None,
                     timeout=30, what="a recorded supply")
    before = pts[0]
    assert before["mean"] > 0 and before["count"] >= 1
    alerts = wait_until(lambda: (a := node.rpc("monitor.alerts"))["firing"] and a["pending"] and a, timeout=30,
                        what="the alert firing and the other pending")
    (fired,), (pending,) = alerts["firing"], alerts["pending"]
    assert fired["rule"] == "lonely" and pending["rule"] == "long" and pending["for"] == 3600
    net.kill(0)                                                 # SIGKILL: nothing gets to save at stop
    net.start(0)
    after = wait_until(lambda: (r := node.rpc("monitor.series", ["ledger.supply", "10m"])["points"])
                       and r[-1]["t"] > before["t"] and r, timeout=30, what="new points after the restart")
    assert after[0]["t"] == before["t"] and after[0]["count"] >= before["count"]   # kept across the restart
    again = node.rpc("monitor.alerts")
    assert again["firing"] == [fired] and again["pending"] == [pending]     # the same alert, the same progress
    assert node.rpc("monitor.events", {"type": ["AlertFired"]}) == []       # not fired a second time
    assert "robust_z" in {m["name"]: m for m in node.rpc("monitor.metrics")}["node.peers"]["detectors"]
    with pytest.raises(RpcError) as e:
        node.rpc("monitor.series", ["node.peer"])
    assert e.value.code == MONITOR_UNKNOWN_METRIC and "node.peers" in e.value.data["known"]
    with pytest.raises(RpcError) as e:
        node.rpc("monitor.series", {"metric": "node.peers", "since": "1m", "until": "2h"})
    assert e.value.code == MONITOR_BAD_RANGE and e.value.data == {"field": "since"}
    with pytest.raises(RpcError) as e:
        node.rpc("monitor.series", {"metric": "node.peers", "step": "0"})
    assert e.value.code == MONITOR_BAD_RANGE and e.value.data == {"field": "step"}
    with pytest.raises(RpcError) as e:
        node.rpc("monitor.events", {"type": ["PeerConected"]})
    assert e.value.code == MONITOR_UNKNOWN_EVENT and "PeerConnected" in str(e.value)
    h = wait_until(lambda: (x := node.rpc("monitor.health"))["overall"] == "degraded" and x, timeout=30,
                   what="the first sample after the restart")
    assert h["status"] == "ok" and h["node"]["reason"].startswith("no peers")
    assert h["roles"]["ledger"]["status"] == "healthy"


def _hook(tmp: Path, body: str) -> list[str]:
    script = tmp / "hook.py"
    script.write_text("import json, os, sys, time\n" + body)
    return [sys.executable, str(script)]


@pytest.mark.slow
def test_alert_fires_when_the_only_peer_is_killed_and_runs_the_hook(node_factory: NodeFactory,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "alerts.jsonl"
    hook = _hook(tmp_path, f"open({str(out)!r}, 'a').write(sys.stdin.read())\n")
    net = node_factory(2, start=False)
    net.nodes[0].args += [*FAST, "--set", 'protocols.monitor.alerts=[{name = "lonely", metric = "node.peers", '
                          'op = "<", threshold = 1, for = "1s", severity = "critical"}]',
                          "--set", f"protocols.monitor.alert_hook={json.dumps(hook)}"]
    net.start_all()
    a = net.nodes[0]
    wait_until(lambda: a.rpc("node.peers") or None, timeout=30, what="node 0 connected to node 1")
    killed_at = time.time()
    net.kill(1)
    fired = wait_until(lambda: a.rpc("monitor.alerts")["firing"] or None, timeout=60, what="the alert firing")
    assert fired[0]["rule"] == "lonely" and fired[0]["severity"] == "critical" and fired[0]["value"] == 0
    assert fired[0]["since"] >= killed_at
    line = wait_until(lambda: [json.loads(x) for x in out.read_text().splitlines() if '"firing"' in x][-1:]
                      if out.exists() else None, timeout=30, what="the hook's output")
    assert line[0]["rule"] == "lonely" and line[0]["state"] == "firing" and line[0]["condition"] == "node.peers < 1 for 1 s"
    ran = wait_until(lambda: a.rpc("monitor.events", {"type": ["AlertHookRan"]}) or None, timeout=30,
                     what="the hook's end")
    assert ran[0]["data"] == {"rule": "lonely", "state": "firing", "outcome": "exit 0"}
    kinds = {e["event"] for e in a.rpc("monitor.events", {"limit": 1000})}
    assert {"AlertFired", "PeerDisconnected"} <= kinds
    changed = a.rpc("monitor.events", {"type": ["HealthStatusChanged"], "limit": 1000})
    assert any(e["data"]["role"] == "node" and e["data"]["status"] == "degraded" for e in changed), changed


@pytest.mark.slow
def test_a_hook_that_hangs_is_killed_at_its_limit(node_factory: NodeFactory, tmp_path: Path) -> None:
    pidfile = tmp_path / "hook.pid"
    hook = _hook(tmp_path, f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
                           "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(120)\n")
    net = node_factory(1, extra_args=[*FAST, "--set", 'protocols.monitor.alerts=[{metric = "node.peers", op = "<", '
                                      'threshold = 1}]', "--set", f"protocols.monitor.alert_hook={json.dumps(hook)}",
                                      "--set", "protocols.monitor.alert_hook_timeout=1.5"])
    node = net.nodes[0]
    ran = wait_until(lambda: node.rpc("monitor.events", {"type": ["AlertHookRan"]}) or None, timeout=60,
                     what="the hook's end")
    assert ran[0]["data"]["outcome"] == "killed after 1.5 s"
    pid = int(pidfile.read_text())
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or None, timeout=10, what="the hook process gone")


@pytest.mark.slow
def test_a_rule_with_a_typod_metric_refuses_to_start(tmp_path: Path) -> None:
    env = {**os.environ, "FOGNODE_PASSPHRASE": ""}
    d = tmp_path / "n"
    subprocess.run([sys.executable, "-m", "fognode.tools.fognode", "init", "--datadir", str(d)], env=env,
                   check=True, capture_output=True, timeout=60)
    r = subprocess.run([sys.executable, "-m", "fognode.tools.fognode", "run", "--datadir", str(d),
                        "--metrics-port", "0", "--set",
                        'protocols.monitor.alerts=[{metric = "node.peer", op = "<", threshold = 1}]'],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "protocols.monitor.alerts[0].metric" in r.stderr and "'node.peer'" in r.stderr, r.stderr


@pytest.mark.slow
def test_events_follow_through_the_cli(node_factory: NodeFactory) -> None:
    net = node_factory(2)
    a, b = net.nodes
    wait_until(lambda: a.rpc("node.peers") or None, timeout=30, what="connected")
    follow = subprocess.Popen([sys.executable, "-m", "fognode.tools.cli", "--json", "--datadir", str(a.datadir),
                               "monitor", "events", "--follow", "--type", "PeerDisconnected", "--count", "1",
                               "--limit", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the follower is registered once its (empty) backlog is sent; disconnect until it sees it
        def seen() -> bool | None:
            if follow.poll() is not None:
                return True
            if any(p["peer_id"] == b.peer_id for p in a.rpc("node.peers")):
                a.rpc("node.disconnect", [b.peer_id])
            return None
        wait_until(seen, timeout=60, what="the follower to print the disconnect", interval=0.5)
        out, err = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.send_signal(signal.SIGINT)
            follow.communicate(timeout=10)
    assert follow.returncode == 0, err
    first, rest = out.split("\n", 1)
    ev = json.loads(first)                 # one JSON line per event, then the result
    assert ev["event"] == "PeerDisconnected" and ev["data"]["peer_id"] == b.peer_id, out
    assert json.loads(rest) == {"followed": 1}
