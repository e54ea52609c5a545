"""What `open_overlay` (node/host.py) does around the overlay it starts, for py-libp2p 0.8.1's
bites: quiet libp2p's loggers (bite 15, `quiet_libp2p_loggers`), wrap libp2p's own stream
handlers so an exception resets the stream and a peer's garbage is charged to it (bite 2,
`harden_handlers`, `libp2p_fault`), announce our subscriptions again now and then (bite 16,
`reannounce_subscriptions`), dial the bootstrap peers (`bootstrap`) and close every connection
at once on the way out (`close_connections`). Each is handed the pieces it works on."""
from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import multiaddr
import trio

from fognode.node.connmgr import DialError
from fognode.node.faults import RemoteFaults, is_remote_fault, limit_libp2p_errors
from fognode.node.resources import ResourceGate
from fognode.node.streams import guard_raw

log = logging.getLogger("fognode.host")


def quiet_libp2p_loggers() -> None:
    """Bite 15: py-libp2p logs a lot at INFO/WARNING (bite 9: the DHT warns on every normal
    stream close; the swarm's auto-connector forces INFO). Operators should see ours."""
    logging.getLogger("libp2p").setLevel(logging.WARNING)
    for name in ("libp2p.kad_dht", "libp2p.network.auto_connector", "libp2p.host.basic_host",
                 "libp2p.network.swarm", "libp2p.pubsub", "libp2p.identity",
                 "libp2p.host.autonat", "libp2p.stream_muxer", "libp2p.transport",
                 "libp2p.security", "libp2p.protocol_muxer", "libp2p.network"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # an ordinary failed dial is logged at ERROR here; we report it ourselves as a DialError
    # and a peer going away mid-handshake is logged at ERROR by these; it is reported to the
    # caller as DialError / StreamClosed instead
    for name in ("libp2p.transport.tcp", "libp2p.protocol_muxer", "libp2p.host.basic_host",
                 "libp2p.network.swarm", "libp2p.transport.upgrader",
                 "libp2p.stream_muxer"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # what peers send wrong, logged by py-libp2p at ERROR per message: rate-limited WARNINGs
    limit_libp2p_errors()


def libp2p_fault(faults: RemoteFaults, protocol: str) -> Callable[[str, Exception], bool]:
    """For streams.guard_raw: an exception out of libp2p's own handler for `protocol` that
    is the peer's fault (bytes that do not parse) is reported, counted and charged."""
    def on_error(peer: str, e: Exception) -> bool:
        if not is_remote_fault(e):
            return False
        faults.report(peer, protocol, f"{type(e).__name__}: {e}; stream reset")
        return True
    return on_error


def harden_handlers(host: Any, gate: ResourceGate, faults: RemoteFaults) -> None:
    """Bite 2 for libp2p's own handlers (pubsub, DHT, identify, ping): wrap each so an
    exception resets the stream instead of reaching the host; each stream takes a
    resource-manager slot first."""
    mux = host.get_mux()
    for proto, fn in list(mux.handlers.items()):
        if proto is None or fn is None or getattr(fn, "_fognode_guarded", False):
            continue
        mux.handlers[proto] = guard_raw(str(proto), fn, gate=gate,
                                        on_error=libp2p_fault(faults, str(proto)))


async def reannounce_subscriptions(pubsub: Any, gossip_heartbeat: float) -> None:
    """Bite 16: py-libp2p's pubsub sends a peer our subscriptions once, in the hello it
    builds when their stream opens, and later ones in a broadcast to the peers registered
    then. A subscription made while the stream opens falls between the two and that peer
    never learns it: no message of that topic goes to it (seen between two fresh nodes).
    Receivers keep subscriptions as sets, so announcing them again is harmless."""
    interval = max(1.0, 5 * gossip_heartbeat)
    while True:
        await trio.sleep(interval)
        hello = pubsub.get_hello_packet()
        if hello.subscriptions and pubsub.peers:
            await pubsub.message_all_peers(hello.SerializeToString())


async def close_connections(host: Any) -> None:
    """Close every connection concurrently, its socket included (call it shielded).

    Concurrently: the swarm closes them one by one, each with a 100 ms sleep, which made
    shutting down with 32 peers take over 3 s.

    Its socket included, because of a py-libp2p 0.8.1 bug (upstream report form). Symptom:
    after a host inside a running trio program is stopped by cancelling its scope, a peer
    keeps a live-looking connection to it whose every stream open hangs, until its pings fail
    (tens of seconds) or the garbage collector closes the stopped host's socket; a restarted
    host with the same key could not be reached for 40 s (tests/ledger/test_role.py::
    test_two_of_four_down_waits_then_completes, 3 runs of 4). Cause: `Swarm.run`'s shutdown
    (`libp2p/network/swarm.py`, the `finally` after `manager.wait_finished()`) closes the
    connections without a shield, inside the cancelled scope: the first `SwarmConn.close()`
    sets `event_closed` and is cancelled at its first checkpoint (the GO_AWAY write in
    `Yamux.close`) before the socket is closed, and every later `SwarmConn.close()` of that
    connection returns at once because `event_closed` is set. Whether the swarm's task or
    this function runs first after the cancellation is scheduling luck. Reproduction: two
    overlays connected; on one, `SwarmConn.close()` of the connection under an already
    cancelled `trio.CancelScope`, then leave its `open_overlay`: the other never sees the
    disconnection (tests/node/test_host.py::test_stopped_host_closes_half_closed_connections).
    Fix: after `SwarmConn.close()`, a muxed connection that is still not closed is closed
    here (GO_AWAY, then the socket; `Yamux.close` is guarded against a second run)."""
    async def one(conn: Any) -> None:
        try:
            await conn.close()
        except Exception:   # already broken: nothing to release
            pass
        muxed = getattr(conn, "muxed_conn", None)
        if muxed is not None and not muxed.is_closed:   # left half-closed (docstring)
            try:
                await muxed.close()
            except Exception:
                pass

    conns = [c for cs in list(host.get_network().connections.values()) for c in cs]
    async with trio.open_nursery() as n:
        for c in conns:
            n.start_soon(one, c)


async def bootstrap(host: Any, addrs: list[str], dial: Callable[[str, Any], Awaitable[None]],
                    wake: Callable[[], None]) -> None:
    """Dial every bootstrap address at once (a failure is a WARNING), then wake the
    connection manager."""
    async def one(addr: str) -> None:
        from libp2p.peer.peerinfo import info_from_p2p_addr
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        host.get_peerstore().add_addrs(info.peer_id, info.addrs, 10**8)
        try:
            await dial(info.peer_id.to_base58(), info)
        except DialError as e:
            log.warning("bootstrap peer %s: %s", addr, e)

    async with trio.open_nursery() as n:
        for a in addrs:
            n.start_soon(one, a)
    wake()
