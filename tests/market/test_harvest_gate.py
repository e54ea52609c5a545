"""The market follows the harvest policy: offers withdrawn while it suspends work, refused
then, published again within its capacity when it resumes (harvest_gate.py, sans-IO), and on a
real daemon whose sensor trace goes on battery and back."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from fognode.node.errors import RpcError
from fognode.protocols.market.harvest_gate import Capacity, HarvestGate
from fognode.tools.devnet import wait_until

from tests.conftest import NodeFactory


def test_gate_withdraws_holds_and_republishes_within_capacity() -> None:
    own = [{"id": "wasm", "cores": 8, "memory_mib": 4096, "service": "compute.wasm"}]
    republished: list[dict[str, Any]] = []
    gate = HarvestGate(withdraw_all=lambda: [dict(o) for o in own], republish=republished.append)
    assert gate.check(None, None) == (0, 0) and gate.refusal() is None
    assert gate.check("on_battery", None) == (1, 0)
    assert "on_battery" in (gate.refusal() or "")
    assert gate.check("on_battery,too_hot", None) == (0, 0)          # still suspended: nothing again
    assert gate.check(None, Capacity(cores=2, memory_mib=1024)) == (0, 1)
    assert republished == [{"id": "wasm", "cores": 2, "memory_mib": 1024, "service": "compute.wasm"}]
    assert gate.refusal() is None and gate.check(None, None) == (0, 0)


def write_trace(path: Path, *, plugged: bool) -> None:
    rec = {"time": 1.0, "power_plugged": plugged, "battery_percent": 90.0, "cpu_count": 2,
           "owner_cpu_pct": 0.0, "memory_available_bytes": 6 << 30, "memory_total_bytes": 8 << 30}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec) + "\n")
    os.replace(tmp, path)


@pytest.mark.slow
def test_a_daemon_on_battery_withdraws_its_offer_and_offers_again_when_charging(
        node_factory: NodeFactory, short_tmp: Path) -> None:
    trace = short_tmp / "trace.jsonl"
    write_trace(trace, plugged=True)
    net = node_factory(1, extra_args=["--set", f"protocols.harvest.sensors={trace}",
                                      "--set", "protocols.harvest.trace_mode=follow",
                                      "--set", "protocols.harvest.tick_interval=0.25",
                                      "--set", "protocols.harvest.min_suspend_s=0"])
    node = net.nodes[0]

    def own() -> int:
        return int(node.rpc("node.info")["roles"]["market"].get("own_offers", -1))

    wait_until(lambda: node.rpc("harvest.status")["state"] == "running", timeout=60, interval=0.25,
               what="the harvest policy to let the node work")
    node.rpc("market.offer", {"price": "0.5"})
    assert own() == 1
    write_trace(trace, plugged=False)
    wait_until(lambda: own() == 0, timeout=60, interval=0.25, what="the offer to be withdrawn on battery")
    with pytest.raises(RpcError) as e:
        node.rpc("market.offer", {"price": "0.5"})
    assert "harvest policy suspends work" in str(e.value), e.value
    write_trace(trace, plugged=True)
    wait_until(lambda: own() == 1, timeout=60, interval=0.25, what="the offer to be published again")
