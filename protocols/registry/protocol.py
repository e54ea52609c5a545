"""The registry role: device records in the DHT and on gossip, liveness, and reputation.

A thin trio adapter around `core.RegistryCore`: gossip handlers, a clock loop, a capability
probe loop, the EigenTrust recompute loop (in a worker thread) and a few workers that carry
out the core's network actions (DHT puts, provider records, look-ups, publishes) from a
bounded queue, so a slow DHT never stalls gossip handling. Uses only `ctx.overlay`.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import trio

from fognode.node.errors import FognodeError, LocalProtocolError, RpcError
from fognode.node.health import HealthReport, Status
from fognode.node.overlay import FramedStream, GossipMessage
from fognode.node.role import NodeContext, Role
from fognode.node.rpc.methods import rpc_method
from fognode.protocols.registry import direct
from fognode.protocols.registry import errors as E
from fognode.protocols.registry.actions import (Action, DhtProvide, DhtPut, Emit, FetchRecord,
                                                Ping, Publish, Refused, SetAppScore, SyncFrom,
                                                SyncObservationsFrom)
from fognode.protocols.registry.api import RegistryService, ReputationService
from fognode.protocols.registry.checked import CheckedBatches
from fognode.protocols.registry.config import RegistryConfig, pretrusted_from_genesis
from fognode.protocols.registry.core import DEVICES_TOPIC, OBSERVATIONS_TOPIC, RegistryCore
from fognode.protocols.registry.errors import Rejected
from fognode.protocols.registry.gossip_check import GossipChecks
from fognode.protocols.registry.metrics import RegistryMetrics
from fognode.protocols.registry.observation import ALL_SERVICES, Outcome
from fognode.protocols.registry.online import OnlineCount
from fognode.protocols.registry.peerid import pubkey_from_peer_id
from fognode.protocols.registry.probe import probe
from fognode.protocols.registry.record import DeviceRecord, HarvestInfo, make_profile
from fognode.protocols.registry.refusals import RefusalLog
from fognode.protocols.registry.reputation import compute_sums
from fognode.protocols.registry.validator import NAMESPACE, device_key, region_key
from fognode.protocols.registry.view import Criteria, device_row

log = logging.getLogger("fognode.registry")

ACTION_QUEUE = 1024
WORKERS = 4            # DHT workers; twice as many for direct-stream requests
SYNC_STEP = 8          # synced records or observations checked per loop step (about 2 ms)


def _check_peer(peer: str) -> str:
    try:
        pubkey_from_peer_id(peer)
    except ValueError as e:
        raise RpcError(E.BAD_PEER_ID, str(e)) from None
    return peer


class RegistryRole(Role):
    """Device registry and reputation."""

    name = "registry"
    Config = RegistryConfig
    topics = (DEVICES_TOPIC, OBSERVATIONS_TOPIC)
    stream_ids = (direct.DIRECT_PROTOCOL,)

    def __init__(self, ctx: NodeContext, config: RegistryConfig) -> None:
        super().__init__(ctx, config)
        self.config: RegistryConfig = config
        region = config.region or ctx.region
        offered = list(dict.fromkeys([*ctx.roles, *config.roles_offered]))   # what runs here, then extras
        self.profile = make_profile(region, config.device_type, offered, config.prices())
        self.core = RegistryCore(ctx.identity, config, self.profile,
                                 pretrusted=pretrusted_from_genesis(ctx.genesis),
                                 now=ctx.clock(), validator_clock=ctx.clock)
        self.metrics = RegistryMetrics.create(ctx.metrics)
        self.core.validator.on_reject = lambda r: self.metrics.rejected.labels("dht", r.value).inc()
        self.refusals = RefusalLog(self.metrics.rejected, lambda *a, **k: self.ctx.overlay.penalize(*a, **k),
                                   ctx.peer_id)
        self._send, self._recv = trio.open_memory_channel[Action](ACTION_QUEUE)
        self._slow_send, self._slow_recv = trio.open_memory_channel[Action](ACTION_QUEUE)
        self._pub_send, self._pub_recv = trio.open_memory_channel[Action](ACTION_QUEUE)
        self._stopped = False
        self._online = OnlineCount()    # devices_online, memoised on the view's and liveness's versions
        self.checked = CheckedBatches()   # observation batches our gossip check decoded (checked.py)
        self.registry_service = RegistryService(self)
        self.reputation_service = ReputationService(self)

    # ---- carrying out actions ---------------------------------------------------------------

    def _do(self, actions: list[Action]) -> None:
        """Carry out local actions now; queue network ones for the workers (never blocks).

        Three lanes, so none waits for another: gossip publishes (in order), direct-stream
        requests (pings, pulls, syncs), and DHT operations (up to `dht_timeout` each on a young
        network)."""
        for a in actions:
            if isinstance(a, Emit):
                self.ctx.events.publish(a.event)
            elif isinstance(a, Refused):
                self.refusals.refused(a, time.monotonic())   # counted, charged or logged
            elif isinstance(a, SetAppScore):
                self.ctx.overlay.set_app_score(a.peer_id, a.score)
            elif isinstance(a, Publish):
                self._queue(a, lane=self._pub_send)
            elif isinstance(a, (DhtPut, DhtProvide)):
                self._queue(a, lane=self._slow_send)
            else:
                self._queue(a, lane=self._send)

    def _queue(self, a: Action, *, lane: trio.MemorySendChannel[Action]) -> None:
        try:
            lane.send_nowait(a)
        except trio.WouldBlock:
            self.metrics.actions_dropped.labels(type(a).__name__).inc()

    async def _publisher(self) -> None:
        """Gossip publishes, in order, each bounded: a stalled gossip layer costs us heartbeats
        (pings and pulls cover for them), never the other lanes."""
        async for a in self._pub_recv:
            assert isinstance(a, Publish)
            with trio.move_on_after(max(1.0, self.config.heartbeat_interval)) as scope:
                try:
                    await self.ctx.overlay.publish(a.topic, a.data)
                except (FognodeError, OSError) as e:
                    log.debug("publish on %s failed: %r", a.topic, e)
            if scope.cancelled_caught:
                self.metrics.actions_dropped.labels("Publish").inc()

    async def _timed(self, op: str, coro: Any) -> Any:
        t0 = time.perf_counter()
        try:
            with trio.fail_after(self.config.dht_timeout):
                result = await coro
        except (trio.TooSlowError, FognodeError, OSError, ValueError) as e:
            self.metrics.dht_failures.labels(op).inc()
            log.debug("DHT %s failed: %r", op, e)
            raise
        self.metrics.dht_lookup_seconds.labels(op).observe(time.perf_counter() - t0)
        return result

    async def _quick_worker(self) -> None:
        """Pings, syncs and record pulls over the direct stream; a pull that fails goes to the
        slow lane as a DHT look-up."""
        ov = self.ctx.overlay
        async for a in self._recv:
            try:
                if isinstance(a, Ping):
                    if await self._ping(a.peer_id):
                        self._do(self.core.on_pong(a.peer_id, self.ctx.clock()))
                elif isinstance(a, (SyncFrom, SyncObservationsFrom)):
                    await self._sync_from(a)
                elif isinstance(a, FetchRecord):
                    value = await direct.pull_record(ov, a.peer_id, self._pull_timeout())
                    if value is None:
                        self._queue(a, lane=self._slow_send)
                    else:
                        self._do(self.core.on_dht_record(a.peer_id, value, self.ctx.clock()))
            except (FognodeError, OSError) as e:
                log.debug("registry action %s failed: %r", type(a).__name__, e)

    async def _sync_from(self, a: SyncFrom | SyncObservationsFrom) -> None:
        """One page of a peer's records or observations, handed to the core SYNC_STEP items
        per loop step (each item is a signature check: a whole page at once held the loop for
        10-17 ms). Until the last step, the peer's cursor stays where this page began."""
        obs = isinstance(a, SyncObservationsFrom)
        reply = await direct.pull_sync(self.ctx.overlay, a.peer_id, a.epoch, a.after,
                                       self._pull_timeout(), observations=obs)
        if reply is None:
            return
        handle = self.core.on_observation_sync_reply if obs else self.core.on_sync_reply
        held, items = (a.after if reply.epoch == a.epoch else 0), reply.records
        for i in range(0, len(items), SYNC_STEP) or range(1):
            last, before = i + SYNC_STEP >= len(items), self.core.book.accepted
            self._do(handle(a.peer_id, reply.epoch, reply.next if last else held,
                            reply.more and last, items[i:i + SYNC_STEP], self.ctx.clock()))
            if self.core.book.accepted > before:
                self.metrics.observations.labels("sync").inc(self.core.book.accepted - before)
            if not last:
                await trio.sleep(0)

    async def _slow_worker(self) -> None:
        """DHT puts, provider records and look-ups (each bounded by dht_timeout)."""
        ov = self.ctx.overlay
        async for a in self._slow_recv:
            try:
                if isinstance(a, DhtPut):
                    try:
                        await self._timed("put", ov.dht_put(a.key, a.value))
                    except (trio.TooSlowError, FognodeError, OSError, ValueError):
                        self.core.dht_put_failed(self.ctx.clock())
                        raise
                elif isinstance(a, DhtProvide):
                    await self._timed("provide", ov.dht_provide(a.key))
                elif isinstance(a, FetchRecord):
                    value = await self._timed("get", ov.dht_get(device_key(a.peer_id)))
                    self._do(self.core.on_dht_record(a.peer_id, value, self.ctx.clock()))
            except (trio.TooSlowError, FognodeError, OSError, ValueError) as e:
                log.debug("registry action %s failed: %r", type(a).__name__, e)

    # ---- direct stream ----------------------------------------------------------------------

    def _direct_timeout(self) -> float:   # a ping's: liveness is judged within offline_after
        return min(5.0, self.config.offline_after / 3)

    def _pull_timeout(self) -> float:   # a pull's or sync's: opening a stream alone can take
        return max(self._direct_timeout(), self.config.dht_timeout)   # seconds under load

    async def _ping(self, peer: str) -> bool:
        """True when `peer`'s registry answers a ping (over an existing connection)."""
        return await direct.ping(self.ctx.overlay, peer, self._direct_timeout())

    async def _serve_direct(self, s: FramedStream) -> None:
        own = self.core.own
        await direct.serve(s, lambda: own.encode() if own is not None else None,
                           lambda: self._stopped, self.core.serve_sync,
                           self.core.serve_observation_sync)

    # ---- gossip -----------------------------------------------------------------------------

    async def _on_devices(self, msg: GossipMessage) -> None:
        self._do(self.core.on_device_gossip(msg.origin, msg.data, self.ctx.clock()))

    async def _on_observation(self, msg: GossipMessage) -> None:
        before = self.core.book.accepted
        checked = self.checked.take(msg.data, msg.origin)    # what our gossip check decoded
        self._do(self.core.on_observation(msg.origin, msg.data, self.ctx.clock(), checked=checked))
        if self.core.book.accepted > before:
            self.metrics.observations.labels("gossip").inc()

    # ---- loops ------------------------------------------------------------------------------

    async def _clock_loop(self) -> None:
        step = max(0.05, min(1.0, self.config.heartbeat_interval / 2, self.config.offline_after / 10))
        while True:
            now = self.ctx.clock()
            connected = [p.peer_id for p in self.ctx.overlay.peers() if p.connected]
            for peer in connected:
                self._do(self.core.on_peer_connected(peer, now))
            self._do(self.core.announce_due(connected, now))
            self._do(self.core.sync_due(connected, now))
            self._do(self.core.ping_offline(connected, now))
            self._do(self.core.tick(now))
            await trio.sleep(step)

    async def _probe_loop(self) -> None:
        while True:
            await trio.sleep(self.config.probe_interval)
            caps = await trio.to_thread.run_sync(probe, self.ctx.datadir)
            self._do(self.core.update_capabilities(caps, self.ctx.clock()))

    async def _reputation_loop(self) -> None:
        while True:
            await trio.sleep(self.config.eigentrust_interval)
            await self.recompute()

    async def recompute(self) -> None:
        """Recompute global trust now if observations changed: the local trust matrices and
        EigenTrust in a worker thread, on a copy of the sums taken on the loop."""
        if not self.core.book.changed:
            return
        self.core.book.changed = False
        sums = self.core.book.frozen_sums()   # the one step on the loop: a dict copy per service
        rc = await trio.to_thread.run_sync(compute_sums, sums, list(self.core.pretrusted),
                                           self.config.eigentrust_alpha)
        self.metrics.recompute_seconds.observe(rc.seconds)
        self._do(self.core.apply_reputation(rc))

    async def _discover_loop(self) -> None:
        """Per-region discovery: fetch records of providers of our region we have not seen."""
        while True:
            await trio.sleep(self.config.heartbeat_interval * 3)
            region = self.profile.region
            if not region:
                continue
            try:
                await self.discover(region)
            except (trio.TooSlowError, FognodeError, OSError, ValueError) as e:
                log.debug("region discovery failed: %s", e)

    async def discover(self, region: str) -> int:
        """Find providers of `/fognode/region/<region>` and fetch records we lack; returns how
        many were fetched. Awaits DHT look-ups (each bounded by dht_timeout)."""
        peers = await self._timed("providers", self.ctx.overlay.dht_find_providers(region_key(region)))
        fetched = 0
        for p in peers:
            if p != self.ctx.peer_id and p not in self.core.view:
                if await self.lookup(p) is not None:
                    fetched += 1
        return fetched

    async def lookup(self, peer: str) -> DeviceRecord | None:
        """The view's record of `peer`, else the DHT's (validated); None when nobody has one."""
        rec = self.core.view.get(peer)
        if rec is not None:
            return rec
        try:
            value = await self._timed("get", self.ctx.overlay.dht_get(device_key(peer)))
        except (trio.TooSlowError, FognodeError, OSError, ValueError):
            return None
        self._do(self.core.on_dht_record(peer, value, self.ctx.clock()))
        return self.core.view.get(peer)

    def set_harvest(self, harvest: HarvestInfo | None) -> None:
        self._do(self.core.update_harvest(harvest, self.ctx.clock()))

    async def fetch(self, peer: str) -> DeviceRecord | None:
        value = await direct.pull_record(self.ctx.overlay, peer, self._direct_timeout())
        if value is None:
            return await self.lookup(peer)
        self._do(self.core.on_dht_record(peer, value, self.ctx.clock()))
        return self.core.view.get(peer)

    def set_onion_cert(self, cert: bytes) -> None:
        self._do(self.core.update_onion_cert(cert, self.ctx.clock()))

    def report_outcome(self, subject: str, service: str, ok: bool, weight: float,
                       evidence: bytes) -> None:
        self._do(self.core.report_outcome(subject, service, ok, weight, evidence, self.ctx.clock()))
        self.metrics.observations.labels("local").inc()

    def report_outcomes(self, outcomes: list[Outcome]) -> list[str]:
        actions, refused = self.core.report_outcomes(outcomes, self.ctx.clock())
        self._do(actions)
        self.metrics.observations.labels("local").inc(len(outcomes) - len(refused))
        return refused

    # ---- run --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        ov = self.ctx.overlay
        ov.register_dht_validator(NAMESPACE, self.core.validator)
        ov.set_stream_handler(direct.DIRECT_PROTOCOL, self._serve_direct)
        self.metrics.devices_known.set_function(lambda: len(self.core.view))
        self.metrics.devices_online.set_function(lambda: self._online(self.core.view, self.core.liveness))
        checks = GossipChecks(self.metrics.rejected, ov.penalize, self.checked)   # gossip_check.py
        await ov.subscribe(DEVICES_TOPIC, self._on_devices, check=checks.devices)
        await ov.subscribe(OBSERVATIONS_TOPIC, self._on_observation, check=checks.observations)
        caps = await trio.to_thread.run_sync(probe, self.ctx.datadir)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._publisher)
                for _ in range(WORKERS):
                    nursery.start_soon(self._quick_worker)
                    nursery.start_soon(self._quick_worker)
                    nursery.start_soon(self._slow_worker)
                self._do(self.core.start(caps, self.ctx.clock()))
                self.ctx.services.provide("registry", self.registry_service)
                self.ctx.services.provide("reputation", self.reputation_service)
                nursery.start_soon(self._clock_loop)
                nursery.start_soon(self._probe_loop)
                nursery.start_soon(self._reputation_loop)
                nursery.start_soon(self._discover_loop)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._stopped = True
            self.ctx.services.withdraw("registry")
            self.ctx.services.withdraw("reputation")
            await self._say_goodbye()

    async def _say_goodbye(self) -> None:
        """On a graceful stop, tell the others we are going (bounded, shielded)."""
        for a in self.core.goodbye(self.ctx.clock()):
            if isinstance(a, Publish):
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    try:
                        await self.ctx.overlay.publish(a.topic, a.data)
                    except (FognodeError, OSError) as e:
                        log.debug("goodbye not sent: %s", e)

    def health_report(self) -> HealthReport:
        """Degraded while this device's own record is not published (peers cannot find it)."""
        if self.core.own is None:
            return HealthReport(Status.DEGRADED, "this device's record is not published yet")
        return HealthReport.healthy()

    def health_detail(self) -> dict[str, Any]:
        own = self.core.own
        return {"devices_known": len(self.core.view), "devices_online": self._online(self.core.view, self.core.liveness),
                "record_seq": own.seq if own else None,
                "reputation_recomputed_s": self.core.reputation.last_seconds}

    # ---- RPC --------------------------------------------------------------------------------

    @rpc_method("registry.devices")
    async def rpc_devices(self, region: str | None = None, role: str | None = None,
                          min_cores: int | None = None, min_memory_gb: float | None = None,
                          gpu: bool | None = None, charging: bool | None = None,
                          online: bool | None = None, min_reputation: float | None = None,
                          service: str | None = None, device_type: str | None = None,
                          battery: bool | None = None,
                          available: bool | None = None) -> list[dict[str, Any]]:
        """Known devices matching every given filter, best reputation first.

        For a region other than ours, providers of that region are looked up in the DHT first.
        MIN_REPUTATION is relative (1.0 = an average peer) for SERVICE (default: all services).
        AVAILABLE true keeps the devices whose harvest role announces it may take work now;
        false, the others (suspended, or no harvest role: unknown). The harvest column says
        "available", "suspended: <reason>" or nothing (no harvest role).
        """
        for name, v in (("min_cores", min_cores), ("min_memory_gb", min_memory_gb),
                        ("min_reputation", min_reputation)):
            if v is not None and (not math.isfinite(v) or v < 0):
                raise RpcError(E.BAD_FILTER, f"{name} must be a non-negative number, got {v}")
        if region and region != self.profile.region:
            try:
                await self.discover(region)
            except (trio.TooSlowError, FognodeError, OSError, ValueError) as e:
                log.info("registry.devices: DHT discovery of region %s failed: %s", region, e)
        c = Criteria(region=region, role=role, device_type=device_type, min_cores=min_cores,
                     min_memory_gb=min_memory_gb, gpu=gpu, battery=battery, charging=charging,
                     online=online, min_reputation=min_reputation, service=service,
                     available=available)
        return [device_row(r, online=self.core.liveness.is_online(r.peer_id),
                           reputation=self.core.reputation.score(r.peer_id, service or ALL_SERVICES))
                for r in self.core.query(c)]

    @rpc_method("registry.show")
    async def rpc_show(self, peer: str) -> dict[str, Any]:
        """PEER's device record (from the DHT if it is not in the local view), liveness and
        reputation."""
        _check_peer(peer)
        rec = await self.lookup(peer)
        if rec is None:
            raise RpcError(E.UNKNOWN_DEVICE, f"no device record for {peer} in the view or the DHT")
        return self.core.describe(rec)

    @rpc_method("registry.mark_offline")
    async def rpc_mark_offline(self, peer: str | None = None) -> dict[str, Any]:
        """Mark PEER offline (default: this node, which tells the network it is going down)."""
        target = _check_peer(peer) if peer else self.ctx.peer_id
        self._do(self.core.mark_offline(target, self.ctx.clock()))
        return {"peer": target, "online": False}

    @rpc_method("registry.update")
    async def rpc_update(self, roles: list[str] | None = None, device_type: str | None = None,
                         region: str | None = None) -> dict[str, Any]:
        """Change what this node announces (ROLES offered besides the roles it runs,
        DEVICE_TYPE, REGION) and republish its record at once. Lasts until the daemon
        restarts: make it permanent in node.toml."""
        p = self.profile
        try:
            new = make_profile(p.region if region is None else region,
                               p.device_type if device_type is None else device_type,
                               p.roles if roles is None else [*self.ctx.roles, *roles], dict(p.prices))
            probe_cfg = RegistryConfig(region=new.region, device_type=new.device_type,
                                       roles_offered=list(new.roles))
            probe_cfg.validate("registry.update")
        except FognodeError as e:
            raise RpcError(E.BAD_FILTER, str(e)) from None
        self.profile = new
        self._do(self.core.update_profile(new, self.ctx.clock()))
        own = self.core.own
        return {"peer": self.ctx.peer_id, "seq": own.seq if own else None, **new.to_wire()}

    @rpc_method("reputation.show")
    async def rpc_reputation_show(self, peer: str, service: str | None = None) -> dict[str, Any]:
        """PEER's global reputation per service (or for SERVICE): 1.0 is an average peer."""
        _check_peer(peer)
        rep = self.core.reputation
        if service is not None:
            if not rep.has_service(service):
                raise RpcError(E.UNKNOWN_SERVICE, f"no reputation scores for service {service!r} "
                                                  f"(known: {', '.join(rep.services()) or 'none'})")
            services = [service]
        else:
            services = rep.services()
        return {"peer": peer, "scores": {s: round(rep.score(peer, s), 6) for s in services},
                "pretrusted": peer in self.core.pretrusted}

    @rpc_method("reputation.top")
    async def rpc_reputation_top(self, service: str = ALL_SERVICES, limit: int = 20) -> list[dict[str, Any]]:
        """The LIMIT peers with the highest reputation for SERVICE (default: all services)."""
        if not 1 <= limit <= 10_000:
            raise RpcError(E.BAD_FILTER, f"limit must be between 1 and 10000, got {limit}")
        return [{"peer": p, "service": service, "score": round(s, 6),
                 "online": self.core.liveness.is_online(p)}
                for p, s in self.core.reputation.top(service, limit)]

    @rpc_method("reputation.report")
    async def rpc_reputation_report(self, subject: str, service: str, ok: bool,
                                    weight: float = 1.0, evidence: str = "") -> dict[str, Any]:
        """Report that SUBJECT served SERVICE well (OK true) or badly, as this node's signed
        observation (what other roles do through the reputation service)."""
        _check_peer(subject)
        try:
            self.report_outcome(subject, service, ok, weight, evidence.encode()[:64])
        except LocalProtocolError as e:
            raise RpcError(E.BAD_REPORT, str(e)) from None
        return {"subject": subject, "service": service, "ok": ok}


__all__ = ["RegistryRole", "Rejected"]
