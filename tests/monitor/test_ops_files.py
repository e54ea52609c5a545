"""tools/monitoring: the Prometheus rules and the Grafana dashboard name only metrics a running
node really exports (checked against a real node's /metrics), they cover the harvest, market and
onion roles, every series the monitor records reads a metric the node exports, and /health keeps
its fields."""
from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from fognode.protocols.monitor.sampled import SAMPLED
from fognode.tools.devnet import free_port

from tests.conftest import NodeFactory

ROOT = Path(__file__).resolve().parents[2] / "tools" / "monitoring"
NAME = re.compile(r"\bfognode_[a-z0-9_]+")


def exported(text: str) -> set[str]:
    """Every series name a scrape can return: samples, and for declared families their suffixes."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter":
                names.add(name if name.endswith("_total") else f"{name}_total")
        elif line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


@pytest.mark.slow
def test_rules_and_dashboard_name_real_metrics_and_health_fields(node_factory: NodeFactory) -> None:
    port = free_port()
    net = node_factory(1, extra_args=["--metrics-port", str(port), "--set", "protocols.monitor.sample_interval=0.5"])
    base = f"http://127.0.0.1:{port}"
    metrics = exported(urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode())
    text = (ROOT / "prometheus-rules.yml").read_text()      # no YAML library here: the file is flat
    exprs = re.findall(r"^\s+expr: (.+)$", text, re.M)
    assert len(exprs) == len(re.findall(r"^\s+- alert: \w+$", text, re.M)) >= 8
    dash = json.loads((ROOT / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in NAME.findall(e)}
    assert len(used) >= 12
    for role in ("harvest", "market", "onion"):         # the roles that landed later are covered too
        assert any(m.startswith(f"fognode_{role}_") for m in used), role
    assert used <= metrics, f"not exported by a node: {sorted(used - metrics)}"
    families = {n.removesuffix("_total") for n in metrics}
    missing = [s.name for s in SAMPLED if s.family not in families]
    assert not missing, f"series whose metric the node does not export: {missing}"
    health = json.loads(urllib.request.urlopen(f"{base}/health", timeout=10).read())
    assert {"status", "peer_id", "uptime_s", "peers", "roles"} <= set(health)       # as before
    assert health["status"] == "ok" and health["peer_id"] == net.nodes[0].peer_id
    assert health["overall"] in ("healthy", "degraded") and isinstance(health["reasons"], list)
