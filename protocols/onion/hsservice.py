"""Hosting `.fog` services: introduction points, descriptors, rendezvous, local connections.

`ServiceHost.run` keeps, for each service of the `ServiceTable`, `intro_points`
introduction points alive: per point a fresh Ed25519 auth key and X25519 enc key, a circuit
ending at a relay chosen at random among the known relays (each point on another relay), and
ESTABLISH_INTRO signed by the auth key for that relay's identity. When the set changes (a
point established, or its circuit closed) and every `descriptor_republish_interval`, the
service's descriptors (hsdesc.descriptors_to_publish: the current period and, near a
boundary, the neighbouring one) are put in the DHT under their blinded keys, and
`HiddenServiceDeployed` is published the first time (and when the points change). A put after
a change is repeated once `REPUT_AFTER_CHANGE` s later: py-libp2p's put reports no failure at
the remote nodes, and a node that missed it keeps serving the previous descriptor (its own
store answers its look-ups first) until the next republish, an hour later by default.

An INTRODUCE2 on an introduction circuit is opened with that point's enc key (intro.py),
refused when replayed; the service completes the end-to-end ntor handshake, builds a circuit
to the client's rendezvous relay, sends RENDEZVOUS1(cookie | reply) and adds the virtual hop
in the same step. Streams the client opens on that circuit arrive as OpenStream: the target's
port is looked up in the table (a port not mapped is refused, as a closed port answers), the
local TCP server is connected (bounded by `connect_timeout`) and the two are spliced.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

import trio
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from fognode.node.errors import FognodeError, RemoteProtocolError
from fognode.node.events import EventBus
from fognode.protocols.onion.actions import CircKey, CircuitClosed, OpenStream
from fognode.protocols.onion.address import parse_address
from fognode.protocols.onion.cells import RelayCommand
from fognode.protocols.onion.config import OnionConfig
from fognode.protocols.onion.cstream import splice
from fognode.protocols.onion.descriptor import IntroPoint
from fognode.protocols.onion.engine import MessageBox, OnionEngine
from fognode.protocols.onion.errors import OnionError
from fognode.protocols.onion.events import HiddenServiceDeployed
from fognode.protocols.onion.hs_errors import AddressError, HsConnectError
from fognode.protocols.onion.hsdesc import DescriptorStore, descriptors_to_publish
from fognode.protocols.onion.intro import IntroReplayCache, open_introduce2
from fognode.protocols.onion.metrics import OnionMetrics
from fognode.protocols.onion.ntor import server_handshake
from fognode.protocols.onion.pathsel import RelayInfo
from fognode.protocols.onion.rendezvous import establish_intro_data
from fognode.protocols.onion.services import HiddenService, ServiceTable

log = logging.getLogger("fognode.onion.service")

CHECK_INTERVAL = 2.0
REPUT_AFTER_CHANGE = 30.0   # s: descriptors put after a change are put once more this much later


@dataclass
class IntroState:
    relay: str
    auth: SigningKey
    enc_secret: bytes
    enc_public: bytes
    circuit: CircKey | None = None

    def point(self) -> IntroPoint:
        return IntroPoint(self.relay, bytes(self.auth.verify_key), self.enc_public)


@dataclass
class ServiceState:
    intros: list[IntroState] = field(default_factory=list)
    building: int = 0
    dirty: bool = False
    published_at: float = 0.0
    published_points: int = 0
    deployed: bool = False
    pending: set[str] = field(default_factory=set)    # relays of points being established
    follow_up_at: float | None = None                 # the same points put once more then
    published_periods: set[int] = field(default_factory=set)

    def publish_due(self, now: float, interval: float, periods: Sequence[int] = ()) -> bool:
        """Whether to put the descriptors now (noted when so): the points changed, the
        follow-up put `REPUT_AFTER_CHANGE` s after a change, `interval` s since the last put, or
        `periods` (those to publish now) has one not published yet: near a boundary the next
        period's descriptor goes out at once, not at the next republish (rend-spec-v3)."""
        follow_up = self.follow_up_at is not None and now >= self.follow_up_at
        new_period = not set(periods) <= self.published_periods
        if not (self.dirty or follow_up or new_period or now - self.published_at >= interval):
            return False
        self.follow_up_at = now + REPUT_AFTER_CHANGE if self.dirty else None
        self.dirty = False
        self.published_at = now
        self.published_periods = set(periods)
        return True

    def taken(self) -> set[str]:
        """Relays holding or about to hold one of this service's introduction points."""
        return {i.relay for i in self.intros} | self.pending


def pick_intro_relay(relays: Sequence[RelayInfo], taken: set[str], self_peer: str,
                     rng: random.Random) -> RelayInfo | None:
    """A relay for a new introduction point: any known relay but this node and those in
    `taken` (the service's points, established or being established, each on its own relay as
    rend-spec-v3 asks: one relay's death then costs one point); None when none is left."""
    free = sorted((r for r in relays if r.peer_id not in taken and r.peer_id != self_peer), key=lambda r: r.peer_id)
    return rng.choice(free) if free else None


class ServiceHost:
    def __init__(self, engine: OnionEngine, store: DescriptorStore, table: ServiceTable, config: OnionConfig,
                 metrics: OnionMetrics, events: EventBus, clock: Callable[[], float], *,
                 step_timeout: float = 30.0, dht_timeout: float = 30.0) -> None:
        self.engine = engine
        self.store = store
        self.table = table
        self.config = config
        self.metrics = metrics
        self.events = events
        self.clock = clock
        self.step_timeout = step_timeout
        self.dht_timeout = dht_timeout
        self.periods = config.periods()
        self.state: dict[str, ServiceState] = {}
        self.serving: dict[CircKey, HiddenService] = {}
        self.replay = IntroReplayCache()
        self.rng = random.SystemRandom()
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        engine.on_open_stream = self._on_open_stream
        engine.on_circuit_closed.append(self._on_closed)

    def changed(self) -> None:
        """The table changed (a service added or removed): look again now."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                self._wake = trio.Event()
                self._check(nursery)
                with trio.move_on_after(CHECK_INTERVAL):
                    await self._wake.wait()

    def _check(self, nursery: trio.Nursery) -> None:
        names = {s.name for s in self.table.services()}
        for name in list(self.state):
            if name not in names:
                st = self.state.pop(name)
                for i in st.intros:
                    if i.circuit is not None:
                        self.engine.close(i.circuit)
        now = self.clock()
        for svc in self.table.services():
            st = self.state.setdefault(svc.name, ServiceState())
            alive = [i for i in st.intros if i.circuit is not None]
            for _ in range(self.config.intro_points - len(alive) - st.building):
                st.building += 1
                nursery.start_soon(self._establish, svc, st)
            periods = self.periods.periods_to_publish(now, self.config.descriptor_window)
            if alive and st.publish_due(now, self.config.descriptor_republish_interval, periods):
                nursery.start_soon(self._publish, svc, st, [i.point() for i in alive])

    # -- introduction points --------------------------------------------------------------------

    async def _establish(self, svc: HiddenService, st: ServiceState) -> None:
        relay = pick_intro_relay(self.engine.relays(), st.taken(), self.engine.peer_id, self.rng)
        if relay is None:
            st.building -= 1
            return
        st.pending.add(relay.peer_id)
        try:
            enc = PrivateKey.generate()
            intro = IntroState(relay.peer_id, SigningKey.generate(), bytes(enc), bytes(enc.public_key))
            waiting = trio.Event()
            box = MessageBox(lambda cmd, data: (waiting.set() if cmd is RelayCommand.INTRO_ESTABLISHED
                                                else self._on_intro_message(svc, intro, cmd, data)))
            with trio.fail_after(self.step_timeout):
                circ = await self.engine.build(last=relay, purpose="intro", box=box)
                self.engine.send_meeting(circ, RelayCommand.ESTABLISH_INTRO,
                                         establish_intro_data(intro.auth, relay.identity))
                while not waiting.is_set():
                    if self.engine.circuit(circ.key) is None:
                        raise OnionError("introduction circuit closed before INTRO_ESTABLISHED")
                    with trio.move_on_after(0.5):
                        await waiting.wait()
            if self.table.get(svc.name) is not svc or self.state.get(svc.name) is not st:
                self.engine.close(circ.key)
                return
            intro.circuit = circ.key
            st.intros.append(intro)
            log.debug("service %s: introduction point at %s (auth %s)", svc.name, relay.peer_id,
                      bytes(intro.auth.verify_key).hex()[:12])
            st.dirty = True
            self._wake.set()
        except (OnionError, trio.TooSlowError, FognodeError) as e:
            log.debug("service %s: introduction point not established: %s", svc.name, e or "timed out")
        finally:
            st.building -= 1
            st.pending.discard(relay.peer_id)

    def _on_closed(self, a: CircuitClosed) -> None:
        self.serving.pop(a.circuit, None)
        for st in self.state.values():
            for i in list(st.intros):
                if i.circuit == a.circuit:
                    log.debug("introduction point at %s lost: %s", i.relay, a.reason.value)
                    st.intros.remove(i)
                    st.dirty = True
                    self._wake.set()

    async def _publish(self, svc: HiddenService, st: ServiceState, points: list[IntroPoint]) -> None:
        now = self.clock()
        puts = descriptors_to_publish(svc.key, self.periods, points, now=now, window=self.config.descriptor_window,
                                      lifetime=self.config.descriptor_lifetime)
        ok = 0
        for put in puts:
            try:
                with trio.fail_after(self.dht_timeout):
                    await self.store.put(put.key, put.value)
                ok += 1
                self.metrics.descriptor_puts.labels("ok").inc()
            except (trio.TooSlowError, FognodeError, OSError, ValueError) as e:
                self.metrics.descriptor_puts.labels("failed").inc()
                log.debug("service %s: descriptor put %s failed: %r", svc.name, put.key, e)
        log.debug("service %s: descriptors with %s put (%d of %d)", svc.name, [p.relay for p in points], ok, len(puts))
        if not ok:
            st.published_at = 0.0          # try again at the next check
            st.published_periods = set()
            return
        if not st.deployed or st.published_points != len(points):
            st.deployed = True
            st.published_points = len(points)
            self.events.publish(HiddenServiceDeployed(svc.name, svc.address.host, len(points),
                                                      tuple(sorted(svc.ports))))

    # -- introductions and rendezvous -----------------------------------------------------------

    def _on_intro_message(self, svc: HiddenService, intro: IntroState, cmd: RelayCommand, data: bytes) -> None:
        if cmd is not RelayCommand.INTRODUCE2 or self._nursery is None:
            return
        self._nursery.start_soon(self._introduced, svc, intro, data)

    async def _introduced(self, svc: HiddenService, intro: IntroState, data: bytes) -> None:
        try:
            req = open_introduce2(data, intro.enc_secret)
        except RemoteProtocolError as e:
            self.metrics.introductions.labels("bad").inc()
            log.debug("service %s: bad INTRODUCE2: %s", svc.name, e)
            return
        if not self.replay.first_time(bytes(intro.auth.verify_key), req.onionskin):
            self.metrics.introductions.labels("replayed").inc()
            return
        known = next((r for r in self.engine.relays() if r.peer_id == req.rendezvous), None)
        rp = known or RelayInfo(req.rendezvous, req.rp_identity, req.rp_onion_key)
        try:
            reply, keys = server_handshake(bytes(intro.auth.verify_key), {intro.enc_public: intro.enc_secret},
                                           req.onionskin)
        except RemoteProtocolError:
            self.metrics.introductions.labels("bad_handshake").inc()
            return
        try:
            with trio.fail_after(self.step_timeout):
                circ = await self.engine.build(last=rp, purpose="service-rendezvous")
        except (OnionError, trio.TooSlowError) as e:
            self.metrics.introductions.labels("rendezvous_failed").inc()
            log.debug("service %s: rendezvous circuit failed: %s", svc.name, e or "timed out")
            return
        self.serving[circ.key] = svc
        self.engine.send_meeting(circ, RelayCommand.RENDEZVOUS1, req.cookie + reply, then_join=(keys, True))
        self.metrics.introductions.labels("ok").inc()

    def _on_open_stream(self, a: OpenStream) -> None:
        svc = self.serving.get(a.circuit)
        if svc is None or self._nursery is None:
            self.engine.refuse_stream(a.circuit, a.stream_id)
            return
        self._nursery.start_soon(self._serve, svc, a)

    async def _serve(self, svc: HiddenService, a: OpenStream) -> None:
        try:
            host, _, port_text = a.target.rpartition(":")
            if parse_address(host).pubkey != svc.address.pubkey or not port_text.isdigit():
                raise HsConnectError(f"stream to {a.target!r} on {svc.address.host}'s circuit")
            target = self.table.target(svc.address, int(port_text))
            with trio.fail_after(self.config.socks_connect_timeout):
                tcp = await trio.open_tcp_stream(target.host, target.port)
        except (HsConnectError, AddressError, OSError, trio.TooSlowError) as e:
            log.debug("service %s: stream %s refused: %s", svc.name, a.target, e)
            self.engine.refuse_stream(a.circuit, a.stream_id)
            return
        stream = self.engine.accept_stream(a.circuit, a.stream_id)
        if stream is None:
            await tcp.aclose()
            return
        await splice(stream, tcp, idle_timeout=self.config.socks_idle_timeout)

    # -- views ---------------------------------------------------------------------------------

    def view(self) -> list[dict[str, object]]:
        out = []
        for svc in self.table.services():
            st = self.state.get(svc.name, ServiceState())
            out.append({**svc.to_json(), "intro_points": [i.relay for i in st.intros if i.circuit is not None],
                        "published": st.deployed, "rendezvous_circuits":
                            sum(1 for s in self.serving.values() if s is svc)})
        return out
