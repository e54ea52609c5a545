"""The onion role: relays, circuits, the SOCKS5 port and `.fog` hidden services (issue 14).

A thin trio adapter. It wires together, with what the node gives it (ctx):
- `OnionEngine` (engine.py): the relay and client cores over the links on
  `/fognode/onion/1.0.0` (linkmgr.py);
- the relay's onion keyring (onionkey.py, keyfiles.py): loaded from the data dir, ticked every
  `KEY_CHECK` seconds (a rotation is saved, handed to the relay core and its certificate to the
  registry role, which carries it in this node's device record), only when `relay = true`;
- the guard set and build-time history, loaded from and saved to `<datadir>/onion/`;
- `RelayDirectory` (directory.py): relays from the registry's records, reputation and pings;
- the DHT: `HsDescValidator` registered on the hsdesc namespace (refusals counted by reason),
  and `DhtDescriptorStore`, the `hsdesc.DescriptorStore` over the overlay's DHT;
- `ServiceHost` (hsservice.py) for `[[protocols.onion.services]]` and onion.add_service;
- `HsClient` (hsclient.py) as the connector of the SOCKS5 port (socks_server.py), when
  `socks_port` is not 0. A port that cannot be bound is logged as an ERROR and shown in the
  role's health; the relay and the services keep running without it.
- hosted data (hosting/, issue 14 item 5): `HostingServer` (this node as a host: shards under
  `hosting_quota_mib`, its `fog-hosting` .fog service, a fog.hosting offer in the market) and
  `HostedOwner` (onion.deploy, paying hosts' debit notes, refunds, counting access fees) and
  `HostedAccessor` (onion.access),
  the `fognode-hosted` DHT namespace's validator; streams to hosts' services go through an
  `HsClient` per number of hops (a privacy level's).
RPC methods are below (`onion.*`); errors 600-602 (errors.py), 620-621 for services, 630-632
for hosted data.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from fognode.node.errors import ConfigError, RpcError
from fognode.node.role import NodeContext, Role
from fognode.node.rpc.methods import rpc_method
from fognode.protocols.onion import errors as E
from fognode.protocols.onion.blinding import HSDESC_NAMESPACE
from fognode.protocols.onion.config import OnionConfig
from fognode.protocols.onion.directory import RelayDirectory
from fognode.protocols.onion.engine import BuildFailed, OnionEngine
from fognode.protocols.onion.hs_errors import ServiceError
from fognode.ledger.address import decode_address
from fognode.ledger.amounts import parse_amount
from fognode.node.errors import FognodeError
from fognode.protocols.onion.address import FogAddress, parse_address
from fognode.protocols.onion.cstream import CircuitStream
from fognode.protocols.onion.hosting.accessor import HostedAccessor
from fognode.protocols.onion.hosting.errors import HostingError
from fognode.protocols.onion.hosting.host import HOSTING_SERVICE, HostingServer
from fognode.protocols.onion.hosting.levels import LEVELS
from fognode.protocols.onion.hosting.manifest import NAMESPACE as HOSTED_NAMESPACE
from fognode.protocols.onion.hosting.manifest import HostedValidator
from fognode.protocols.onion.hosting.metrics import HostingMetrics
from fognode.protocols.onion.hosting.owner import HostedOwner
from fognode.protocols.onion.hosting.wire import PROTOCOL_ID as HOSTING_PROTOCOL_ID
from fognode.protocols.onion.hsclient import HsClient
from fognode.protocols.onion.hsdir import HsDescValidator
from fognode.protocols.onion.hsservice import ServiceHost
from fognode.protocols.onion.keyfiles import (ONION_DIR, load_onion_keyring, remove_service_keys,
                                              save_onion_keyring)
from fognode.protocols.onion.linkmgr import PROTOCOL_ID
from fognode.protocols.onion.metrics import OnionMetrics
from fognode.protocols.onion.services import ServiceTable, add_service, load_services
from fognode.protocols.onion.socks_server import SocksServer

log = logging.getLogger("fognode.onion")

KEY_CHECK = 60.0          # seconds between onion keyring ticks (and record checks)
METRICS_EVERY = 2.0
DIRECTORY_EVERY = 3.0


class DhtDescriptorStore:
    """hsdesc.DescriptorStore over the overlay's DHT."""

    def __init__(self, overlay: Any) -> None:
        self.overlay = overlay

    async def put(self, key: str, value: bytes) -> None:
        await self.overlay.dht_put(key, value)

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self.overlay.dht_get(key)
        return value


class OnionRole(Role):
    """Onion relay, client circuits, SOCKS5 port and hidden services."""

    name = "onion"
    Config = OnionConfig
    stream_ids = (PROTOCOL_ID, HOSTING_PROTOCOL_ID)

    def __init__(self, ctx: NodeContext, config: OnionConfig) -> None:
        super().__init__(ctx, config)
        self.config: OnionConfig = config
        self.metrics = OnionMetrics.create(ctx.metrics)
        self.state_dir = ctx.datadir / ONION_DIR
        self.directory = RelayDirectory(ctx.services, ctx.overlay, ctx.clock, max_skew=config.max_clock_skew)
        self.engine = OnionEngine(peer_id=ctx.peer_id, identity=ctx.identity, overlay=ctx.overlay, config=config,
                                  metrics=self.metrics, events=ctx.events, state_dir=self.state_dir,
                                  relays=self.directory.relays, clock=ctx.clock)
        self.keyring = load_onion_keyring(ctx.datadir, ctx.identity, rotation=int(config.onion_key_rotation_days * 86400),
                                          overlap=int(config.onion_key_overlap))
        try:
            self.table: ServiceTable = load_services(ctx.datadir, config.service_ports())
        except ServiceError as e:
            raise ConfigError(str(e), key="protocols.onion.services") from None
        self.store = DhtDescriptorStore(ctx.overlay)
        self.validator = HsDescValidator(ctx.clock, config.periods(), window=config.descriptor_window,
                                         max_skew=config.max_clock_skew,
                                         on_reject=lambda r: self.metrics.descriptors_rejected.labels("dht", r.value).inc())
        self.host = ServiceHost(self.engine, self.store, self.table, config, self.metrics, ctx.events, ctx.clock)
        self.hs_client = HsClient(self.engine, self.store, config, self.metrics, ctx.clock)
        self.hs_clients: dict[int, HsClient] = {config.hops: self.hs_client}
        self.hosting_metrics = HostingMetrics.create(ctx.metrics)
        self.hosting = HostingServer(overlay=ctx.overlay, services=ctx.services, root=self.state_dir / "hosting",
                                     quota_mib=config.hosting_quota_mib, price=config.hosting_price,
                                     grace=config.hosting_grace, clock=ctx.clock, metrics=self.hosting_metrics,
                                     add_service=self._map_hosting_service)
        self.owner = HostedOwner(overlay=ctx.overlay, services=ctx.services, events=ctx.events,
                                 datadir=self.state_dir, interval=config.hosting_interval, clock=ctx.clock,
                                 metrics=self.hosting_metrics)
        self.accessor = HostedAccessor(overlay=ctx.overlay, services=ctx.services, clock=ctx.clock,
                                       metrics=self.hosting_metrics, connect=self._hosted_connect,
                                       forget_circuit=self._forget_circuit)
        self.hosted_validator = HostedValidator()
        self.socks: SocksServer | None = None
        self.socks_error = ""
        self._socks_seen: dict[str, int] = {}

    # -- run -----------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.ctx.overlay.register_dht_validator(HSDESC_NAMESPACE, self.validator)
        self.ctx.overlay.register_dht_validator(HOSTED_NAMESPACE, self.hosted_validator)
        m = self.metrics
        for state in ("building", "open"):
            m.circuits.labels(state).set_function(
                lambda s=state: sum(1 for c in self.engine.client.circuits.values() if c.state.value == s))
        m.relay_circuits.set_function(lambda: len(self.engine.relay.circuits))
        m.neighbours.set_function(lambda: len(self.engine.links.links))
        async with trio.open_nursery() as nursery:
            self._tick_keys()
            await nursery.start(self.engine.run)
            await nursery.start(self.host.run)
            if self.config.socks_port:
                self.socks = SocksServer(self.hs_client.connect, self.config.socks_settings())
                try:
                    await nursery.start(self.socks.run)
                except OSError as e:
                    self.socks_error = (f"cannot listen on {self.config.socks_host}:{self.config.socks_port}: {e}; "
                                        "set protocols.onion.socks_port to a free port (0: none)")
                    log.error("onion SOCKS port: %s", self.socks_error)
                    self.socks = None
            await nursery.start(self.hosting.run)
            nursery.start_soon(self.owner.notes_loop)
            nursery.start_soon(self.owner.payments_loop)
            nursery.start_soon(self._key_loop)
            nursery.start_soon(self._metrics_loop)
            nursery.start_soon(self._directory_loop)
            task_status.started()

    # -- hosted data ---------------------------------------------------------------------------

    def _map_hosting_service(self, port: int) -> FogAddress:
        """Map HOSTING_PORT of the `fog-hosting` service to the hosting server's local port."""
        if self.table.get(HOSTING_SERVICE) is not None:
            self.table.remove(HOSTING_SERVICE)
        svc = add_service(self.ctx.datadir, self.table, {"name": HOSTING_SERVICE, "port": 1,
                                                          "target": f"127.0.0.1:{port}"})
        self.host.changed()
        return svc.address

    def _client_for(self, hops: int) -> HsClient:
        client = self.hs_clients.get(hops)
        if client is None:
            client = HsClient(self.engine, self.store, replace(self.config, hops=hops), self.metrics, self.ctx.clock)
            self.hs_clients[hops] = client
        return client

    async def _hosted_connect(self, hops: int, address: FogAddress, port: int) -> CircuitStream:
        return await self._client_for(hops).connect(address, port)

    def _forget_circuit(self, hops: int, address: FogAddress) -> None:
        key = self._client_for(hops).joined.pop(address.pubkey, None)
        if key is not None:
            self.engine.close(key)

    def _hosted_stats(self, address: FogAddress | None = None) -> dict[str, Any]:
        out = self.owner.stats(address)
        for a, mine in self.accessor.stats(address).items():
            out.setdefault(a, {}).update(mine)
        return out

    def _tick_keys(self) -> None:
        if not self.config.relay:
            return
        now = self.ctx.clock()
        if self.keyring.tick(now):
            try:
                save_onion_keyring(self.ctx.datadir, self.keyring)
            except (OSError, ServiceError) as e:
                log.warning("onion key not saved (a restart makes a new one): %s", e)
        self.engine.set_onion_keys({k.public: k.secret for k in self.keyring.usable(now)})
        registry = self.ctx.services.get("registry")
        cur = self.keyring.current
        if registry is not None and cur is not None:
            registry.set_onion_cert(cur.cert.encode())

    async def _key_loop(self) -> None:
        """Tick the keyring; until the registry runs, look for it every second."""
        while True:
            await trio.sleep(KEY_CHECK if self.ctx.services.get("registry") is not None else 1.0)
            self._tick_keys()

    async def _directory_loop(self) -> None:
        while True:
            await trio.sleep(DIRECTORY_EVERY)
            with trio.move_on_after(60):
                await self.directory.refresh()

    async def _metrics_loop(self) -> None:
        while True:
            if self.socks is not None:
                for k, v in self.socks.stats.items():
                    d = v - self._socks_seen.get(k, 0)
                    if d > 0:
                        self.metrics.socks.labels(k).inc(d)
                        self._socks_seen[k] = v
            await trio.sleep(METRICS_EVERY)

    def health_detail(self) -> dict[str, Any]:
        return {"relay": self.config.relay, "circuits": len(self.engine.client.circuits),
                "relay_circuits": len(self.engine.relay.circuits), "neighbours": len(self.engine.links.links),
                "socks_port": self.socks.port if self.socks is not None else None,
                **({"socks_error": self.socks_error} if self.socks_error else {}),
                "services": self.table.count()}

    # -- RPC -----------------------------------------------------------------------------------

    @rpc_method("onion.circuits")
    async def rpc_circuits(self) -> dict[str, Any]:
        """This node's own circuits (path, state, purpose, streams), and what it knows as a
        relay of the circuits it carries: per circuit only its two neighbours and counters."""
        return {"own": self.engine.circuits_view(), "relayed": self.engine.relay_view()}

    @rpc_method("onion.build")
    async def rpc_build(self, hops: int | None = None, last: str | None = None) -> dict[str, Any]:
        """Build a circuit of HOPS relays (default protocols.onion.hops), ending at the relay
        LAST if given, and wait until it is built or fails."""
        if hops is not None and not 1 <= hops <= 8:
            raise RpcError(E.NO_PATH, f"hops must be between 1 and 8, got {hops}")
        relay = None
        if last is not None:
            relay = self.directory.get(last)
            if relay is None:
                raise RpcError(E.NO_PATH, f"{last} is not a known relay (no valid onion key in its record)")
        try:
            circ = await self.engine.build(hops=hops, last=relay, purpose="general")
        except E.PathError as e:
            raise RpcError(E.NO_PATH, str(e)) from None
        except BuildFailed as e:
            raise RpcError(E.BUILD_FAILED, str(e)) from None
        return next(c for c in self.engine.circuits_view() if c["circuit"] == f"{circ.key[0]}:{circ.key[1]:08x}")

    @rpc_method("onion.close")
    async def rpc_close(self, circuit: str) -> dict[str, Any]:
        """Close one of this node's circuits (CIRCUIT as onion.circuits names it)."""
        key = self.engine.by_name(circuit)
        if key is None:
            raise RpcError(E.UNKNOWN_CIRCUIT, f"no circuit {circuit!r} (see onion.circuits)")
        self.engine.close(key)
        return {"circuit": circuit, "closed": True}

    @rpc_method("onion.link_test")
    async def rpc_link_test(self, peer: str, mb: int = 16) -> dict[str, Any]:
        """Write MB megabytes of padding cells to the peer PEER over this node's onion link to it
        (dialled if needed; one raw stream: what every circuit through that neighbour shares;
        PEER drops them) and report how long the writes took. A bandwidth test
        (tools/bench/onion.py)."""
        if isinstance(mb, bool) or not isinstance(mb, int) or not 1 <= mb <= 1024:
            raise RpcError(E.LINK_FAILED, f"mb must be an integer between 1 and 1024, got {mb!r}")
        if not isinstance(peer, str) or not peer or peer == self.ctx.peer_id:
            raise RpcError(E.LINK_FAILED, f"peer must be another node's peer id, got {peer!r}")
        t = trio.current_time()
        try:
            sent = await self.engine.links.send_padding(peer, mb * 1_000_000)
        except (E.OnionError, trio.TooSlowError) as e:
            raise RpcError(E.LINK_FAILED, f"link test to {peer}: {e or 'a write stalled'}") from None
        return {"peer": peer, "bytes": sent, "seconds": round(trio.current_time() - t, 6)}

    @rpc_method("onion.services")
    async def rpc_services(self) -> list[dict[str, Any]]:
        """The hidden services of this node: address, ports, introduction points, published."""
        return self.host.view()

    @rpc_method("onion.add_service")
    async def rpc_add_service(self, name: str, port: int, target: str) -> dict[str, Any]:
        """Map PORT of the .fog service NAME to the local TARGET ("127.0.0.1:8080"); the
        service's key is made on first use (<datadir>/onion/services/NAME/). Lasts until the
        daemon restarts: add a [[protocols.onion.services]] table to keep it."""
        try:
            svc = add_service(self.ctx.datadir, self.table, {"name": name, "port": port, "target": target})
        except ConfigError as e:
            raise RpcError(E.BAD_SERVICE, str(e)) from None
        except ServiceError as e:
            raise RpcError(E.SERVICE_REFUSED, str(e)) from None
        self.host.changed()
        return svc.to_json()

    @rpc_method("onion.remove_service")
    async def rpc_remove_service(self, name: str, port: int | None = None, forget_key: bool = False) -> dict[str, Any]:
        """Unmap PORT of service NAME, or the whole service; with FORGET_KEY its key files are
        deleted too (its .fog address is gone for good)."""
        try:
            self.table.remove(name, port)
            forgot = remove_service_keys(self.ctx.datadir, name) if forget_key and self.table.get(name) is None else False
        except ServiceError as e:
            raise RpcError(E.SERVICE_REFUSED, str(e)) from None
        self.host.changed()
        return {"name": name, "port": port, "removed": True, "key_deleted": forgot}

    @rpc_method("onion.deploy")
    async def rpc_deploy(self, file: str, budget: str, privacy_level: int = 2, fee: str = "0", hours: int = 24,
                         name: str = "") -> dict[str, Any]:
        """Host FILE (a path on this node) as hidden data: encrypted, erasure-coded into shards
        kept by fog.hosting hosts of the market, paid from BUDGET tokens at most for HOURS;
        each access costs FEE tokens paid to this node's wallet. PRIVACY_LEVEL 1-3 picks k-of-n
        and the accessors' hops (README "Hosted data"). Returns the .fog address to give out."""
        if privacy_level not in LEVELS:
            raise RpcError(E.BAD_HOSTING_PARAM, f"privacy_level must be one of {', '.join(map(str, LEVELS))}, "
                                                f"got {privacy_level}")
        try:
            budget_micro = parse_amount(budget)
            fee_micro = parse_amount(fee, allow_zero=True)
        except FognodeError as e:
            raise RpcError(E.BAD_HOSTING_PARAM, f"budget/fee: {e}") from None
        path = Path(file).expanduser()
        try:
            data = await trio.Path(path).read_bytes()
        except OSError as e:
            raise RpcError(E.BAD_HOSTING_PARAM, f"file: cannot read {path}: {e.strerror or e}") from None
        if not data:
            raise RpcError(E.BAD_HOSTING_PARAM, f"file: {path} is empty")
        try:
            return await self.owner.deploy(data, name=name or path.name[:255], level=privacy_level,
                                            budget=budget_micro, fee=fee_micro, hours=hours)
        except (HostingError, FognodeError, ValueError) as e:
            raise RpcError(E.DEPLOY_FAILED, str(e)) from None

    @rpc_method("onion.access")
    async def rpc_access(self, address: str, out: str, wallet: str = "") -> dict[str, Any]:
        """Fetch the hidden data at ADDRESS (.fog) through circuits, pay its access fee from
        WALLET (default: the node's) to its owner, and write the content to OUT (a path on
        this node; not overwritten if it exists)."""
        try:
            addr = parse_address(address)
        except ValueError as e:
            raise RpcError(E.BAD_HOSTING_PARAM, f"address: {e}") from None
        try:
            payer = decode_address(wallet) if wallet else None
        except ValueError as e:
            raise RpcError(E.BAD_HOSTING_PARAM, f"wallet: {e}") from None
        target = Path(out).expanduser()
        if target.exists():
            raise RpcError(E.BAD_HOSTING_PARAM, f"out: {target} exists (not overwritten)")
        if not target.parent.is_dir():
            raise RpcError(E.BAD_HOSTING_PARAM, f"out: {target.parent} is not a directory")
        try:
            content, info = await self.accessor.access(addr, wallet=payer)
        except (HostingError, FognodeError) as e:
            raise RpcError(E.ACCESS_FAILED, str(e)) from None
        try:
            await trio.Path(target).write_bytes(content)
        except OSError as e:
            raise RpcError(E.ACCESS_FAILED, f"out: cannot write {target}: {e.strerror or e}") from None
        return {**info, "out": str(target)}

    @rpc_method("onion.stats")
    async def rpc_stats(self, service: str = "") -> dict[str, Any]:
        """Counters: circuits by state, relayed circuits and cells, neighbours, link bytes,
        the SOCKS port's outcomes, guards, the adaptive build timeout, refused descriptors,
        hosted data (as owner: accesses and fees per deployed address; as host: shards,
        quota, requests served and refused). With SERVICE (a .fog address), only that
        hosted service's stats (get_service_stats)."""
        if service:
            try:
                addr = parse_address(service)
            except ValueError as e:
                raise RpcError(E.BAD_HOSTING_PARAM, f"service: {e}") from None
            found = self._hosted_stats(addr)
            if not found:
                raise RpcError(E.BAD_HOSTING_PARAM, f"service: {addr.host} was neither deployed nor accessed here")
            return found[addr.host]
        eng = self.engine
        states: dict[str, int] = {}
        for c in eng.client.circuits.values():
            states[c.state.value] = states.get(c.state.value, 0) + 1
        return {
            "relay": self.config.relay, "onion_key": self.keyring.current.public.hex() if self.keyring.current else None,
            "circuits": states, "relay_circuits": len(eng.relay.circuits), "cells_relayed": eng.relay.cells_relayed,
            "cells_dropped": eng.relay.dropped, "neighbours": eng.links.neighbours(),
            "link_bytes_in": eng.links.bytes_in, "link_bytes_out": eng.links.bytes_out,
            "link_writes": eng.links.writes,
            "relays_known": len(self.directory.relays()), "guards": eng.client.guards.peers,
            "build_timeout": round(eng.client.build_times.timeout(), 3),
            "socks_port": self.socks.port if self.socks is not None else None,
            "socks": dict(self.socks.stats) if self.socks is not None else {},
            "services": self.table.count(),
            "descriptors_rejected": {"dht": {r.value: n for r, n in self.validator.rejected.items()},
                                     "fetch": dict(self.hs_client.rejected)},
            "onion_certs_rejected": dict(self.directory.rejected),
            "hosted": self._hosted_stats(), "hosting": self.hosting.view(),
            "hosted_manifests_rejected": self.hosted_validator.rejected,
        }

