"""Five `fognode run` processes train one session through the RPC socket; the elected
aggregator of a round after the first is SIGKILLed while the round runs; the session completes.
In the second scenario the starter itself is SIGKILLed and a fallback coordinator finishes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fognode.tools.devnet import wait_until

from tests.conftest import NodeFactory

pytestmark = pytest.mark.slow


def test_five_daemons_train_and_survive_a_killed_aggregator(node_factory: NodeFactory, short_tmp: Path) -> None:
    net = node_factory(5, extra_args=["--set", "overlay.peers_low=4",
                                      "--set", "protocols.fl.tick_interval=0.1",
                                      "--set", "protocols.fl.republish_interval=1.0"])
    ids = {n.peer_id for n in net.nodes}
    for i in range(5):
        wait_until(lambda i=i: {p["peer_id"] for p in net.nodes[i].rpc("node.peers")} >= ids - {net.nodes[i].peer_id},
                   timeout=60, what=f"node {i} to be connected to all others")
    coord = net.nodes[0]
    # 100 local epochs (rounds of 0.34-0.50 s measured): the aggregator is killed within a
    # 0.05 s poll of the round's start, before its participants' updates can reach it (with 2
    # epochs a round took ~0.2 s, and the victim once completed it before the kill landed)
    out = coord.rpc("fl.start", {"task": "synthetic", "rounds": 4, "min_participants": 3,
                                 "participants": 5, "deadline": 15.0, "local_epochs": 100, "lr": 0.05,
                                 "optin_seconds": 5.0,
                                 "task_params": {"alpha": 0.5, "beta": 0.5, "max_samples": 300}})
    sid = out["session_id"]
    killed: tuple[int, str] | None = None

    def progress() -> bool:
        nonlocal killed
        st = coord.rpc("fl.status", [sid, True])
        cur = st.get("current")
        if killed is None and cur and cur["round"] >= 2 and cur["aggregators"] \
                and cur["aggregators"][0] != coord.peer_id:
            victim = next(n for n in net.nodes if n.peer_id == cur["aggregators"][0])
            net.kill(victim.index)
            killed = (cur["round"], victim.peer_id)
        return st["state"] != "running"

    wait_until(progress, timeout=240, interval=0.05, what="the session to end")
    st = coord.rpc("fl.status", [sid, True])
    assert st["state"] == "completed", st
    assert [h["round"] for h in st["history"]] == [1, 2, 3, 4]
    assert all(len(h["accepted"]) >= 3 for h in st["history"])
    if killed is not None:
        rnd, dead = killed
        h = st["history"][rnd - 1]
        assert h["aggregator"] != dead and dead not in h["accepted"]
    # a surviving participant knows the session; the coordinator exports the model
    alive = next(n for n in net.nodes[1:] if killed is None or n.peer_id != killed[1])
    assert sid in [s["session_id"] for s in alive.rpc("fl.sessions")]
    target = short_tmp / "model.pt"
    coord.rpc("fl.export", [sid, str(target)])
    code = "import torch, sys; sd = torch.load(sys.argv[1], weights_only=True); print(sorted(sd))"
    res = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "['bias', 'weight']"
    if killed is None:   # the coordinator was elected in rounds 2 to 4 (about 1 run in 125)
        pytest.skip("no non-coordinator aggregator was elected after round 1: nothing was killed")


def test_five_daemons_finish_a_session_whose_starter_is_killed(node_factory: NodeFactory) -> None:
    """The starter names fallback coordinators (devices whose registry record offers "fl");
    it is SIGKILLed while round 2 runs; the first fallback takes over and completes the
    session, and its fl.status reports every round."""
    net = node_factory(5, extra_args=["--set", "overlay.peers_low=4",
                                      "--set", "protocols.registry.roles_offered=fl",
                                      "--set", "protocols.fl.tick_interval=0.1",
                                      "--set", "protocols.fl.republish_interval=1.0"])
    ids = {n.peer_id for n in net.nodes}
    starter = net.nodes[0]
    for i in range(5):
        wait_until(lambda i=i: {p["peer_id"] for p in net.nodes[i].rpc("node.peers")} >= ids - {net.nodes[i].peer_id},
                   timeout=60, what=f"node {i} to be connected to all others")
    wait_until(lambda: {d["peer"] for d in starter.rpc("registry.devices", {"role": "fl", "online": True})}
               >= ids - {starter.peer_id}, timeout=60, interval=0.5,
               what="the starter to know every other node offers fl")
    out = starter.rpc("fl.start", {"task": "synthetic", "rounds": 4, "min_participants": 3,
                                   "participants": 5, "deadline": 8.0, "local_epochs": 2, "lr": 0.05,
                                   "optin_seconds": 4.0,
                                   "task_params": {"alpha": 0.5, "beta": 0.5, "max_samples": 300}})
    sid = out["session_id"]
    st = starter.rpc("fl.status", [sid, True])
    coords = st["coordinators"]
    assert coords[0] == starter.peer_id and len(coords) == 3 and st["acting_coordinator"] == starter.peer_id

    def round_two_runs() -> bool:
        cur = starter.rpc("fl.status", [sid, True]).get("current")
        return bool(cur) and cur["round"] >= 2
    wait_until(round_two_runs, timeout=120, interval=0.1, what="round 2 to be planned")
    net.kill(0)
    fb = next(n for n in net.nodes if n.peer_id == coords[1])
    wait_until(lambda: fb.rpc("fl.status", [sid, True])["state"] != "running", timeout=180, interval=0.25,
               what="the fallback coordinator to end the session")
    st = fb.rpc("fl.status", [sid, True])
    assert st["state"] == "completed", st
    assert st["role"] == "coordinator" and st["acting_coordinator"] == fb.peer_id
    # every round, however its result reached the fallback (its task may have loaded after
    # round 1 ran; tests/fl/test_standby.py)
    assert [h["round"] for h in st["history"]] == [1, 2, 3, 4], st["history"]
    assert any("taken over by" in f for h in st["history"] for f in h["failures"]), st["history"]
    # the final model is saved in a worker thread after the session is reported completed
    wait_until(lambda: fb.rpc("fl.status", [sid, True])["model_file"] is not None, timeout=30,
               interval=0.25, what="the fallback coordinator to save the final model")
    # the other survivors followed it to the end
    for n in net.nodes[1:]:
        ps = n.rpc("fl.status", [sid, True])
        assert ps["acting_coordinator"] == fb.peer_id
        wait_until(lambda n=n: n.rpc("fl.status", [sid, True])["state"] == "completed", timeout=15,
                   interval=0.25, what=f"node {n.index} to see the session completed")
