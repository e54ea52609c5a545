"""A Sybil PUT_VALUE flood (tools/bench/attacks/dht_flood.py) against a real daemon: the
device records of the real nodes survive, the flood is refused and counted."""
from __future__ import annotations

import urllib.request

import pytest
import trio

from fognode.protocols.registry.record import decode_record
from fognode.protocols.registry.validator import device_key
from fognode.tools.bench.attacks import hostile_peer
from fognode.tools.bench.attacks.dht_flood import attack, get_value_from
from fognode.tools.devnet import free_port
from tests.conftest import NodeFactory

CAPS = ["--set", "overlay.dht_records_per_peer=8", "--set", "overlay.dht_records_per_namespace=24",
        "--set", "overlay.dht_max_records=32", "--set", "protocols.registry.republish_interval=2"]


def scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith("fognode_node_dht_"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@pytest.mark.slow
async def test_sybil_flood_against_a_daemon(node_factory: NodeFactory) -> None:
    port = free_port()
    net = node_factory(2, extra_args=CAPS, start=False)
    net.nodes[0].args = ["--metrics-port", str(port)]
    await trio.to_thread.run_sync(net.start_all)
    victim, other = net.nodes
    with trio.fail_after(180):
        async with hostile_peer(victim.addr) as reader:
            held: dict[str, bytes | None] = {}

            async def serves_real_records() -> None:
                for node in net.nodes:
                    held[node.peer_id] = await get_value_from(reader, device_key(node.peer_id))

            async def poll() -> None:
                while not all(held.get(n.peer_id) for n in net.nodes):
                    await serves_real_records()
                    await trio.sleep(0.2)

            with trio.fail_after(30):
                await poll()

            # a budget, not a pace: the 100 records take a few seconds on a quiet machine
            counts = await attack(victim.addr, seconds=120, identities=5, per_identity=20)
            assert counts["records_sent"] == 100
            assert counts["records_stored"] <= 22 and counts["records_refused"] >= 78

            await serves_real_records()
            for node in net.nodes:
                value = held[node.peer_id]
                assert value is not None, f"the victim lost {node.peer_id}'s device record"
                assert decode_record(value).peer_id == node.peer_id

    assert other.peer_id in {p["peer_id"] for p in victim.rpc("node.peers")}
    m = scrape(port)
    refused = {k: v for k, v in m.items() if k.startswith("fognode_node_dht_put_refused_total")}
    assert m['fognode_node_dht_put_refused_total{reason="per_peer"}'] > 0, refused
    assert m['fognode_node_dht_put_refused_total{reason="namespace_full"}'] > 0, refused
    assert sum(refused.values()) >= counts["records_refused"]
    assert m["fognode_node_dht_records"] <= 32
    log = victim.log_path.read_text()
    assert "DHT PUT_VALUE" in log and "refused" in log
    dht_lines = [ln for ln in log.splitlines() if "fognode.dht" in ln]
    assert 1 <= len(dht_lines) <= 6, dht_lines   # rate-limited, not one line per put
    assert all("WARNING" in ln for ln in dht_lines)
