"""The one hardened py-libp2p 0.8.1 host, and the `Overlay` roles use (node/overlay.py).

Every workaround for py-libp2p 0.8.1 (shared/notes/py-libp2p-0.8.1.md, "bites") is made once,
here or in the module named:
  1  plaintext/SECIO/TLS offered and a plaintext dialer accepted -> Noise-only `sec_opt`
  2  an exception escaping a stream handler kills the host       -> streams.guard_handler, and
     host_lifecycle.harden_handlers wraps libp2p's own handlers the same way
  3  StreamEOF instead of b"" / unframed peers hang              -> streams.Libp2pFramedStream
  4  every dial stalls 250 ms                                    -> max_connections_per_peer=1
  5  spam protection drops our own publishes, 120 s heartbeat    -> spam off, heartbeat 1 s
  6  no publish backpressure, 32-slot subscription buffers       -> gossip.GossipLayer
  7  gossip over 1 MiB vanishes                                  -> gossip.publish raises
  8  stopping Pubsub while the host receives: "Nursery is closed" -> open_overlay closes the
     host first, then leaves the service contexts
  9  connected peers not in the DHT routing table, lax validation -> add_peer on connect,
     strict_validation=True and one validator per namespace; its WARNING per stream close is
     silenced in host_lifecycle.quiet_libp2p_loggers
  14 a dial can hang                                             -> every dial under a timeout
  15 libp2p log noise                                            -> host_lifecycle
  16 a subscription made while a new pubsub peer is being set up  -> every node re-announces its
     never reaches it (the peer's hello was built before, the        subscriptions to all pubsub
     broadcast went out before it was registered)                    peers every 5 heartbeats
  17 Kademlia ignores `protocol_prefix`: always /ipfs/kad/1.0.0,  -> dht.KadHost: the DHT's view
     the public IPFS DHT's id; PUT_VALUE refusals are silent and     of the host speaks
     50,000 Sybil records evict the real ones                        /fognode/kad/1.0.0;
                                                                     dht.FognodeKadDHT admits
                                                                     puts by quota (dhtquota)
  18 nothing pings peers (and py-libp2p's ping rounds RTT to whole -> ping.Pinger (latency.py)
     milliseconds, 0 on a LAN)
The swarm's own auto-connector and pruner are neutralised (watermarks 0 / hard cap) so that
node/connmgr.py alone decides whom to dial and trim.
The [overlay] config is node/overlay_config.py, the advertised addresses node/host_addrs.py,
dialling node/dialer.py, the swarm's connection events node/swarm_events.py, and what
open_overlay does around the overlay node/host_lifecycle.py.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import multiaddr
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry, Gauge

from fognode.node.connmgr import (ConnectionManager, ConnectionPolicy, DialBackoff,
                                  DialBackoffError, DialError)
from fognode.node import (heap, p2pfix_multistream, p2pfix_netstream, p2pfix_records, p2pfix_redial,
                          p2pfix_streamopen, p2pfix_tasks, p2pfix_yamux, p2pfix_yamux_window)
from fognode.node.peerid import peer_id_from_pubkey, pubkey_from_peer_id  # re-exported
from fognode.node.dht import FognodeKadDHT
from fognode.node.dialer import Dialer
from fognode.node.dhtquota import DhtLimits
from fognode.node.errors import LocalProtocolError, RemoteProtocolError
from fognode.node.events import EventBus, PeerConnected, PeerDisconnected
from fognode.node.faults import RemoteFaults
from fognode.node.gossip import PULL_PROTOCOL, GossipLayer, GossipSettings
from fognode.node.host_addrs import check_ports_free, interface_addrs
from fognode.node.host_lifecycle import (bootstrap, close_connections, harden_handlers,
                                         quiet_libp2p_loggers, reannounce_subscriptions)
from fognode.node.latency import PingSettings
from fognode.node.overlay_config import OverlayConfig
from fognode.node.overlay import (DhtValidator, FramedStream, GossipCheck, GossipHandler,
                                  PeerInfo, StreamHandler)
from fognode.node.p2pfix_noiseio import QuickNoise
from fognode.node.p2pfix_yamux import QuickYamux
from fognode.node.peerscore import PeerScoreParams, ViolationBook, app_score
from fognode.node.p2pfix_peer_faults import ChargingPubsub, identify_push_handler
from fognode.node.scored_pubsub import ScoredGossipSub, score_actions
from fognode.node.ping import Pinger, libp2p_ping
from fognode.node.rcmgr import limits_from
from fognode.node.resources import ResourceGate
from fognode.node.streams import Libp2pFramedStream, guard_handler
from fognode.node.swarm_autoconnect import disable_auto_connector
from fognode.node.swarm_events import SwarmNotifee

log = logging.getLogger("fognode.host")


# ---------------------------------------------------------------------------------------------
# The overlay

class Libp2pOverlay:
    """`Overlay` (node/overlay.py) on py-libp2p. Built only by `open_overlay`."""

    def __init__(self, config: OverlayConfig, identity: SigningKey, events: EventBus,
                 metrics: CollectorRegistry) -> None:
        from libp2p import create_identity_from_seed, new_host
        from libp2p.crypto.x25519 import create_new_key_pair as x25519
        from libp2p.custom_types import TProtocol
        from libp2p.identity.identify_push.identify_push import ID_PUSH
        from libp2p.network.config import ConnectionConfig
        from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12
        from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
        from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID

        self.config = config
        self.identity = identity
        self.events = events
        self.metrics = metrics
        self._adv_cache: tuple[tuple[str, ...], float, list[multiaddr.Multiaddr]] | None = None
        self._listen_cache: tuple[int, float, list[str]] | None = None   # (listeners, when, addrs)
        kp = create_identity_from_seed(bytes(identity))
        # QuickYamux for BufferingNoise connections, their streams' state locks, no-op stream
        # notifees skipped (issue 16); a new task's parent found without a scan (issue 10)
        for fix in (p2pfix_yamux, p2pfix_netstream, p2pfix_streamopen, p2pfix_tasks): fix.install()
        hard_cap = config.peers_high * 4 + 64
        self.host = new_host(
            key_pair=kp,
            # bite 1; QuickNoise: node/p2pfix_tcpio.py + p2pfix_noiseio.py (issue 16)
            sec_opt={NOISE_ID: QuickNoise(kp, noise_privkey=x25519().private_key)},
            # py-libp2p ignores the class given here for yamux: node/p2pfix_yamux.py
            muxer_opt={TProtocol(YAMUX_ID): QuickYamux},
            # identify must advertise real interface addresses, never 0.0.0.0 (peers on other
            # machines dial what we advertise); `announce` overrides them
            addrs_factory=self._advertised,
            connection_config=ConnectionConfig(
                max_connections_per_peer=1,                                       # bite 4
                dial_timeout=config.dial_timeout,
                # our connmgr decides: the swarm's pruner only acts at a hard cap far above
                # peers_high, and its auto-connector is replaced below (bite 19)
                min_connections=0, low_watermark=0,
                high_watermark=hard_cap, max_connections=hard_cap),
        )
        disable_auto_connector(self.host.get_network())                           # bite 19
        self.peer_id = self.host.get_id().to_base58()
        self.peer_records = p2pfix_records.enroll(self.host)   # records verified once (issue 16)
        p2pfix_multistream.install(self.host)      # protocol proposed with the header (issue 16)
        self._app_scores: dict[str, float] = {}
        # peer score: node/peerscore.py (the parameters and why), node/scored_pubsub.py
        self.score_params = PeerScoreParams()
        self.violations = ViolationBook(half_life=self.score_params.violation_half_life,
                                        cap=self.score_params.violation_cap)
        self.faults = RemoteFaults(metrics, self._charge, log=log)
        self.gossipsub = ScoredGossipSub(
            peer_score=self.score_params, app_score=self._score_of_id,
            count=score_actions(metrics),
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11], degree=config.gossip_degree,
            degree_low=max(1, config.gossip_degree - 2), degree_high=config.gossip_degree * 2,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=config.gossip_heartbeat,  # bite 5
            spam_protection_enabled=False)                                          # bite 5
        # a peer's bad RPC frames and identify pushes are charged to it: p2pfix_peer_faults.py
        self.pubsub = ChargingPubsub(self.host, self.gossipsub, strict_signing=True,
                                     max_inbound_rpc_size=config.max_message_size)
        self.host.set_stream_handler(TProtocol(ID_PUSH), identify_push_handler(self.host))
        # the DHT logs and counts its own refusals (node/dht.py): charge the peer, no second line
        self.dht = FognodeKadDHT(self.host, DhtLimits.from_overlay(config), metrics,  # 9, 17
                                 lambda peer, _why: self._charge(peer))
        self.pinger = Pinger(PingSettings.from_overlay(config),                        # bite 18
                             lambda peer: libp2p_ping(self.host, peer), metrics,
                             on_unresponsive=self._on_unresponsive)
        self.gossip = GossipLayer(
            self.pubsub, identity, metrics=metrics, peer_id_of=peer_id_from_pubkey,
            open_stream=self.open_stream, self_peer_id=self.peer_id,
            is_connected=lambda p: p in self._connected_since, dialable=lambda p: self.dialer.has_address(p),
            settings=GossipSettings(
                max_message_size=config.max_message_size, max_rate=config.gossip_max_rate,
                publish_queue=config.gossip_publish_queue,
                handler_queue=config.gossip_handler_queue, ring_size=config.gossip_ring,
                relay_cache=config.gossip_relay_cache, pull_delay=config.gossip_pull_delay,
                pull_timeout=min(5.0, config.dial_timeout), backfill=config.gossip_backfill,
                head_interval=max(0.5, config.gossip_heartbeat), window=config.gossip_window,
                max_origins=config.gossip_origins, max_missing=config.gossip_missing,
                max_pulls=config.gossip_pulls, max_origins_per_peer=config.gossip_origins_per_peer,
                max_missing_per_peer=config.gossip_missing_per_peer,
                max_pulls_per_peer=config.gossip_pulls_per_peer),
            penalize=lambda peer, reason: self.penalize(peer, reason))
        self.pubsub.set_gossip_hooks(self.gossip.admit, self.gossip.deliver_now)  # scored_pubsub.py
        self.backoff = DialBackoff(failures_before_backoff=config.dial_failures_before_backoff,
                                   backoff=config.dial_backoff, backoff_max=config.dial_backoff_max)
        self._connected_since: dict[str, float] = {}
        self._conns: dict[str, list[Any]] = {}     # each connected peer's live SwarmConns
        self._direction: dict[str, str] = {}
        self._address: dict[str, str] = {}
        self._nursery: trio.Nursery | None = None
        self.dialer = Dialer(self.host, self.dht, self.backoff, config.dial_timeout, self.peer_id,
                             metrics)
        self.connmgr = ConnectionManager(
            ConnectionPolicy(low=config.peers_low, high=config.peers_high), self.backoff,
            connected=lambda: dict(self._connected_since), candidates=self._candidates,
            scores=lambda: {p: self._score(p) for p in
                            set(self._connected_since) | set(self._app_scores)},
            protected=lambda: frozenset(self.dialer.protected), dial=self.dialer.dial_known,
            trim=self.disconnect, discover=self._discover, interval=config.connmgr_interval,
            unresponsive=self.pinger.tracker.unresponsive)

        self.m_peers = Gauge("fognode_node_peers", "Connected peers", registry=metrics)
        self.m_remote_errors = self.faults.counter
        self.resources = ResourceGate(*limits_from(config), metrics)
        self.host.get_network().register_notifee(SwarmNotifee(  # type: ignore[arg-type]
            self.resources, self._on_connected, self._on_disconnected))
        self.set_stream_handler(PULL_PROTOCOL, self.gossip.serve_pull)

    def _on_unresponsive(self, peer: str) -> None:
        """A peer stopped answering pings: the connection manager closes its connection now."""
        self.connmgr.wake()

    # -- scores -----------------------------------------------------------------------------

    def set_app_score(self, peer_id: str, score: float) -> None:
        """The registry's reputation: part of GossipSub's application-specific score (P6,
        node/peerscore.py) and of the connection manager's trimming order."""
        if not math.isfinite(score):
            raise LocalProtocolError(f"app score for {peer_id} must be finite, got {score}")
        self._app_scores[peer_id] = float(score)

    def _score(self, peer_id: str) -> float:
        """P6: reputation minus protocol violations (peerscore.app_score)."""
        return app_score(self.score_params, self._app_scores.get(peer_id, 0.0),
                         self.violations.value(peer_id, time.monotonic()))

    def _score_of_id(self, peer: Any) -> float:
        return self._score(str(peer))

    def gossip_score(self, peer_id: str) -> float:
        """The peer's whole GossipSub score (node/peerscore.py), as the router sees it."""
        from libp2p.peer.id import ID
        pid = ID.from_base58(peer_id)
        self.gossipsub.scorer.invalidate(peer_id)
        return self.gossipsub.scorer.score(pid, [])

    def penalize(self, peer_id: str, reason: str, *, protocol: str = "") -> None:
        """A role saw `peer_id` break `protocol` (a stream id or topic): a rate-limited
        WARNING, fognode_node_remote_protocol_errors_total and one violation charged."""
        self.faults.report(peer_id, protocol or "role", reason)

    def _charge(self, peer_id: str) -> None:
        self.violations.add(peer_id, time.monotonic())
        self.gossipsub.scorer.invalidate(peer_id)

    # -- addresses and peers ----------------------------------------------------------------

    def _advertised(self, candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        # py-libp2p calls this for every pubsub RPC (it signs a peer record each time), so the
        # interface lookup is cached for a few seconds
        key = tuple(str(c) for c in candidates)
        now = time.monotonic()
        if self._adv_cache is not None and self._adv_cache[0] == key and \
                now - self._adv_cache[1] < 10.0:
            return self._adv_cache[2]
        if self.config.announce:
            out = [multiaddr.Multiaddr(a.split("/p2p/")[0]) for a in self.config.announce]
        else:
            out = []
            for ma in candidates:
                out.extend(interface_addrs(ma))
            out = list({str(m): m for m in out}.values())
        self._adv_cache = (key, now, out)
        return out

    def listen_addrs(self) -> list[str]:
        """Full multiaddrs with /p2p/<id>: `announce` if configured, else every real interface
        address of each listener (a 0.0.0.0 listener is expanded; port 0 shows the real port)."""
        # node.info calls this per request; building the multiaddrs costs more than the rest of
        # the call, so the text is kept as long as the interface lookup (_advertised) is, and
        # recomputed at once when a listener is added or removed
        listeners = len(self.host.get_network().listeners)
        now = time.monotonic()
        c = self._listen_cache
        if c is not None and c[0] == listeners and now - c[1] < 10.0:
            return list(c[2])
        suffix = f"/p2p/{self.peer_id}"
        out = [str(m) + suffix for m in self._advertised(self.host.get_transport_addrs())]
        self._listen_cache = (listeners, now, out)
        return list(out)

    def peers(self) -> list[PeerInfo]:
        ps = self.host.get_peerstore()
        out = []
        for pid in self.host.get_connected_peers():
            p = pid.to_base58()
            try:
                addrs = tuple(str(a) for a in ps.addrs(pid))
            except Exception:
                addrs = ()
            if not addrs and p in self._address:
                addrs = (self._address[p],)
            lat = self.pinger.latency(p)
            out.append(PeerInfo(peer_id=p, addrs=addrs, connected=True,
                                direction=self._direction.get(p, ""),
                                latency_ms=None if lat is None else round(lat * 1000.0, 3)))
        return out

    def peer_count(self) -> int:    # len(peers()), without building a PeerInfo per peer
        return len(self.host.get_network().connections)

    def latency(self, peer_id: str) -> float | None:
        """Smoothed ping round trip to a connected peer in seconds; None before the first."""
        return self.pinger.latency(peer_id)

    def _on_connected(self, conn: Any) -> None:
        pid = str(conn.muxed_conn.peer_id)
        swarm_conns = self.host.get_network().get_connections(conn.muxed_conn.peer_id)
        live = [c for c in self._conns.get(pid, []) if c in swarm_conns]
        if pid in self._connected_since and not live:
            # py-libp2p removes a closing connection at once but notifies its end only after
            # its cleanup (0.1 s or more): a new connection arriving in between means the
            # peer went away and came back, and both events are owed, in that order
            self._peer_gone(pid)
        self._conns[pid] = live + [conn]
        if pid in self._connected_since:
            return
        self._connected_since[pid] = trio.current_time()
        d = getattr(getattr(conn, "direction", None), "name", "").lower()
        self._direction[pid] = d if d in ("inbound", "outbound") else ""
        try:
            addr = str(conn.get_transport_addresses()[0])
        except Exception:
            addr = ""
        self._address[pid] = addr
        self.m_peers.set(len(self._connected_since))
        self.backoff.record_success(pid)
        self.events.publish(PeerConnected(peer_id=pid, address=addr))
        self.pinger.connected(pid)
        if self._nursery is not None:
            self._nursery.start_soon(self._add_to_routing_table, conn.muxed_conn.peer_id)

    def _on_disconnected(self, conn: Any) -> None:
        pid = str(conn.muxed_conn.peer_id)
        conns = self._conns.get(pid)
        if conns is None or conn not in conns:
            return       # accounted for already, when a newer connection arrived first
        conns.remove(conn)
        if conns:
            return       # another connection to the peer is still up
        self._peer_gone(pid)

    def _peer_gone(self, pid: str) -> None:
        self._conns.pop(pid, None)
        if self._connected_since.pop(pid, None) is None:
            return
        self._direction.pop(pid, None)
        self._address.pop(pid, None)
        self.m_peers.set(len(self._connected_since))
        self.events.publish(PeerDisconnected(peer_id=pid))
        self.pinger.disconnected(pid)
        self.connmgr.wake()

    async def _add_to_routing_table(self, peer: Any) -> None:
        """Bite 9: py-libp2p does not put connected peers into the DHT routing table. The
        peer's listen addresses arrive with identify, so retry briefly until they do."""
        for delay in (0.0, 0.2, 0.5, 1.0, 2.0, 4.0):
            await trio.sleep(delay)
            if str(peer) not in self._connected_since:
                return
            try:
                if await self.dht.add_peer(peer):
                    return
            except Exception as e:  # the routing table may ping and fail; try again
                log.debug("DHT add_peer %s: %s: %s", peer, type(e).__name__, e)

    def _candidates(self) -> list[str]:
        rt = [p.to_base58() for p in self.dht.routing_table.get_peer_ids()]
        ps = [p.to_base58() for p in self.host.get_peerstore().peers_with_addrs()]
        return [p for p in dict.fromkeys(rt + ps) if p != self.peer_id and p not in self.dialer.dialing]

    async def _discover(self) -> None:
        with trio.move_on_after(self.config.dial_timeout * 2):
            await self.dht.peer_routing.find_closest_peers_network(self.host.get_id().to_bytes())

    # -- dialling (node/dialer.py) ---------------------------------------------------------

    async def connect(self, multiaddr_text: str) -> str:
        """Dial a multiaddr ending in /p2p/<peer-id>; returns the peer id (`Dialer.connect`:
        LocalProtocolError, DialBackoffError, DialError)."""
        return await self.dialer.connect(multiaddr_text)

    async def disconnect(self, peer_id: str) -> None:
        await self.dialer.disconnect(peer_id)

    # -- streams ----------------------------------------------------------------------------

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        """Register a handler; it runs inside streams.guard_handler (bite 2)."""
        from libp2p.custom_types import TProtocol
        self.host.set_stream_handler(
            TProtocol(protocol_id),
            guard_handler(protocol_id, handler, max_frame=self.config.max_frame,
                          on_remote_error=lambda peer, err: self._on_remote_error(
                              protocol_id, peer, err),
                          gate=self.resources))

    def _on_remote_error(self, protocol_id: str, peer: str, err: RemoteProtocolError) -> None:
        self.faults.report(peer, protocol_id, f"{err}; stream reset")

    async def open_stream(self, peer_id: str, protocol_id: str) -> FramedStream:
        """Open a framed stream, dialling the peer if needed (under dial_timeout). Raises
        DialError/DialBackoffError when the peer cannot be reached, LocalProtocolError when it
        does not speak `protocol_id`."""
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID
        pid = ID.from_base58(peer_id)
        if not p2pfix_redial.has_live_connection(self.host.get_network(), pid):
            await self.dialer.dial_known(peer_id)       # none, or only a closing one
        try:
            with trio.fail_after(self.config.dial_timeout):
                raw = await self.host.new_stream(pid, [TProtocol(protocol_id)])
        except trio.TooSlowError:
            raise DialError(f"opening {protocol_id} to {peer_id} timed out") from None
        except Exception as e:
            raise DialError(f"opening {protocol_id} to {peer_id} failed: {type(e).__name__}: "
                            f"{e}") from None
        return Libp2pFramedStream(raw, max_frame=self.config.max_frame, gate=self.resources)

    # -- gossip -----------------------------------------------------------------------------

    async def subscribe(self, topic: str, handler: GossipHandler, *,
                        check: GossipCheck | None = None) -> None:
        await self.gossip.subscribe(topic, handler, check=check)

    async def publish(self, topic: str, data: bytes) -> None:
        await self.gossip.publish(topic, data)

    # -- DHT --------------------------------------------------------------------------------

    def register_dht_validator(self, namespace: str, validator: DhtValidator) -> None:
        """Records under /<namespace>/ are validated by `validator` (strict validation: keys of
        unregistered namespaces are refused)."""
        from libp2p.records.validator import Validator

        class _Adapter(Validator):
            def validate(self, key: str, value: bytes) -> None:
                validator.validate(key, value)

            def select(self, key: str, values: list[bytes]) -> int:
                return validator.select(key, values)

        self.dht.register_validator(namespace, _Adapter())

    async def dht_put(self, key: str, value: bytes) -> None:
        with trio.fail_after(self.config.dial_timeout * 3):
            await self.dht.put_value(key, value)

    async def dht_get(self, key: str) -> bytes | None:
        with trio.fail_after(self.config.dial_timeout * 3):
            return await self.dht.get_value(key)

    async def dht_provide(self, key: str) -> None:
        with trio.fail_after(self.config.dial_timeout * 3):
            await self.dht.provide(key)

    async def dht_find_providers(self, key: str) -> list[str]:
        with trio.fail_after(self.config.dial_timeout * 3):
            found = await self.dht.find_providers(key)
        return [p.peer_id.to_base58() for p in found]


@asynccontextmanager
async def open_overlay(config: OverlayConfig, identity: SigningKey, events: EventBus,
                       metrics: CollectorRegistry) -> AsyncIterator[Libp2pOverlay]:
    """Start the host, Pubsub, GossipSub, Kademlia and the connection manager; yield once
    listening (bootstrap dials run in the background). On exit the host is closed FIRST, then
    the services (bite 8). Raises ConfigError for a bad config, OSError if a listen address
    cannot be bound."""
    from libp2p.tools.anyio_service import background_trio_service

    config.validate()
    check_ports_free(config.listen)
    quiet_libp2p_loggers()
    p2pfix_yamux_window.install()       # a peer writing past a stream's window: reset, charged
    heap.tune()                         # MB-sized stream buffers without page-fault churn
    ov = Libp2pOverlay(config, identity, events, metrics)
    unwatch = p2pfix_yamux_window.watch(ov.peer_id, p2pfix_yamux_window.report_to(ov.faults))
    unbudget = p2pfix_yamux.budget(ov.peer_id, ov.resources.window_budget())   # window growth
    listen = [multiaddr.Multiaddr(a) for a in config.listen]
    async with ov.host.run(listen):
        if not ov.host.get_transport_addrs():
            raise OSError(f"could not listen on any of {config.listen}")
        async with background_trio_service(ov.pubsub), background_trio_service(ov.gossipsub), \
                background_trio_service(ov.dht):
            try:
                async with trio.open_nursery() as nursery:
                    ov._nursery = nursery
                    harden_handlers(ov.host, ov.resources, ov.faults)
                    await nursery.start(ov.gossip.run)
                    nursery.start_soon(ov.connmgr.run)
                    nursery.start_soon(reannounce_subscriptions, ov.pubsub, config.gossip_heartbeat)
                    nursery.start_soon(ov.pinger.run)
                    nursery.start_soon(bootstrap, ov.host, config.bootstrap, ov.dialer.dial,
                                       ov.connmgr.wake)
                    try:
                        yield ov
                    finally:
                        nursery.cancel_scope.cancel()
            finally:
                ov._nursery = None
                unwatch()
                unbudget()
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await close_connections(ov.host)
                    await ov.host.close()    # bite 8: host first, then the services


__all__ = ["OverlayConfig", "Libp2pOverlay", "open_overlay", "peer_id_from_pubkey",
           "pubkey_from_peer_id", "interface_addrs", "quiet_libp2p_loggers", "DialError",
           "DialBackoffError"]
