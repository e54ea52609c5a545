"""Reaching a `.fog` service: the SOCKS port's connector (rend-spec-v3 "client behaviour").

`HsClient.connect(address, port)` returns a `CircuitStream` to `address:port`:
1. the descriptor (hsfetch.DescriptorFetcher: from the cache, else from the DHT under the
   blinded keys of the periods a client tries; HS_DESC_INVALID / HS_DESC_NOT_FOUND);
2. a rendezvous circuit (3 hops, any last relay) with a fresh 20-byte cookie left there
   (ESTABLISH_RENDEZVOUS);
3. for the introduction points in random order: a circuit ending at the introduction relay,
   INTRODUCE1 (intro.py: the rendezvous relay, the cookie and an ntor onionskin sealed to the
   service), INTRODUCE_ACK; the introduction circuit is closed;
4. RENDEZVOUS2 on the rendezvous circuit completes the end-to-end handshake, the virtual hop
   is added, and a stream is opened to `<address>:<port>` through it.
When every introduction point of the descriptor failed, the descriptor is fetched again
(every replica, highest revision) and, if the service has republished a newer one, steps 2-4
run once more with it (rend-spec-v3: the service moved its points); else HS_INTRO_FAILED.
The joined circuit is kept per address for later streams (Tor does the same); when it closes
(a relay on it died) the next connect builds a fresh one. A step that fails is retried with
other relays a few times, each attempt bounded by `step_timeout`. Failures raise
`HsConnectError` with the SOCKS reply it maps to (0xF0-0xF7 with extended errors).
"""
from __future__ import annotations

import logging
import os
import random
from typing import Callable

import trio

from fognode.node.errors import FognodeError
from fognode.protocols.onion.actions import CircKey
from fognode.protocols.onion.address import FogAddress
from fognode.protocols.onion.cells import RelayCommand
from fognode.protocols.onion.circuit import ClientCircuit
from fognode.protocols.onion.config import OnionConfig
from fognode.protocols.onion.cstream import CircuitStream
from fognode.protocols.onion.descriptor import HsDescriptor
from fognode.protocols.onion.engine import MessageBox, OnionEngine
from fognode.protocols.onion.errors import OnionError, PathError
from fognode.protocols.onion.hs_errors import HsConnectError, SocksReply
from fognode.protocols.onion.hsdesc import DescriptorStore
from fognode.protocols.onion.hsfetch import DescriptorFetcher
from fognode.protocols.onion.intro import introduce1_data
from fognode.protocols.onion.metrics import OnionMetrics
from fognode.protocols.onion.ntor import ClientHandshake
from fognode.protocols.onion.pathsel import RelayInfo
from fognode.protocols.onion.rendezvous import COOKIE_LEN

log = logging.getLogger("fognode.onion.client")

ATTEMPTS = 3


class HsClient:
    def __init__(self, engine: OnionEngine, store: DescriptorStore, config: OnionConfig, metrics: OnionMetrics,
                 clock: Callable[[], float], *, step_timeout: float = 30.0, dht_timeout: float = 15.0) -> None:
        self.engine = engine
        self.store = store
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.step_timeout = step_timeout
        self.dht_timeout = dht_timeout
        self.periods = config.periods()
        self.descriptors = DescriptorFetcher(store, self.periods, metrics, clock, window=config.descriptor_window,
                                             max_skew=config.max_clock_skew, dht_timeout=dht_timeout)
        self.rejected = self.descriptors.rejected
        self.joined: dict[bytes, CircKey] = {}
        self._locks: dict[bytes, trio.Lock] = {}

    async def connect(self, address: FogAddress, port: int) -> CircuitStream:
        """A stream to `address:port` (see the module docstring); HsConnectError."""
        try:
            for attempt in range(2):
                circ = await self._joined(address)
                try:
                    with trio.fail_after(self.step_timeout):
                        stream = await self.engine.connect_stream(circ, f"{address.host}:{port}")
                except trio.TooSlowError:
                    raise HsConnectError("the service did not answer the stream", reply=SocksReply.TTL_EXPIRED) from None
                except OnionError as e:
                    if self.engine.circuit(circ.key) is not None:     # the service refused the port
                        raise HsConnectError(f"{address.host}:{port}: {e}",
                                             reply=SocksReply.CONNECTION_REFUSED) from None
                    if attempt:
                        raise HsConnectError(f"rendezvous circuit lost: {e}", reply=SocksReply.HS_REND_FAILED) from None
                    continue
                self.metrics.hs_connects.labels("ok").inc()
                return stream
            raise HsConnectError("rendezvous circuit lost twice", reply=SocksReply.HS_REND_FAILED)
        except HsConnectError as e:
            self.metrics.hs_connects.labels(e.reply.name.lower()).inc()
            log.info("could not reach %s:%d (%s): %s", address.host, port, e.reply.name, e)
            raise

    async def _joined(self, address: FogAddress) -> ClientCircuit:
        lock = self._locks.setdefault(address.pubkey, trio.Lock())
        async with lock:
            key = self.joined.get(address.pubkey)
            circ = self.engine.circuit(key) if key is not None else None
            if circ is not None:
                return circ
            self.joined.pop(address.pubkey, None)
            desc = await self.descriptors.get(address)
            try:
                circ = await self._rendezvous(desc)
            except HsConnectError as e:
                if e.reply is not SocksReply.HS_INTRO_FAILED:
                    raise
                # rend-spec-v3: every introduction point failed, the descriptor may be stale (the
                # service moved its points): refetch once, and try again only if it is newer
                log.debug("%s: every introduction point failed (%s); fetching the descriptor again", address.host, e)
                desc = await self.descriptors.get(address, newer_than=desc)
                circ = await self._rendezvous(desc)
            self.joined[address.pubkey] = circ.key
            return circ

    async def _rendezvous(self, desc: HsDescriptor) -> ClientCircuit:
        failed: list[str] = []
        last_error = "no attempt"
        # the rendezvous point is not one of the service's introduction relays when others exist
        # (an introduction circuit then avoids it; on a small network it may have to be one)
        intro_relays = [ip.relay for ip in desc.intro_points]
        for _ in range(ATTEMPTS):
            box = MessageBox()
            try:
                with trio.fail_after(self.step_timeout):
                    rend = await self._build_rendezvous(box, [failed + intro_relays, failed, []])
            except (OnionError, trio.TooSlowError) as e:
                last_error = f"rendezvous circuit: {e}"
                continue
            try:
                return await self._introduce(desc, rend, box, failed)
            except (OnionError, trio.TooSlowError, FognodeError) as e:
                last_error = str(e) or type(e).__name__
                log.debug("%s: rendezvous attempt at %s failed: %s", desc.address.host, rend.path[-1].peer_id,
                          last_error)
                self.engine.close(rend.key)
                failed.append(rend.path[-1].peer_id)   # the next attempt meets elsewhere
                if isinstance(e, HsConnectError) and e.reply is SocksReply.HS_INTRO_FAILED:
                    raise
        raise HsConnectError(f"could not reach {desc.address.host}: {last_error}", reply=SocksReply.HS_REND_FAILED)

    async def _build_rendezvous(self, box: MessageBox, excludes: list[list[str]]) -> ClientCircuit:
        """A rendezvous circuit avoiding the first of `excludes` that still leaves a path (a
        small network may have no relay left outside failed and introduction relays)."""
        for exclude in excludes[:-1]:
            try:
                return await self.engine.build(hops=self.config.hops, exclude=exclude,
                                               purpose="rendezvous", box=box)
            except PathError:
                continue
        return await self.engine.build(hops=self.config.hops, exclude=excludes[-1],
                                       purpose="rendezvous", box=box)

    async def _introduce(self, desc: HsDescriptor, rend: ClientCircuit, box: MessageBox,
                         failed: list[str]) -> ClientCircuit:
        cookie = os.urandom(COOKIE_LEN)
        self.engine.send_meeting(rend, RelayCommand.ESTABLISH_RENDEZVOUS, cookie)
        with trio.fail_after(self.step_timeout):
            await box.get(RelayCommand.RENDEZVOUS_ESTABLISHED)
        rp_info = rend.path[-1]
        rp = rp_info.peer_id
        points = list(desc.intro_points)
        random.shuffle(points)
        why = "no usable introduction point"
        for ip in points:
            relay = self.engine_relay(ip.relay)
            if relay is None:
                why = f"introduction relay {ip.relay} is not a known relay"
                continue
            hs = ClientHandshake.start(ip.auth_key, ip.enc_key)
            ibox = MessageBox()
            try:
                with trio.fail_after(self.step_timeout):
                    # the introduction path avoids the rendezvous point, unless it is that relay (on a
                    # small network the rendezvous point may have to be an introduction relay)
                    intro = await self.engine.build(hops=self.config.hops, last=relay,
                                                    exclude=[rp] if rp != relay.peer_id else [], purpose="intro",
                                                    box=ibox)
                    self.engine.send_meeting(intro, RelayCommand.INTRODUCE1,
                                             introduce1_data(ip.auth_key, ip.enc_key, rp, rp_info.identity,
                                                             rp_info.onion_key, cookie, hs.onionskin()))
                    ack = await ibox.get(RelayCommand.INTRODUCE_ACK)
                self.engine.close(intro.key)
            except (OnionError, trio.TooSlowError) as e:
                why = f"introduction at {ip.relay}: {e or 'timed out'}"
                log.debug("%s: %s", desc.address.host, why)
                continue
            if ack != b"\x00":
                why = f"introduction point {ip.relay} does not know the service (ack {ack.hex()})"
                log.debug("%s (revision %d): %s", desc.address.host, desc.revision, why)
                continue
            log.debug("%s: introduced at %s, rendezvous at %s", desc.address.host, ip.relay, rp)
            with trio.fail_after(self.step_timeout):
                reply = await box.get(RelayCommand.RENDEZVOUS2)
            rend.add_virtual_hop(hs.finish(reply), serve=False)
            return rend
        raise HsConnectError(why, reply=SocksReply.HS_INTRO_FAILED)

    def engine_relay(self, peer: str) -> RelayInfo | None:
        for r in self.engine.relays():
            if r.peer_id == peer:
                return r
        return None
