"""Five daemon processes form an overlay from one bootstrap node (issue 2's multi-node test)."""
from __future__ import annotations

import pytest

from fognode.tools.devnet import wait_until

from tests.conftest import NodeFactory

pytestmark = pytest.mark.slow


def connected(net, i: int) -> set[str]:  # type: ignore[no-untyped-def]
    return {p["peer_id"] for p in net.nodes[i].rpc("node.peers")}


def test_five_nodes_find_each_other_and_survive_a_kill(node_factory: NodeFactory) -> None:
    net = node_factory(5, extra_args=["--set", "overlay.peers_low=4",
                                      "--set", "protocols.monitor.status_interval=0.5"])
    ids = {n.peer_id for n in net.nodes}

    # every node sees every other through the DHT (only node 0 was given as bootstrap)
    for i in range(5):
        wait_until(lambda i=i: connected(net, i) >= ids - {net.nodes[i].peer_id}, timeout=60,
                   what=f"node {i} to be connected to all others")

    # node.peers agrees in both directions
    for i in range(5):
        for j in connected(net, i):
            k = next(n.index for n in net.nodes if n.peer_id == j)
            assert net.nodes[i].peer_id in connected(net, k)

    # gossip: every node hears every other node's status announcements
    for i in range(5):
        wait_until(lambda i=i: {s["peer_id"] for s in net.nodes[i].rpc("monitor.network")} >= ids, timeout=45,
                   what=f"node {i} to hear the status gossip of all nodes")

    # SIGKILL one: the others notice, and keep working
    victim = net.nodes[3]
    net.kill(3)
    for i in (0, 1, 2, 4):
        wait_until(lambda i=i: victim.peer_id not in connected(net, i), timeout=10,
                   what=f"node {i} to notice node 3 is gone")
        assert net.nodes[i].rpc("node.info")["roles"]["monitor"]["health"] == "healthy"

    # it rejoins with the same peer id
    info = net.start(3).rpc("node.info")
    assert info["peer_id"] == victim.peer_id
    wait_until(lambda: connected(net, 3) >= ids - {victim.peer_id}, timeout=60,
               what="the restarted node to reconnect to all others")
