"""The registry role on real overlays (node/host.py) on 127.0.0.1, several nodes in one process."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.errors import LocalProtocolError, RpcError, StreamClosed
from fognode.node.wire import pack, unpack
from fognode.node.events import EventBus
from fognode.node.host import Libp2pOverlay, OverlayConfig, open_overlay, peer_id_from_pubkey
from fognode.node.role import NodeContext
from fognode.protocols.registry import direct
from fognode.protocols.registry.config import RegistryConfig
from fognode.protocols.registry.events import DeviceCapabilitiesChanged, DeviceOffline
from fognode.protocols.registry.probe import probe
from fognode.protocols.registry.protocol import RegistryRole
from fognode.protocols.registry.record import Capabilities
from fognode.protocols.registry.view import Criteria

LOCAL = ["/ip4/127.0.0.1/tcp/0"]
CFG = RegistryConfig(device_type="server", roles_offered=["fl"], heartbeat_interval=0.5,
                     offline_after=3.0, eigentrust_interval=0.5, probe_interval=3600.0,
                     republish_interval=600.0, dht_timeout=5.0)


@dataclass
class Node:
    key: SigningKey
    overlay: Libp2pOverlay
    role: RegistryRole
    role_scope: trio.CancelScope     # the role only (a graceful stop: the daemon stops roles first)
    events: EventBus
    stop_overlay: trio.Event         # then the overlay, left normally (py-libp2p 0.8.1 leaks the
    done: trio.Event                 # sockets of a host torn down by cancellation)

    async def stop(self) -> None:
        self.role_scope.cancel()
        self.stop_overlay.set()
        await self.done.wait()


async def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        with trio.fail_after(timeout):
            while not cond():
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


async def start_node(nursery: trio.Nursery, key: SigningKey, datadir: Path, genesis: dict[str, Any],
                     boot: list[str], region: str, cfg: RegistryConfig = CFG) -> Node:
    done = trio.Event()
    stop_overlay = trio.Event()

    async def serve(*, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_node(task_status=task_status)
        finally:
            done.set()

    async def serve_node(*, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        reg = CollectorRegistry()
        bus = EventBus(reg)
        ocfg = OverlayConfig(listen=LOCAL, bootstrap=boot, peers_low=8, connmgr_interval=0.3)
        async with open_overlay(ocfg, key, bus, reg) as ov:
            ctx = NodeContext(peer_id=ov.peer_id, identity=key, overlay=ov, events=bus,
                              metrics=reg, datadir=datadir, genesis=genesis, region=region)
            role = RegistryRole(ctx, cfg)
            with trio.CancelScope() as role_scope:
                async with trio.open_nursery() as n:
                    await n.start(role.run)
                    task_status.started(Node(key, ov, role, role_scope, bus, stop_overlay, done))
                    await trio.sleep_forever()
            await stop_overlay.wait()
    return await nursery.start(serve)


async def test_registry_role_on_four_overlays(tmp_path: Path) -> None:
    keys = [SigningKey(os.urandom(32)) for _ in range(4)]
    ids = [peer_id_from_pubkey(bytes(k.verify_key)) for k in keys]
    genesis = {"registry": {"pretrusted": ids[:1]}}
    with trio.fail_after(150):
        async with trio.open_nursery() as nursery:
            nodes: list[Node] = []
            for i, k in enumerate(keys):
                boot = [nodes[0].overlay.listen_addrs()[0]] if nodes else []
                d = tmp_path / f"n{i}"
                d.mkdir()
                nodes.append(await start_node(nursery, k, d, genesis, boot,
                                              "eu-west" if i < 3 else "us-east"))
            # every node finds every other's record
            await wait_until(lambda: all(len(n.role.core.view) == 4 for n in nodes), 60,
                             "all records in all views")
            a, b = nodes[0].role, nodes[1].role
            rows = await a.rpc_devices(region="eu-west", online=True)
            assert {r["peer"] for r in rows} == set(ids[:3])
            assert (await a.rpc_devices(region="us-east"))[0]["peer"] == ids[3]
            assert await a.rpc_devices(min_cores=10**6) == []
            with pytest.raises(RpcError) as e:
                await a.rpc_devices(min_memory_gb=-1.0)
            assert e.value.code == 702
            shown = await a.rpc_show(ids[2])
            assert shown["peer"] == ids[2] and shown["caps"]["cores"] == probe(tmp_path).cores
            with pytest.raises(RpcError) as e:
                await a.rpc_show("not-a-peer")
            assert e.value.code == 701
            with pytest.raises(RpcError) as e:
                await a.rpc_show(peer_id_from_pubkey(os.urandom(32)))
            assert e.value.code == 700
            # the DHT holds the records (a look-up bypassing the view)
            value = await a.ctx.overlay.dht_get("/fognode/device/" + ids[3])
            assert value is not None
            # the namespace validator guards the DHT: a forged record is refused and counted
            raw = unpack(value)
            raw["caps"]["cores"] = 512
            with pytest.raises(ValueError, match="bad_signature"):
                await a.ctx.overlay.dht_put("/fognode/device/" + ids[3], pack(raw))
            assert a.ctx.metrics.get_sample_value(
                "fognode_registry_rejected_total", {"what": "dht", "reason": "bad_signature"}) == 1
            # the ping stream answers pings and resets on garbage
            with trio.fail_after(10):
                while not await a._ping(ids[1]):
                    await trio.sleep(0.1)
            page = await direct.pull_sync(a.ctx.overlay, ids[1], b"", 0, 5.0)
            assert page is not None and not page.more and len(page.records) == 4
            pulled = await direct.pull_record(a.ctx.overlay, ids[1], 5.0)
            assert pulled == b.core.own.encode()
            s = await a.ctx.overlay.open_stream(ids[1], "/fognode/registry/1.0.0")
            await s.send({"v": 1, "t": "nope"})
            with pytest.raises(StreamClosed):
                await s.recv(max_size=64)
            await s.close()
            # a capability change is seen by all
            sub = nodes[2].events.subscribe("t", [DeviceCapabilitiesChanged])
            caps = nodes[1].role.core.own.caps
            new = Capabilities(**{**caps.__dict__, "cores": (caps.cores or 1) + 64})
            b._do(b.core.update_capabilities(new, b.ctx.clock()))
            await wait_until(lambda: all(n.role.core.view.get(ids[1]).caps.cores == new.cores
                                         for n in nodes), 10, "the changed record everywhere")
            ev = await sub.receive()
            assert isinstance(ev, DeviceCapabilitiesChanged) and ev.changed == ("cores",)
            out = await b.rpc_update(roles=["fl", "market"])
            assert out["roles"] == ["fl", "market"]
            await wait_until(lambda: all(n.role.core.query(Criteria(role="market")) == [b.core.own]
                                         for n in nodes), 10, "the new role everywhere")
            with pytest.raises(RpcError):
                await b.rpc_update(roles=["x" * 100])
            # reputation: reports travel on gossip, scores are recomputed everywhere
            for i, n in enumerate(nodes):
                for j in range(4):
                    if i != j:
                        await n.role.rpc_reputation_report(ids[j], "fl", j != 3, 1.0, f"r{i}{j}")
            with pytest.raises(RpcError) as e:
                await a.rpc_reputation_report(ids[0], "fl", True)          # about itself
            assert e.value.code == 705
            with pytest.raises(LocalProtocolError):
                a.reputation_service.report_outcome(ids[0], "fl", True)
            await wait_until(lambda: all(n.role.core.reputation.has_service("fl") and
                                         n.role.core.reputation.score(ids[3], "fl") == 0.0 and
                                         n.role.core.reputation.score(ids[1], "fl") > 0.5
                                         for n in nodes), 15, "reputation everywhere")
            opage = await direct.pull_sync(a.ctx.overlay, ids[1], b"", 0, 5.0, observations=True)
            assert opage is not None and len(opage.records) == b.core.book.accepted >= 12
            top = await a.rpc_reputation_top("fl", 2)
            assert ids[3] not in {t["peer"] for t in top}
            rep = await a.rpc_reputation_show(ids[1])
            assert set(rep["scores"]) == {"*", "fl"}
            with pytest.raises(RpcError) as e:
                await a.rpc_reputation_show(ids[1], "nope")
            assert e.value.code == 704
            svc = a.ctx.services.require("registry")
            assert {r.peer_id for r in svc.devices(Criteria(min_reputation=0.5, service="fl"))} \
                == set(ids[:3])
            # a node whose role stops says goodbye: offline at once
            sub_off = nodes[0].events.subscribe("off", [DeviceOffline])
            nodes[3].role_scope.cancel()
            await wait_until(lambda: not a.core.liveness.is_online(ids[3]), 2.0, "node 3 offline")
            off = await sub_off.receive()
            assert isinstance(off, DeviceOffline) and (off.peer_id, off.reason) == (ids[3], "goodbye")
            # a node whose role dies without a goodbye (its host still up, so pings reach it
            # but nobody answers) is offline within offline_after
            t0 = trio.current_time()
            nodes[2].role.core.goodbye = lambda now: []
            nodes[2].role_scope.cancel()
            await wait_until(lambda: not a.core.liveness.is_online(ids[2]), CFG.offline_after + 1.5,
                             "node 2 offline")
            assert trio.current_time() - t0 <= CFG.offline_after + 1.5
            assert {r["peer"] for r in await a.rpc_devices(online=True)} == set(ids[:2])
            assert a.ctx.metrics.get_sample_value("fognode_registry_devices_known") == 4
            assert a.ctx.metrics.get_sample_value("fognode_registry_devices_online") == 2
            for n in reversed(nodes):          # one at a time, as separate daemons would stop
                await n.stop()
