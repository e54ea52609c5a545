"""Our Kademlia DHT (node/dht.py, node/dhtquota.py): its own protocol id, and PUT_VALUE
admission against a Sybil flood, on real overlays on 127.0.0.1."""
from __future__ import annotations

import logging
import os
import time
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, AsyncIterator

import pytest
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.dht import DHT_PROTOCOL, IPFS_KAD_PROTOCOL
from fognode.node.dhtquota import LOCAL, DhtLimits, RecordQuota, Refusal, namespace_of
from fognode.node.errors import ConfigError
from fognode.node.events import EventBus
from fognode.node.host import Libp2pOverlay, OverlayConfig, open_overlay
from fognode.protocols.registry.record import Capabilities, make_profile, sign_record
from fognode.protocols.registry.validator import DeviceRecordValidator, device_key
from fognode.tools.bench.attacks import hostile_peer
from fognode.tools.bench.attacks.dht_flood import attack, get_value_from, sybil_record
from tests.overlays import metric
from tests.polling import wait_until

LOCAL_ADDR = ["/ip4/127.0.0.1/tcp/0"]


@asynccontextmanager
async def overlays(n: int, **kw: Any) -> AsyncIterator[list[Libp2pOverlay]]:
    """n overlays on 127.0.0.1 with the registry's device-record validator, each bootstrapped
    to the first."""
    async with AsyncExitStack() as stack:
        nodes: list[Libp2pOverlay] = []
        for _ in range(n):
            reg = CollectorRegistry()
            boot = [nodes[0].listen_addrs()[0]] if nodes else []
            cfg = OverlayConfig(listen=LOCAL_ADDR, bootstrap=boot, connmgr_interval=0.3, **kw)
            ov = await stack.enter_async_context(
                open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(reg), reg))
            ov.register_dht_validator("fognode", DeviceRecordValidator(time.time))
            nodes.append(ov)
        yield nodes



# -- the protocol id ----------------------------------------------------------------------------

async def test_records_travel_over_fognode_kad_only() -> None:
    with trio.fail_after(30):
        async with overlays(2, peers_low=1) as (a, b):
            await wait_until(lambda: a.dht.get_routing_table_size() >= 1
                             and b.dht.get_routing_table_size() >= 1, timeout=15)
            from libp2p.peer.id import ID
            protos = a.host.get_peerstore().get_protocols(ID.from_base58(b.peer_id))
            assert DHT_PROTOCOL in protos and IPFS_KAD_PROTOCOL not in protos
            assert IPFS_KAD_PROTOCOL not in [str(p) for p in a.host.get_mux().handlers]
            key, value = sybil_record()      # any valid device record of its own key
            await a.dht_put(key.decode(), value)
            assert await b.dht_get(key.decode()) == value
            assert key in b.dht.value_store.store    # b holds it: it came over /fognode/kad


async def test_a_peer_speaking_only_ipfs_kad_is_not_served() -> None:
    """A public-IPFS-style peer: its /ipfs/kad/1.0.0 stream is refused by multistream, it never
    enters our routing table, and our puts never reach its /ipfs/kad/1.0.0 handler."""
    from libp2p.custom_types import TProtocol

    with trio.fail_after(30):
        async with overlays(1, peers_low=0) as (victim,):
            async with hostile_peer(victim.listen_addrs()[0]) as hp:
                with pytest.raises(Exception):
                    await hp.raw_stream(IPFS_KAD_PROTOCOL)
                s = await hp.raw_stream(DHT_PROTOCOL)          # ours is served
                await s.close()

            reached: list[str] = []

            async def ipfs_kad(stream: Any) -> None:
                reached.append(str(stream.muxed_conn.peer_id))
                await stream.reset()

            reg = CollectorRegistry()
            cfg = OverlayConfig(listen=LOCAL_ADDR, peers_low=0)
            async with open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(reg), reg) as ipfs:
                ipfs.host.remove_stream_handler(TProtocol(DHT_PROTOCOL))
                ipfs.host.set_stream_handler(TProtocol(IPFS_KAD_PROTOCOL), ipfs_kad)
                await ipfs.connect(victim.listen_addrs()[0])
                from libp2p.peer.id import ID
                pid = ID.from_base58(ipfs.peer_id)

                def identified() -> bool:
                    try:
                        return IPFS_KAD_PROTOCOL in victim.host.get_peerstore().get_protocols(pid)
                    except Exception:      # not in the peerstore before identify
                        return False

                await wait_until(identified, timeout=10)
                assert not await victim.dht.add_peer(pid)
                assert not victim.dht.routing_table.peer_in_table(pid)
                key, value = sybil_record()
                await victim.dht_put(key.decode(), value)
                assert reached == []


# -- admission: sans-IO policy ------------------------------------------------------------------

def test_quota_refuses_instead_of_evicting() -> None:
    q = RecordQuota(DhtLimits(records_per_peer=2, records_per_namespace=3, max_records=4,
                              max_record_size=256))
    assert q.check(b"/ns/a", 10, "p1") is None
    q.charge(b"/ns/a", "p1")
    q.charge(b"/ns/b", "p1")
    assert q.check(b"/ns/c", 10, "p1") is Refusal.PER_PEER
    assert q.check(b"/ns/a", 10, "p1") is None               # an update grows nothing
    assert q.check(b"/ns/a", 300, "p1") is Refusal.TOO_LARGE
    q.charge(b"/ns/c", "p2")
    assert q.check(b"/ns/d", 10, "p3") is Refusal.NAMESPACE_FULL
    q.charge(b"/other/x", LOCAL)                             # own records: never refused
    assert q.check(b"/third/y", 10, "p3") is Refusal.STORE_FULL
    assert q.check(b"/third/y", 10, LOCAL) is None
    q.release(b"/ns/a")
    assert q.held_by("p1") == 1 and q.in_namespace("/ns") == 2 and len(q) == 3
    assert q.check(b"/ns/d", 10, "p3") is None
    q.reconcile([b"/ns/c"])
    assert len(q) == 1 and q.held_by("p1") == 0 and q.held_by("p2") == 1
    assert namespace_of(b"/fognode/device/12D3Koo") == "/fognode/device"
    assert namespace_of(b"plain") == "plain"
    assert Refusal.PER_PEER.peer_fault and not Refusal.NAMESPACE_FULL.peer_fault


@pytest.mark.parametrize("kw,key", [
    ({"dht_max_records": 0}, "overlay.dht_max_records"),
    ({"dht_max_records": 30000}, "overlay.dht_max_records"),
    ({"dht_records_per_namespace": 5000}, "overlay.dht_records_per_namespace"),
    ({"dht_records_per_peer": 0}, "overlay.dht_records_per_peer"),
    ({"dht_max_record_size": 10}, "overlay.dht_max_record_size"),
])
def test_dht_config_errors_name_the_key(kw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        OverlayConfig(**kw).validate()
    assert e.value.key == key


# -- admission: the attack ----------------------------------------------------------------------

async def test_sybil_put_flood_leaves_real_records_and_is_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fognode.dht")
    limits = dict(dht_records_per_peer=8, dht_records_per_namespace=24, dht_max_records=32)
    with trio.fail_after(60):
        async with overlays(2, peers_low=1, **limits) as (victim, honest):
            await wait_until(lambda: victim.dht.get_routing_table_size() >= 1, timeout=15)
            # the real records: each node puts its own, as the registry role does
            real = []
            for ov, key in ((victim, victim.identity), (honest, honest.identity)):
                now = int(time.time())
                rec = sign_record(key, seq=1, issued=now, expires=now + 3600,
                                  caps=Capabilities(cores=2), profile=make_profile("eu", "pc", []))
                await ov.dht_put(device_key(ov.peer_id), rec.encode())
                real.append((device_key(ov.peer_id), rec.encode()))
            assert device_key(honest.peer_id).encode() in victim.dht.value_store.store

            counts = await attack(victim.listen_addrs()[0], seconds=30, identities=5,
                                  per_identity=20)
            assert counts["records_sent"] == 100
            ns = victim.dht.admission.quota.in_namespace("/fognode/device")
            assert ns <= 24 and len(victim.dht.value_store.store) <= 32
            assert counts["records_stored"] == ns - 2            # all but the two real ones
            assert counts["records_refused"] == 100 - counts["records_stored"]
            refused = {r.value: metric(victim, "fognode_node_dht_put_refused_total",
                                       reason=r.value) for r in Refusal}
            assert refused["per_peer"] > 0 and refused["namespace_full"] > 0
            assert sum(refused.values()) == counts["records_refused"]
            assert metric(victim, "fognode_node_dht_records") == len(victim.dht.value_store.store)
            # the real records survive and are still served
            async with hostile_peer(victim.listen_addrs()[0]) as reader:
                for key, value in real:
                    assert await get_value_from(reader, key) == value
            # a peer that broke the per-peer cap was charged; the log is rate-limited
            assert any(victim.violations.value(p, time.monotonic()) > 0 for p in victim.violations)
            lines = [r for r in caplog.records if r.name == "fognode.dht"]
            assert 1 <= len(lines) <= 4, [r.getMessage() for r in lines]
            assert all(r.levelno == logging.WARNING for r in lines)


async def test_invalid_put_is_counted_and_charged() -> None:
    with trio.fail_after(30):
        async with overlays(1, peers_low=0) as (victim,):
            async with hostile_peer(victim.listen_addrs()[0]) as hp:
                from fognode.tools.bench.attacks.dht_flood import _put_message, _read_message
                key, value = sybil_record()
                other, _ = sybil_record()
                s = await hp.raw_stream(DHT_PROTOCOL)
                await s.write(_put_message(other, value))     # a record under a foreign key
                with pytest.raises(Exception):
                    await _read_message(s)
                assert metric(victim, "fognode_node_dht_put_refused_total", reason="invalid") == 1
                assert victim.violations.value(hp.peer_id, time.monotonic()) > 0
                assert other not in victim.dht.value_store.store


async def test_provider_records_from_fresh_identities_are_capped() -> None:
    """The same pattern for ADD_PROVIDER: py-libp2p caps providers per key (20) and
    ADD_PROVIDERs per peer (10 per 10 s) but not the store; fresh identities each providing a
    few keys would grow it without bound."""
    from libp2p.peer.id import ID

    from fognode.tools.bench.attacks.dht_flood import _read_message, add_provider_message
    limits = dict(dht_records_per_peer=4, dht_records_per_namespace=6, dht_max_records=6)
    with trio.fail_after(30):
        async with overlays(1, peers_low=0, **limits) as (victim,):
            for _ in range(2):
                async with hostile_peer(victim.listen_addrs()[0]) as hp:
                    me = ID.from_base58(hp.peer_id).to_bytes()
                    addr = hp.overlay.host.get_addrs()[0].to_bytes()
                    s = await hp.raw_stream(DHT_PROTOCOL)
                    for _ in range(6):
                        await s.write(add_provider_message(os.urandom(32), me, [addr]))
                        await _read_message(s)                  # echoed either way
                    await s.close()
            name = "fognode_node_dht_provider_refused_total"
            assert metric(victim, name, reason="per_peer") == 2
            assert metric(victim, name, reason="store_full") == 4
            assert victim.dht.provider_store.size() == 6
            assert metric(victim, "fognode_node_dht_provider_records") == 6
