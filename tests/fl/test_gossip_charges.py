"""FL gossip that does not decode, from throw-away origins, is charged to the peer that relayed
it and is not relayed further; a message of a type this version does not know (a newer
node's) is relayed and ignored (protocols/fl/protocol.py `_check_gossip`). Two real daemons,
A and B, and a hostile py-libp2p host connected to A only."""
from __future__ import annotations

import os
import time
import urllib.request
from typing import Any

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from nacl.signing import SigningKey
from prometheus_client.parser import text_string_to_metric_families

from fognode.node.wire import pack
from fognode.protocols.fl.messages import VERSION
from fognode.protocols.fl.transfer.streams import TOPIC
from fognode.tools.bench.attacks import HostilePeer, hostile_peer
from fognode.tools.bench.attacks.gap_bomb import forged_pubsub_messages
from fognode.tools.devnet import free_port
from tests.conftest import NodeFactory

pytestmark = pytest.mark.slow


def metric(port: int, name: str, **labels: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    return sum(s.value for fam in text_string_to_metric_families(body.decode()) for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def send_fl(peer: HostilePeer, payloads: list[bytes]) -> None:
    """One FL gossip message per payload, each from a fresh origin, in one RPC to the victim."""
    epoch = time.time_ns() // 1_000_000
    msgs: list[object] = []
    for data in payloads:
        msgs.extend(forged_pubsub_messages(SigningKey(os.urandom(32)), TOPIC, (1,), epoch, data))
    victim = ID.from_base58(peer.target_peer)
    pubsub = peer.overlay.pubsub
    with trio.fail_after(30):
        while victim not in pubsub.peers:        # the pubsub stream opens after connect
            await trio.sleep(0.02)
    assert await pubsub.write_msg(pubsub.peers[victim], rpc_pb2.RPC(publish=msgs))  # type: ignore[arg-type]


async def test_bad_fl_gossip_is_charged_to_its_relayer_and_not_relayed(node_factory: NodeFactory) -> None:
    ports = [free_port(), free_port()]
    net = node_factory(2, start=False, extra_args=["--set", "protocols.monitor.status_interval=0.5"])
    a, b = net.nodes
    a.args, b.args = ["--metrics-port", str(ports[0])], ["--metrics-port", str(ports[1])]
    await trio.to_thread.run_sync(lambda: net.start_all())
    errors = "fognode_node_remote_protocol_errors_total"

    async def at(port: int, name: str, **labels: str) -> float:
        return await trio.to_thread.run_sync(lambda: metric(port, name, **labels))

    async def uptime(node: Any, of: str) -> float:
        rows: Any = await trio.to_thread.run_sync(lambda: node.rpc("monitor.network", timeout=30))
        return next((r["uptime_s"] for r in rows if r["peer_id"] == of), -1.0)

    with trio.fail_after(120):
        async with hostile_peer(a.addr) as evil:
            # a newer node's message type: A relays it, B ignores it, nobody is charged
            future = pack({"v": VERSION, "type": "future", "body": {"x": 1}})
            while await at(ports[1], "fognode_fl_unknown_messages_total") < 1:
                await send_fl(evil, [future])
                await trio.sleep(0.5)
            assert await at(ports[0], errors, protocol=TOPIC) == 0
            # 5 that do not decode, each from a fresh origin: A charges the hostile peer that
            # relayed them and stops them there
            bad = [b"\x81\xa1v\x01", pack({"v": VERSION, "type": "plan", "body": {}})] + [b"\xc1"] * 3
            await send_fl(evil, bad)
            while await at(ports[0], errors, protocol=TOPIC) < 1:
                await trio.sleep(0.1)
            # barrier: a status A publishes from now on reaches B after anything A relayed
            # before (one pubsub stream from A to B, in order)
            mark = await uptime(a, a.peer_id)
            while await uptime(b, a.peer_id) <= mark:
                await trio.sleep(0.1)
            assert await at(ports[1], errors, protocol=TOPIC) == 0              # never relayed to B
            assert await at(ports[1], "fognode_fl_bad_messages_total") == 0
            assert await at(ports[0], "fognode_fl_bad_messages_total", channel="gossip") >= 1
    log = a.log_path.read_text(errors="replace")
    lines = [ln for ln in log.splitlines() if f"broke {TOPIC}" in ln]
    assert lines and all(f"peer {evil.peer_id} " in ln for ln in lines), lines
    assert "Traceback" not in log
