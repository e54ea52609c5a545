"""Two fognode overlays that reach each other only through a plain py-libp2p GossipSub host
(py-libp2p's own Pubsub, GossipSub, Noise and Yamux): every message crosses it both ways.
Checks what node/p2pfix_copies.py (forwards and queued RPCs without the copies a peer holds),
node/p2pfix_pubsubwrite.py (queued RPCs joined into one write) and scored_pubsub's read-ahead
put on the wire against an unmodified py-libp2p peer."""
from __future__ import annotations

import os
from contextlib import AsyncExitStack
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as Noise
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.events import EventBus
from fognode.node.host import OverlayConfig, open_overlay, quiet_libp2p_loggers
from tests.polling import wait_until

TOPIC = "fognode/test/plain-relay/1"


async def test_overlays_gossip_through_a_plain_py_libp2p_relay() -> None:
    quiet_libp2p_loggers()
    kp = create_new_key_pair(os.urandom(32))
    plain = new_host(key_pair=kp,
                     sec_opt={NOISE_ID: Noise(kp, noise_privkey=x25519().private_key)},
                     muxer_opt={TProtocol(YAMUX_ID): Yamux})
    gs = GossipSub(protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11], degree=6, degree_low=4,
                   degree_high=12, heartbeat_initial_delay=0.1, heartbeat_interval=1,
                   spam_protection_enabled=False)
    ps = Pubsub(plain, gs)
    got: dict[int, list[bytes]] = {0: [], 1: []}
    relayed: list[bytes] = []
    with trio.fail_after(90):
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(
                plain.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]))
            await stack.enter_async_context(background_trio_service(ps))
            await stack.enter_async_context(background_trio_service(gs))
            sub = await ps.subscribe(TOPIC)
            nodes = []
            for _ in range(2):
                reg = CollectorRegistry()
                nodes.append(await stack.enter_async_context(open_overlay(
                    OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], peers_low=0),
                    SigningKey(os.urandom(32)), EventBus(reg), reg)))
            a, b = nodes
            for i, n in enumerate(nodes):
                async def on_msg(msg: Any, i: int = i) -> None:
                    got[i].append(msg.data)
                await n.connect(str(plain.get_addrs()[0]))
                await n.subscribe(TOPIC, on_msg)
            async with trio.open_nursery() as nursery:
                async def read_plain() -> None:
                    while True:
                        relayed.append((await sub.get()).data)
                nursery.start_soon(read_plain)
                await wait_until(lambda: len(gs.mesh.get(TOPIC, ())) == 2
                                 and all(len(n.gossipsub.mesh.get(TOPIC, ())) == 1
                                         for n in nodes), what="a mesh through the plain host")
                assert ID.from_base58(b.peer_id) not in a.host.get_network().connections
                for k in range(20):
                    await a.publish(TOPIC, b"a" * 1500 + bytes([k]))
                for k in range(10):
                    await b.publish(TOPIC, b"b" * 300 + bytes([k]))
                await wait_until(lambda: len(got[1]) == 20 and len(got[0]) == 10,
                                 what="every message across the plain host")
                assert got[1] == [b"a" * 1500 + bytes([k]) for k in range(20)]
                assert sorted(got[0]) == [b"b" * 300 + bytes([k]) for k in range(10)]
                # the plain host got them too, as libp2p messages (our overlays send batches)
                await wait_until(lambda: len(relayed) >= 2, what="the plain host's own copies")
                nursery.cancel_scope.cancel()
    await plain.close()
