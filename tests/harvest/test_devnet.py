"""Four `fognode run` processes; one reports "on battery" through its recorded sensor trace:
the network sees it suspended, an FL session does not select it (and it opts into none); once
its trace says it charges again, the next session selects it and its harvest session meters
the training and is credited by the aggregator's signed receipt (when that reached it)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fognode.tools.devnet import wait_until

from tests.conftest import NodeFactory

pytestmark = pytest.mark.slow


def write_trace(path: Path, *, plugged: bool) -> None:
    """Replace the node's trace atomically (the role re-reads it when it changes)."""
    rec = {"time": 1.0, "power_plugged": plugged, "battery_percent": 80.0 if not plugged else 90.0,
           "cpu_count": 2, "owner_cpu_pct": 0.0,
           "memory_available_bytes": 6 << 30, "memory_total_bytes": 8 << 30}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec) + "\n")
    os.replace(tmp, path)


def test_a_node_on_battery_is_not_selected_until_it_charges(node_factory: NodeFactory,
                                                             short_tmp: Path) -> None:
    traces = [short_tmp / f"trace{i}.jsonl" for i in range(4)]
    for i, t in enumerate(traces):
        write_trace(t, plugged=i != 3)
    net = node_factory(4, start=False, extra_args=[
        "--set", "overlay.peers_low=3",
        "--set", "protocols.harvest.tick_interval=0.25",
        "--set", "protocols.harvest.trace_mode=follow",
        "--set", "protocols.harvest.min_suspend_s=0",
        "--set", "protocols.fl.tick_interval=0.1",
        "--set", "protocols.fl.republish_interval=1.0"])
    for node, t in zip(net.nodes, traces):
        node.args = ["--set", f"protocols.harvest.sensors={t}"]
    net.start_all(timeout=60)
    coord, phone = net.nodes[0], net.nodes[3]
    ids = {n.peer_id for n in net.nodes}

    for n in net.nodes:
        wait_until(lambda n=n: {p["peer_id"] for p in n.rpc("node.peers")} >= ids - {n.peer_id},
                   timeout=90, interval=0.25, what=f"node {n.index} to be connected to all others")

    def harvest_view() -> dict[str, str | None]:
        return {r["peer"]: r["harvest"] for r in coord.rpc("registry.devices", {})}
    want = {**{p: "available" for p in ids}, phone.peer_id: "suspended: on_battery"}
    try:
        wait_until(lambda: harvest_view() == want, timeout=90, interval=0.25,
                   what="node 0 to see every node's harvest state")
    except TimeoutError as e:
        raise AssertionError(f"{e}: node 0 sees {harvest_view()}, want {want}") from None
    assert {r["peer"] for r in coord.rpc("registry.devices", {"available": True})} == ids - {phone.peer_id}
    assert phone.rpc("harvest.status")["reasons"] == ["on_battery"]

    params = {"task": "synthetic", "rounds": 1, "min_participants": 3, "participants": 4,
              "deadline": 30.0, "optin_seconds": 3.0, "local_epochs": 1,
              "task_params": {"alpha": 0.5, "beta": 0.5, "max_samples": 200}}
    sid = coord.rpc("fl.start", params)["session_id"]
    wait_until(lambda: coord.rpc("fl.status", [sid])["state"] != "running", timeout=120,
               interval=0.25, what="the first session to end")
    st = coord.rpc("fl.status", {"session": sid, "verbose": True})
    assert st["state"] == "completed", st
    assert phone.peer_id not in st["history"][0]["participants"]
    assert sid not in [s["session_id"] for s in phone.rpc("fl.sessions")]

    # plugged in again: the network sees it available, the next session selects it
    write_trace(traces[3], plugged=True)
    wait_until(lambda: harvest_view()[phone.peer_id] == "available", timeout=30, interval=0.25,
               what="node 0 to see node 3 available again")
    # 30 local epochs: a training of tens of ms (one epoch of `synthetic` takes a few; the meter
    # reads the process's CPU clock in ns, it read 10 ms ticks until stop 28)
    sid2 = coord.rpc("fl.start", {**params, "min_participants": 4, "local_epochs": 30})["session_id"]
    wait_until(lambda: coord.rpc("fl.status", [sid2])["state"] != "running", timeout=120,
               interval=0.25, what="the second session to end")
    st = coord.rpc("fl.status", {"session": sid2, "verbose": True})
    assert st["state"] == "completed", st
    h = st["history"][0]
    assert phone.peer_id in h["participants"]

    # its training was a harvest session, metered; the aggregator's receipt credits it
    def phone_session() -> dict | None:
        got = phone.rpc("harvest.sessions", {"kind": "fl"})
        return got[0] if got and got[0]["state"] == "completed" else None
    hs = wait_until(phone_session, timeout=30, interval=0.25, what="node 3's harvest session to end")
    assert hs["ref"] == sid2 and hs["usage"]["cpu_seconds"] > 0
    # the round's signed result reached it on gossip (which may drop it on a loaded machine):
    # then the receipt was credited, validated as the aggregator accepted its update (a node's
    # own aggregation credits nothing)
    heard = [p for p in phone.rpc("fl.status", {"session": sid2, "verbose": True})["history"]
             if p["round"] == 1]
    if heard and heard[0]["aggregator"] != phone.peer_id:
        ok = heard[0]["accepted"]
        assert (hs["validated"], hs["rejected"]) == ((1, 0) if ok else (0, 1)), (heard, hs)
        assert phone.rpc("harvest.status")["totals"]["validated"] == int(ok)
