"""Five `fognode run` processes train one session through the RPC socket; the elected
aggregator of a round after the first is SIGKILLed while the round runs; the session completes."""
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
                   timeout=30, what=f"node {i} to be connected to all others")
    coord = net.nodes[0]
    out = coord.rpc("fl.start", {"task": "synthetic", "rounds": 4, "min_participants": 3,
                                 "participants": 5, "deadline": 15.0, "local_epochs": 2, "lr": 0.05,
                                 "optin_seconds": 5.0,
                                 "task_params": {"alpha": 0.5, "beta": 0.5, "max_samples": 300}})
    sid = out["session_id"]
    killed: tuple[int, str] | None = None

    def progress() -> bool:
        nonlocal killed
        st = coord.rpc("fl.status", [sid])
        cur = st.get("current")
        if killed is None and cur and cur["round"] >= 2 and cur["aggregators"] \
                and cur["aggregators"][0] != coord.peer_id:
            victim = next(n for n in net.nodes if n.peer_id == cur["aggregators"][0])
            net.kill(victim.index)
            killed = (cur["round"], victim.peer_id)
        return st["state"] != "running"

    wait_until(progress, timeout=240, interval=0.1, what="the session to end")
    st = coord.rpc("fl.status", [sid])
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
