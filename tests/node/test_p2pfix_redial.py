"""node/p2pfix_redial.py against real overlays on 127.0.0.1: while A's only connection to B
closes (closed, not yet out of the swarm), py-libp2p's own stream open fails with "No valid
connections available", and the overlay's `open_stream` dials B afresh and gets its stream;
and a pin of the py-libp2p functions the fix relies on."""
from __future__ import annotations

import os
from typing import Any

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.host.basic_host import BasicHost
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.events import EventBus
from fognode.node.host import OverlayConfig, open_overlay, quiet_libp2p_loggers
from fognode.node.p2pfix_redial import has_live_connection
from tests import pins
from tests.node.test_p2pfix import echo

ECHO = "/fognode/test/redial-echo/1.0.0"

PINNED = {
    BasicHost.connect: "4e27c0e318dc2484",       # returns at once while the swarm holds any connection
    Swarm.new_stream: "125812a9745b972b",        # dials only when it holds none; "No valid connections"
    Swarm.dial_peer: "da3b538ccaeaeaa6",         # skips closed connections and dials; waits for one in flight
    SwarmConn.close: "442c6259a8e9e45e",         # event_closed first, the muxer's close, then the cleanup
    SwarmConn._cleanup: "84470a285af6c287",      # remove_conn: the end of the window
}


def test_pinned_stream_open_and_connection_close_paths() -> None:
    pins.assert_unchanged(PINNED, "node/p2pfix_redial.py")


async def test_a_stream_to_a_peer_whose_connection_is_closing_dials_it_again() -> None:
    quiet_libp2p_loggers()
    cfg = OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], peers_low=0)
    ra, rb = CollectorRegistry(), CollectorRegistry()
    with trio.fail_after(30):
        async with open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(ra), ra) as a, \
                open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(rb), rb) as b, \
                trio.open_nursery() as nursery:
            b.set_stream_handler(ECHO, echo)
            await a.connect(b.listen_addrs()[0])
            net, pid = a.host.get_network(), ID.from_base58(b.peer_id)
            (old,) = net.get_connections(pid)
            nursery.start_soon(old.close)
            while not old.is_closed:
                await trio.sleep(0)
            # the window: the swarm still holds the closing connection, and nothing else
            assert net.get_connections(pid) == [old]
            assert not has_live_connection(net, pid)
            with pytest.raises(Exception, match="No valid connections available"):
                await a.host.new_stream(pid, [TProtocol(ECHO)])     # py-libp2p alone
            fs = await a.open_stream(b.peer_id, ECHO)
            await fs.send_bytes(b"over a new connection")
            assert await fs.recv_bytes() == b"over a new connection"
            await fs.close()
            assert has_live_connection(net, pid)
            assert old not in [c for c in net.get_connections(pid) if not c.is_closed]
