"""Descriptors in the real DHT: three overlays on 127.0.0.1 with the registry's validator on
`fognode` and HsDescValidator on `fognode-hsdesc` (the namespaces must not collide); a
service's descriptor put by one node is validated and held by the others and opened by a
client on another node; a replayed older revision and a descriptor under a foreign key are
refused."""
from __future__ import annotations

import os
import time
from contextlib import AsyncExitStack

import pytest
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.events import EventBus
from fognode.node.host import Libp2pOverlay, OverlayConfig, open_overlay
from fognode.node.peerid import peer_id_from_pubkey
from fognode.protocols.onion.address import address_from_pubkey
from fognode.protocols.onion.periods import TimePeriods
from fognode.protocols.onion.wire_names import HSDESC_NAMESPACE
from fognode.protocols.onion.descriptor import IntroPoint, build_descriptor
from fognode.protocols.onion.hs_errors import DescriptorReason, DescriptorRejected
from fognode.protocols.onion.hsdesc import DescriptorCache, descriptor_lookups, descriptors_to_publish
from fognode.protocols.onion.hsdir import HsDescValidator
from fognode.protocols.registry.validator import NAMESPACE, DeviceRecordValidator
from tests.polling import wait_until

TP = TimePeriods()


async def test_descriptors_through_the_dht() -> None:
    service = SigningKey.generate()
    address = address_from_pubkey(bytes(service.verify_key))
    relay = SigningKey.generate()
    intros = [IntroPoint(peer_id_from_pubkey(bytes(relay.verify_key)),
                         bytes(SigningKey.generate().verify_key), os.urandom(32))]
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            nodes: list[Libp2pOverlay] = []
            validators: list[HsDescValidator] = []
            for _ in range(3):
                reg = CollectorRegistry()
                boot = [nodes[0].listen_addrs()[0]] if nodes else []
                cfg = OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=boot, connmgr_interval=0.3)
                ov = await stack.enter_async_context(open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(reg), reg))
                ov.register_dht_validator(NAMESPACE, DeviceRecordValidator(time.time))
                v = HsDescValidator(time.time, TP)
                ov.register_dht_validator(HSDESC_NAMESPACE, v)
                nodes.append(ov)
                validators.append(v)
            a, b, c = nodes
            await wait_until(lambda: all(n.dht.get_routing_table_size() >= 2 for n in nodes), 30,
                             "every node knows the other two")
            now = time.time()
            puts = descriptors_to_publish(service, TP, intros, now=now, window=60)
            for put in puts:
                await a.dht_put(put.key, put.value)
            # the other nodes checked and hold them
            for put in puts:
                assert any(put.key.encode() in n.dht.value_store.store for n in (b, c))
            # a client on c finds and opens the descriptor
            cache = DescriptorCache(TP)
            (lookup,) = descriptor_lookups(address, TP, now=now, window=60)
            value = await c.dht_get(lookup.keys[0])
            assert value is not None
            assert cache.open(value, address, lookup.period, now=now).intro_points == tuple(intros)
            # an older revision offered again is refused (b's own validator refuses it before
            # sending; the remote nodes' validators are the same code)
            old = build_descriptor(service, TP, lookup.period, intros, now=now - 10)
            with pytest.raises(DescriptorRejected):
                await b.dht_put(lookup.keys[0], old)
            assert validators[1].rejected[DescriptorReason.OLD_REVISION] >= 1
            # another service's descriptor under this service's key is refused
            other = build_descriptor(SigningKey.generate(), TP, lookup.period, intros, now=now)
            with pytest.raises(DescriptorRejected):
                await b.dht_put(lookup.keys[1], other)
            assert validators[1].rejected[DescriptorReason.WRONG_KEY] >= 1
            assert await c.dht_get(lookup.keys[1]) == value
            # the service moved its introduction points: the newer revision replaces the older
            # one at every node, so a client reading its own node's store gets it
            moved = [IntroPoint(peer_id_from_pubkey(bytes(SigningKey.generate().verify_key)),
                                bytes(SigningKey.generate().verify_key), os.urandom(32))]
            newer = descriptors_to_publish(service, TP, moved, now=now + 1, window=60)
            for put in newer:
                await a.dht_put(put.key, put.value)
            for put in newer:
                await wait_until(lambda: all(n.dht.value_store.get(put.key.encode()) is not None
                                             and n.dht.value_store.get(put.key.encode()).value == put.value
                                             for n in (b, c)), 20, "the newer descriptor held by b and c")
            assert cache.open(await c.dht_get(lookup.keys[0]), address, lookup.period,
                              now=now + 1).intro_points == tuple(moved)
