"""A status that does not decode, from a throw-away origin, is charged to the peer that relayed
it and is not relayed further (issue 10 item 5): two real daemons, A and B, and a hostile
py-libp2p host connected to A only (protocols/monitor/protocol.py `_check_status`)."""
from __future__ import annotations

import urllib.request
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from fognode.tools.bench.attacks import hostile_peer
from fognode.tools.bench.attacks.bad_status import send_statuses
from fognode.tools.bench.attacks.gap_bomb import STATUS_TOPIC, valid_status
from fognode.tools.devnet import free_port
from tests.conftest import NodeFactory

pytestmark = pytest.mark.slow

ERRORS = "fognode_node_remote_protocol_errors_total"


def errors(port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.name == ERRORS and s.labels.get("protocol") == STATUS_TOPIC:
                return s.value
    return 0.0


async def test_a_bad_status_is_charged_to_its_relayer_and_not_relayed(
        node_factory: NodeFactory) -> None:
    ports = [free_port(), free_port()]
    net = node_factory(2, start=False,
                       extra_args=["--set", "protocols.monitor.status_interval=0.5"])
    a, b = net.nodes
    a.args, b.args = ["--metrics-port", str(ports[0])], ["--metrics-port", str(ports[1])]
    await trio.to_thread.run_sync(lambda: net.start_all())

    async def uptime(node: Any, of: str) -> float:
        """`of`'s uptime in the last status `node` has from it; -1 if none."""
        rows: Any = await trio.to_thread.run_sync(lambda: node.rpc("monitor.network", timeout=30))
        return next((r["uptime_s"] for r in rows if r["peer_id"] == of), -1.0)

    with trio.fail_after(120):
        async with hostile_peer(a.addr) as evil:
            # A relays the hostile peer's good statuses to B...
            [good] = await send_statuses(evil, [valid_status()])
            while await uptime(b, good) < 0:
                await trio.sleep(0.1)
            # ...but not 5 that do not decode, each from a fresh origin: A charges the peer
            # that relayed them to it (the hostile one) and stops them there
            # (the first few put the hostile peer below the graylist threshold: A then ignores
            # the rest of its RPCs unread)
            await send_statuses(evil, [b"\x81\xa1v\x01"] * 5)    # {"v": 1}: fields missing
            while await trio.to_thread.run_sync(errors, ports[0]) < 1:
                await trio.sleep(0.1)
            # barrier: a status A publishes from now on reaches B after anything A relayed
            # before (one pubsub stream from A to B, in order)
            mark = await uptime(a, a.peer_id)
            while await uptime(b, a.peer_id) <= mark:
                await trio.sleep(0.1)
            assert await trio.to_thread.run_sync(errors, ports[1]) == 0   # never relayed to B
    log = a.log_path.read_text(errors="replace")
    lines = [ln for ln in log.splitlines() if f"broke {STATUS_TOPIC}" in ln]
    assert lines and all(f"peer {evil.peer_id} " in ln for ln in lines), lines
    assert "Traceback" not in log
