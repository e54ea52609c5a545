"""py-libp2p 0.8.1 fix: a stream to a peer whose only connection is closing dials the peer
afresh instead of failing.

Symptom (upstream report form). `SwarmConn.close` sets its `event_closed` first and leaves
`Swarm.connections` only at the end of its cleanup, after the muxer's close (Yamux.close
writes GO_AWAY under the connection's write lock and ends with `trio.sleep(0.1)`): for 0.1 s
or more the swarm holds a connection that `is_closed`. Meanwhile `BasicHost.connect` returns
at once, since the swarm "has a connection" to the peer, and `Swarm.new_stream` does not dial
either (it dials only when it holds no connection at all), filters the closed one out and
raises `SwarmException("No valid connections available for peer ...")`. Every stream open to
that peer fails, however reachable the peer is, until the old connection is gone. In the FL
benchmark (`python -m fognode.tools.bench.fl --part rounds`, 10 daemons on 127.0.0.1) a
participant's update retry hung 3.4 s on a connection that a cut write had broken
(node/p2pfix_noiseio.py, "A cancelled write") and then, that connection closing, failed so;
the update went to the fallback aggregator and reached the primary after a 1 s backoff: a
5.18 s round against 0.3 s (session 30, the round's timeline). Reproduction:
tests/node/test_p2pfix_redial.py (a stream opened while the peer's connection closes).

Fix. `has_live_connection(network, peer)` is what "connected" means for a stream open: some
connection to the peer is not closed. `connect(host, peer_info)` is `BasicHost.connect`, except
that when every connection the swarm holds to the peer is closing it records the addresses as
`connect` does and dials with `Swarm.dial_peer`, which skips closed connections and dials (a
dial already in flight to the peer is waited for, not doubled). The new connection serves the
stream; the old one leaves the swarm when its cleanup ends (node/host.py's `_on_connected`
accounts for a connection that arrives while the old one closes). node/dialer.py and
node/host.py's `open_stream` use these two; nothing else changes, and the wire is the same.
"""
from __future__ import annotations

from typing import Any

PEERSTORE_TTL = 120     # seconds: what BasicHost.connect gives the addresses it is handed


def has_live_connection(network: Any, peer: Any) -> bool:
    """Whether the swarm `network` holds a connection to `peer` (a libp2p ID) that is not
    closed or closing."""
    return any(not c.is_closed for c in network.get_connections(peer))


async def connect(host: Any, peer_info: Any) -> None:
    """`host.connect(peer_info)`, dialling afresh when every connection the swarm holds to the
    peer is closing (module doc). Raises what `host.connect` raises (SwarmException when no
    address answers)."""
    network = host.get_network()
    peer = peer_info.peer_id
    if network.get_connections(peer) and not has_live_connection(network, peer):
        host.get_peerstore().add_addrs(peer, peer_info.addrs, PEERSTORE_TTL)
        await network.dial_peer(peer)
        return
    await host.connect(peer_info)
