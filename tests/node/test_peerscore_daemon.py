"""A real `fognode run` daemon against a peer that sends garbage on /meshsub/1.2.0 and invalid
ledger gossip: the faults are counted per protocol, charged to the peer (pruned, then its RPCs
ignored), and logged as a few rate-limited WARNING lines without a traceback (issue 10, item 5)."""
from __future__ import annotations

import urllib.request

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from fognode.node.wire import pack
from fognode.tools.bench.attacks import hostile_peer
from fognode.tools.bench.attacks.invalid_gossip import (CERT_TOPIC, MESHSUB, attack, join_mesh,
                                                        pruned, send_garbage_streams, send_valid)
from fognode.tools.devnet import free_port
from tests.conftest import NodeFactory

pytestmark = pytest.mark.slow


def scrape(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def wait_metric(port: int, name: str, at_least: float, *, stall: float = 20.0,
                      **labels: str) -> float:
    """The metric once it reaches `at_least`. A loaded daemon counts slowly but counts: this
    fails (TimeoutError) only when the metric has not grown for `stall` s (the caller's
    fail_after bounds the whole wait)."""
    last, since = -1.0, trio.current_time()
    while True:
        v = await trio.to_thread.run_sync(lambda: scrape(port, name, **labels))
        if v >= at_least:
            return v
        if v > last:
            last, since = v, trio.current_time()
        elif trio.current_time() - since > stall:
            raise TimeoutError(f"{name} {labels} stuck at {v} (< {at_least}) for {stall:g} s")
        await trio.sleep(0.1)


async def test_garbage_and_bad_ledger_gossip_are_counted_charged_and_rate_limited(
        node_factory: NodeFactory) -> None:
    port = free_port()
    net = node_factory(1, start=False)
    node = net.nodes[0]
    node.args = ["--metrics-port", str(port)]
    net.start(0)
    errors = "fognode_node_remote_protocol_errors_total"
    with trio.fail_after(180):
        # the benchmark's attack: invalid messages of every kind and 17 garbage streams
        done = await attack(node.addr, seconds=30)
        assert done["joined_mesh"] == 1 and done["invalid_sent"] == 3
        assert done["garbage_streams"] == 17 and done["pruned"] == 1, done
        assert await wait_metric(port, errors, 17, protocol=MESHSUB) == 17
        await wait_metric(port, "fognode_node_gossip_score_actions_total", 1,
                          action="bad_signature")
        async with hostile_peer(node.addr) as evil:
            await join_mesh(evil, CERT_TOPIC, timeout=20)
            # five certificate batches in valid envelopes whose certificates are junk: the
            # ledger's content check refuses them before relay (before: an ERROR with a
            # traceback each); each refusal is also an invalid message of the peer, so after
            # the first one or two it is graylisted and the rest go unread
            junk_before = scrape(port, errors, protocol=CERT_TOPIC)
            for seq in range(1, 6):
                await send_valid(evil, CERT_TOPIC, seq, pack({"v": 1, "certs": [b"junk"]}))
            await wait_metric(port, errors, junk_before + 1, protocol=CERT_TOPIC)
            assert await pruned(evil, CERT_TOPIC, timeout=10), "still in the daemon's mesh"
            # 200 garbage streams on the pubsub protocol
            opened = await send_garbage_streams(evil, 200)
            assert opened >= 150
            await wait_metric(port, errors, 17 + opened, protocol=MESHSUB)
            # by now it is graylisted: even a valid message is ignored
            before = scrape(port, "fognode_node_gossip_score_actions_total",
                            action="graylisted_rpc")
            await send_valid(evil, CERT_TOPIC, 6, pack({"v": 1, "certs": []}))
            await wait_metric(port, "fognode_node_gossip_score_actions_total", before + 1,
                              action="graylisted_rpc")
            assert node.rpc("node.info")["peer_id"] == node.peer_id   # still serving
    log = node.log_path.read_text(errors="replace")
    about = [line for line in log.splitlines() if evil.peer_id in line]
    assert "Traceback" not in log, log[-3000:]
    assert about and all(" WARNING " in line for line in about), about
    assert len(about) <= 4, about     # one per protocol per minute, not one per stream
    assert any(MESHSUB in line for line in about) and any(CERT_TOPIC in line for line in about)
