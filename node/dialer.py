"""Dialling for the overlay (node/host.py): every dial under the dial timeout (bite 14) and
through the circuit breaker (connmgr.DialBackoff: a dial here is on demand, so it may probe an
open breaker once per its `probe_interval`), by multiaddr (`connect`: the peer is then
protected from trimming) or by peer id from the peerstore or the DHT (`dial_known`, what the
connection manager and `open_stream` use), and `disconnect`. fognode_node_dials_total counts
the outcomes."""
from __future__ import annotations

import logging
from typing import Any

import multiaddr
import trio
from prometheus_client import CollectorRegistry, Counter

from fognode.node import p2pfix_redial
from fognode.node.connmgr import DialBackoff, DialError
from fognode.node.errors import LocalProtocolError

log = logging.getLogger("fognode.host")


class Dialer:
    """The overlay's dialling collaborator: handed the libp2p host, the DHT (to find a peer's
    addresses), the breaker and the dial timeout. `dialing`: dials in flight; `protected`:
    peers dialled by address (the connection manager never trims them)."""

    def __init__(self, host: Any, dht: Any, backoff: DialBackoff, dial_timeout: float,
                 self_peer_id: str, metrics: CollectorRegistry) -> None:
        self.host = host
        self.dht = dht
        self.backoff = backoff
        self.dial_timeout = dial_timeout
        self.peer_id = self_peer_id
        self.dialing: set[str] = set()
        self.protected: set[str] = set()
        self.m_dials = Counter("fognode_node_dials_total", "Outbound dials by outcome",
                               ["outcome"], registry=metrics)

    async def dial(self, target: str, peer_info: Any) -> None:
        """Dial under the dial timeout (bite 14) through the circuit breaker. Every dial here
        is one on demand (a stream, an order, an operator's or bootstrap's connect; the
        connection manager asks `DialBackoff.allowed` before it calls): while the breaker is
        open one goes through per `probe_interval` (a probe). Raises DialBackoffError without
        dialling when the breaker is open and the probe was spent, DialError on failure."""
        now = trio.current_time()
        self.backoff.check(target, now, probe=True)
        # py-libp2p keeps its own 60 s negative cache after a failed dial, which would turn
        # our first retries into instant failures: our breaker is the one that decides.
        # Swarm.unblock_peer evicts by str(peer_id), the cache's key; evicting the ID object
        # itself (as this did until stop 22) matched nothing, and a node whose bootstrap dial
        # failed stayed isolated for a minute.
        self.host.get_network().unblock_peer(peer_info.peer_id)
        self.dialing.add(target)
        try:
            with trio.fail_after(self.dial_timeout):
                await p2pfix_redial.connect(self.host, peer_info)   # a closing connection: dial
        except trio.TooSlowError:
            self.backoff.record_failure(target, trio.current_time())
            self.m_dials.labels("timeout").inc()
            raise DialError(f"dial {target}: no connection within {self.dial_timeout} s"
                            ) from None
        except Exception as e:
            self.backoff.record_failure(target, trio.current_time())
            self.m_dials.labels("failure").inc()
            raise DialError(f"dial {target}: {type(e).__name__}: {e}") from None
        finally:
            self.dialing.discard(target)
        self.backoff.record_success(target)
        self.m_dials.labels("success").inc()

    async def connect(self, multiaddr_text: str) -> str:
        """Dial a multiaddr ending in /p2p/<peer-id>; returns the peer id. Raises ConfigError-
        free errors: LocalProtocolError for a malformed address, DialBackoffError while the
        peer is backed off, DialError when the dial fails or times out (dial_timeout)."""
        from libp2p.peer.peerinfo import info_from_p2p_addr
        try:
            ma = multiaddr.Multiaddr(multiaddr_text)
            info = info_from_p2p_addr(ma)
        except Exception as e:
            raise LocalProtocolError(f"{multiaddr_text!r} is not a multiaddr ending in "
                                     f"/p2p/<peer-id> ({e})") from None
        pid = info.peer_id.to_base58()
        if pid == self.peer_id:
            raise LocalProtocolError(f"{multiaddr_text!r} is this node itself")
        self.protected.add(pid)
        await self.dial(pid, info)
        return pid

    def has_address(self, peer_id: str) -> bool:
        """Whether the peerstore knows an address of `peer_id` (a gossip pull may dial it
        without a DHT lookup)."""
        from libp2p.peer.id import ID
        try:
            return bool(self.host.get_peerstore().addrs(ID.from_base58(peer_id)))
        except Exception:  # unknown peer (PeerStoreError) or not a peer id
            return False

    async def dial_known(self, peer_id: str) -> None:
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo
        pid = ID.from_base58(peer_id)
        try:
            addrs = self.host.get_peerstore().addrs(pid)
        except Exception:
            addrs = []
        if not addrs:
            with trio.move_on_after(self.dial_timeout):
                found = await self.dht.find_peer(pid)
                addrs = list(found.addrs) if found is not None else []
        if not addrs:
            self.backoff.record_failure(peer_id, trio.current_time())
            raise DialError(f"no address known for {peer_id}")
        await self.dial(peer_id, Libp2pPeerInfo(pid, addrs))

    async def disconnect(self, peer_id: str) -> None:
        """Close every connection to `peer_id`, one by one (bite 20: py-libp2p's
        `Swarm.close_peer` ends by dropping the peer's whole entry from the swarm's records,
        so a connection made while the old ones closed was forgotten, never closed, and its
        socket leaked)."""
        from libp2p.peer.id import ID
        self.protected.discard(peer_id)
        for conn in self.host.get_network().get_connections(ID.from_base58(peer_id)):
            try:
                await conn.close()
            except Exception as e:  # already gone
                log.debug("disconnect %s: %s", peer_id, e)
