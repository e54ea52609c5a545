"""The onion role's working parts: everything but its shell (protocol.py), loaded once the
node is ready (loading.py) and then run by the role.

`OnionParts` wires together, with what the node gives it (ctx) and the shell's metrics:
- `OnionEngine` (engine.py): the relay and client cores over the links on
  `/fognode/onion/1.0.0` (linkmgr.py);
- the relay's onion keyring (onionkey.py, keyfiles.py): loaded from the data dir, ticked every
  `KEY_CHECK` seconds (a rotation is saved, handed to the relay core and its certificate to the
  registry role, which carries it in this node's device record), only when `relay = true`;
- the guard set and build-time history, loaded from and saved to `<datadir>/onion/`;
- `RelayDirectory` (directory.py): relays from the registry's records, reputation and pings;
- the DHT validators of the hsdesc namespace (`HsDescValidator`, refusals counted by reason)
  and the `fognode-hosted` namespace (`HostedValidator`), handed to it by the shell (which
  registers them at start), and `DhtDescriptorStore`, the `hsdesc.DescriptorStore` over the
  overlay's DHT;
- `ServiceHost` (hsservice.py) for `[[protocols.onion.services]]` and onion.add_service;
- `HsClient` (hsclient.py), the connector of the SOCKS5 port (which the shell binds at start);
- hosted data (hosting/, issue 14 item 5): `HostingServer` (this node as a host: shards under
  `hosting_quota_mib`, its `fog-hosting` .fog service, a fog.hosting offer in the market) and
  `HostedOwner` (onion.deploy, paying hosts' debit notes, refunds, counting access fees) and
  `HostedAccessor` (onion.access); streams to hosts' services go through an `HsClient` per
  number of hops (a privacy level's).
Building it reads the data dir (keyring, guard state, service keys): a service entry whose key
cannot be made or read raises ConfigError naming `protocols.onion.services`.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import trio

from fognode.node.errors import ConfigError
from fognode.node.role import NodeContext
from fognode.protocols.onion.address import FogAddress
from fognode.protocols.onion.config import OnionConfig
from fognode.protocols.onion.cstream import CircuitStream
from fognode.protocols.onion.directory import RelayDirectory
from fognode.protocols.onion.engine import OnionEngine
from fognode.protocols.onion.hosting.accessor import HostedAccessor
from fognode.protocols.onion.hosting.host import HOSTING_SERVICE, HostingServer
from fognode.protocols.onion.hosting.manifest import HostedValidator
from fognode.protocols.onion.hosting.metrics import HostingMetrics
from fognode.protocols.onion.hosting.owner import HostedOwner
from fognode.protocols.onion.hs_errors import ServiceError
from fognode.protocols.onion.hsclient import HsClient
from fognode.protocols.onion.hsdir import HsDescValidator
from fognode.protocols.onion.hsservice import ServiceHost
from fognode.protocols.onion.keyfiles import ONION_DIR, load_onion_keyring, remove_service_keys, save_onion_keyring
from fognode.protocols.onion.metrics import OnionMetrics
from fognode.protocols.onion.services import HiddenService, ServiceTable, add_service, load_services

log = logging.getLogger("fognode.onion")

KEY_CHECK = 60.0          # seconds between onion keyring ticks (and record checks)
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


def hsdesc_validator(ctx: NodeContext, config: OnionConfig, metrics: OnionMetrics) -> HsDescValidator:
    """The hsdesc namespace's DHT validator, counting refusals in `metrics`."""
    return HsDescValidator(ctx.clock, config.periods(), window=config.descriptor_window,
                           max_skew=config.max_clock_skew,
                           on_reject=lambda r: metrics.descriptors_rejected.labels("dht", r.value).inc())


def hosted_validator() -> HostedValidator:
    """The `fognode-hosted` namespace's DHT validator."""
    return HostedValidator()


class OnionParts:
    """The onion role's engine, services, keys and hosted data (module docstring)."""

    def __init__(self, ctx: NodeContext, config: OnionConfig, metrics: OnionMetrics,
                 hosting_metrics: HostingMetrics, validator: HsDescValidator,
                 hosted: HostedValidator) -> None:
        self.ctx = ctx
        self.config = config
        self.metrics = metrics
        self.validator = validator
        self.hosted_validator = hosted
        self.state_dir = ctx.datadir / ONION_DIR
        self.directory = RelayDirectory(ctx.services, ctx.overlay, ctx.clock, max_skew=config.max_clock_skew)
        self.engine = OnionEngine(peer_id=ctx.peer_id, identity=ctx.identity, overlay=ctx.overlay, config=config,
                                  metrics=metrics, events=ctx.events, state_dir=self.state_dir,
                                  relays=self.directory.relays, clock=ctx.clock)
        self.keyring = load_onion_keyring(ctx.datadir, ctx.identity, rotation=int(config.onion_key_rotation_days * 86400),
                                          overlap=int(config.onion_key_overlap))
        try:
            self.table: ServiceTable = load_services(ctx.datadir, config.service_ports())
        except ServiceError as e:
            raise ConfigError(str(e), key="protocols.onion.services") from None
        self.store = DhtDescriptorStore(ctx.overlay)
        self.host = ServiceHost(self.engine, self.store, self.table, config, metrics, ctx.events, ctx.clock)
        self.hs_client = HsClient(self.engine, self.store, config, metrics, ctx.clock)
        self.hs_clients: dict[int, HsClient] = {config.hops: self.hs_client}
        self.hosting = HostingServer(overlay=ctx.overlay, services=ctx.services, root=self.state_dir / "hosting",
                                     quota_mib=config.hosting_quota_mib, price=config.hosting_price,
                                     grace=config.hosting_grace, clock=ctx.clock, metrics=hosting_metrics,
                                     add_service=self._map_hosting_service)
        self.owner = HostedOwner(overlay=ctx.overlay, services=ctx.services, events=ctx.events,
                                 datadir=self.state_dir, interval=config.hosting_interval, clock=ctx.clock,
                                 metrics=hosting_metrics)
        self.accessor = HostedAccessor(overlay=ctx.overlay, services=ctx.services, clock=ctx.clock,
                                       metrics=hosting_metrics, connect=self._hosted_connect,
                                       forget_circuit=self._forget_circuit)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the engine (it takes over the link stream), the services, the hosting server
        (it takes over the hosting stream) and the loops; started once all serve. Runs until
        cancelled."""
        m = self.metrics
        for state in ("building", "open"):
            m.circuits.labels(state).set_function(
                lambda s=state: sum(1 for c in self.engine.client.circuits.values() if c.state.value == s))
        m.relay_circuits.set_function(lambda: len(self.engine.relay.circuits))
        m.neighbours.set_function(lambda: len(self.engine.links.links))
        async with trio.open_nursery() as nursery:
            self.tick_keys()
            await nursery.start(self.engine.run)
            await nursery.start(self.host.run)
            await nursery.start(self.hosting.run)
            nursery.start_soon(self.owner.notes_loop)
            nursery.start_soon(self.owner.payments_loop)
            nursery.start_soon(self._key_loop)
            nursery.start_soon(self._directory_loop)
            task_status.started()

    # -- services ------------------------------------------------------------------------------

    def add_service(self, params: dict[str, Any]) -> HiddenService:
        """Map a port of a .fog service (onion.add_service); ConfigError or ServiceError."""
        svc = add_service(self.ctx.datadir, self.table, params)
        self.host.changed()
        return svc

    def remove_service(self, name: str, port: int | None, forget_key: bool) -> bool:
        """Unmap a port or the whole service (onion.remove_service); True when its key files
        were deleted. ServiceError. With `forget_key`, a service removed earlier (no longer in
        the table) still has its key files deleted: they outlive a plain removal."""
        if forget_key and port is None and self.table.get(name) is None \
                and remove_service_keys(self.ctx.datadir, name):
            return True
        self.table.remove(name, port)
        forgot = remove_service_keys(self.ctx.datadir, name) if forget_key and self.table.get(name) is None else False
        self.host.changed()
        return forgot

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

    def hosted_stats(self, address: FogAddress | None = None) -> dict[str, Any]:
        """Hosted data as owner and as accessor, per .fog address (or only `address`'s)."""
        out = self.owner.stats(address)
        for a, mine in self.accessor.stats(address).items():
            out.setdefault(a, {}).update(mine)
        return out

    # -- keys, directory -------------------------------------------------------------------------

    def tick_keys(self) -> None:
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
            self.tick_keys()

    async def _directory_loop(self) -> None:
        while True:
            await trio.sleep(DIRECTORY_EVERY)
            with trio.move_on_after(60):
                await self.directory.refresh()
