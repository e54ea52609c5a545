"""The onion role: relays, circuits, the SOCKS5 port and `.fog` hidden services (issue 14).

A thin trio adapter, in two steps. This shell starts with the role: it checks the config,
creates the role's metrics, serves the role's two streams (`/fognode/onion/1.0.0` links,
`/fognode/onion/hosting/1.0.0`), registers the validators of its two DHT namespaces
(hsdesc, `fognode-hosted`), binds the SOCKS5 port (socks_server.py; when `socks_port` is not
0: a port that cannot be bound is logged as an ERROR and shown in the role's health, and the
rest of the role runs without it) and lists the `onion.*` RPC methods below. The working parts
(parts.py: engine, keyring, relay directory, hidden services, the SOCKS port's connector,
hosted data) load after the node is ready (loading.py) and then run; what arrives before they
serve waits for them (`parts`, bounded by WAIT_BOUND), so nothing is refused: a stream, a
SOCKS client's CONNECT or a call is served once they do; a DHT record of the role's
namespaces is validated at once (`LateValidator`: its validator's module is then imported
on the spot, once, on the event loop). Until the parts serve, the role's health detail says
"loading"; parts that do not import fail the role (PartsLoadFailed, not restarted).
Errors 600-602 (errors.py), 620-621 for services, 630-632 for hosted data.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import trio

from fognode.ledger.address import decode_address
from fognode.ledger.amounts import format_amount, parse_amount
from fognode.node.errors import ConfigError, FognodeError, LocalProtocolError, RpcError
from fognode.node.overlay import FramedStream
from fognode.node.peerid import pubkey_from_peer_id
from fognode.node.role import NodeContext, Role
from fognode.node.rpc.methods import NODE_ROLE_UNAVAILABLE, FilePath, rpc_method
from fognode.protocols.onion import errors as E
from fognode.protocols.onion.address import FogAddress, parse_address
from fognode.protocols.onion.config import OnionConfig
from fognode.protocols.onion.hosting.errors import HostingError
from fognode.protocols.onion.hosting.levels import LEVELS
from fognode.protocols.onion.hosting.metrics import HostingMetrics
from fognode.protocols.onion.hs_errors import HsConnectError, ServiceError, SocksReply
from fognode.protocols.onion.loading import PARTS_MODULE, WAIT_BOUND, parts_load
from fognode.protocols.onion.metrics import OnionMetrics
from fognode.protocols.onion.socks_server import SocksServer
from fognode.protocols.onion.wire_names import HOSTED_NAMESPACE, HOSTING_STREAM, HSDESC_NAMESPACE, LINK_STREAM

if TYPE_CHECKING:   # the working parts: loaded after the role starts (loading.py)
    from fognode.protocols.onion.cstream import CircuitStream
    from fognode.protocols.onion.parts import OnionParts

log = logging.getLogger("fognode.onion")

METRICS_EVERY = 2.0


class LateValidator:
    """A DHT namespace's validator, registered when the role starts: the real one (`make`,
    which imports its module) is built on first use or when the parts load, whichever comes
    first, so a record that arrives meanwhile is checked, not refused."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._real: Any = None

    def get(self) -> Any:
        if self._real is None:
            self._real = self._make()
        return self._real

    def validate(self, key: str, value: bytes) -> None:
        self.get().validate(key, value)

    def select(self, key: str, values: list[bytes]) -> int:
        result: int = self.get().select(key, values)
        return result


class OnionRole(Role):
    """Onion relay, client circuits, SOCKS5 port and hidden services."""

    name = "onion"
    Config = OnionConfig
    stream_ids = (LINK_STREAM, HOSTING_STREAM)

    parts_module = PARTS_MODULE   # what parts_load imports (tests name one that fails)

    def __init__(self, ctx: NodeContext, config: OnionConfig) -> None:
        super().__init__(ctx, config)
        self.config: OnionConfig = config
        self.metrics = OnionMetrics.create(ctx.metrics)
        self.hosting_metrics = HostingMetrics.create(ctx.metrics)
        self.validator = LateValidator(self._hsdesc_validator)
        self.hosted_validator = LateValidator(self._hosted_validator)
        self._load = parts_load(self.parts_module)
        self._parts: OnionParts | None = None
        self._serving = trio.Event()           # set once the parts serve (or their load failed)
        self.socks: SocksServer | None = None
        self.socks_error = ""
        self._socks_seen: dict[str, int] = {}

    def _hsdesc_validator(self) -> Any:
        from fognode.protocols.onion.parts import hsdesc_validator

        return hsdesc_validator(self.ctx, self.config, self.metrics)

    def _hosted_validator(self) -> Any:
        from fognode.protocols.onion.parts import hosted_validator

        return hosted_validator()

    # -- run -----------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the streams, DHT namespaces, SOCKS port and RPC methods at once; load the
        parts (in a daemon: once the node is ready) and run them. Raises PartsLoadFailed when
        they do not import, ConfigError when a service's key cannot be made or read."""
        overlay = self.ctx.overlay
        overlay.register_dht_validator(HSDESC_NAMESPACE, self.validator)
        overlay.register_dht_validator(HOSTED_NAMESPACE, self.hosted_validator)
        for sid in self.stream_ids:
            overlay.set_stream_handler(sid, partial(self._serve_stream, sid))
        # in a daemon, started now and the parts load once the node is ready; run on its own
        # (tests, embedders) there is nothing to defer the load past: started once they serve
        deferred = self.ctx.services.get("node") is not None
        try:
            async with trio.open_nursery() as nursery:
                await self._open_socks(nursery)
                nursery.start_soon(self._metrics_loop)
                if deferred:
                    task_status.started()
                module = await self._load.run(self.ctx.services)
                parts = module.OnionParts(self.ctx, self.config, self.metrics, self.hosting_metrics,
                                          self.validator.get(), self.hosted_validator.get())
                await nursery.start(parts.run)     # the engine and the hosting server take their streams over
                self._parts = parts
                self._serving.set()
                if not deferred:
                    task_status.started()
        finally:
            self._serving.set()                    # waiters see the parts, or why there are none

    async def _open_socks(self, nursery: trio.Nursery) -> None:
        """Bind the SOCKS port when one is set; a port that cannot be bound is an ERROR shown
        in the role's health, not a failure of the role."""
        if not self.config.socks_port:
            return
        self.socks = SocksServer(self._socks_connect, self.config.socks_settings())
        try:
            await nursery.start(self.socks.run)
        except OSError as e:
            self.socks_error = (f"cannot listen on {self.config.socks_host}:{self.config.socks_port}: {e}; "
                                "set protocols.onion.socks_port to a free port (0: none)")
            log.error("onion SOCKS port: %s", self.socks_error)
            self.socks = None

    async def _socks_connect(self, address: FogAddress, port: int) -> CircuitStream:
        """The SOCKS port's connector: the parts' HsClient, once they serve (a client that
        comes while they load waits, within the port's connect_timeout)."""
        try:
            parts = await self.parts()
        except LocalProtocolError as e:
            raise HsConnectError(str(e), reply=SocksReply.GENERAL_FAILURE) from None
        return await parts.hs_client.connect(address, port)

    async def _metrics_loop(self) -> None:
        while True:
            if self.socks is not None:
                for k, v in self.socks.stats.items():
                    d = v - self._socks_seen.get(k, 0)
                    if d > 0:
                        self.metrics.socks.labels(k).inc(d)
                        self._socks_seen[k] = v
            await trio.sleep(METRICS_EVERY)

    async def parts(self) -> OnionParts:
        """The working parts, once they serve: waits (at most WAIT_BOUND seconds) while they
        load. Raises LocalProtocolError when their load failed or took longer."""
        return await self._load.wait_served(lambda: self._parts, self._serving, WAIT_BOUND)

    async def _rpc_parts(self) -> OnionParts:
        """`parts()` for an RPC method: RpcError NODE_ROLE_UNAVAILABLE when they do not serve."""
        try:
            return await self.parts()
        except LocalProtocolError as e:
            raise RpcError(NODE_ROLE_UNAVAILABLE, str(e)) from None

    async def _serve_stream(self, sid: str, stream: FramedStream) -> None:
        """A stream that arrived before the parts served: handed on once they do."""
        parts = await self.parts()
        handler = parts.engine.links.serve_inbound if sid == LINK_STREAM else parts.hosting.serve_owner
        await handler(stream)

    def health_detail(self) -> dict[str, Any]:
        """Circuits, relayed circuits, neighbours, the SOCKS port, services; "loading" (what
        the deferred load is doing) until the parts serve."""
        socks = {"socks_port": self.socks.port if self.socks is not None else None,
                 **({"socks_error": self.socks_error} if self.socks_error else {})}
        p = self._parts
        if p is None:
            return {"loading": f"circuits, relay and services: {self._load.state}", **socks}
        return {"relay": self.config.relay, "circuits": len(p.engine.client.circuits),
                "relay_circuits": len(p.engine.relay.circuits), "neighbours": len(p.engine.links.links),
                **socks, "services": p.table.count()}

    # -- RPC -----------------------------------------------------------------------------------

    @rpc_method("onion.circuits")
    async def rpc_circuits(self) -> dict[str, Any]:
        """This node's own circuits (path, state, purpose, streams), and what it knows as a
        relay of the circuits it carries: per circuit only its two neighbours and counters."""
        p = await self._rpc_parts()
        return {"own": p.engine.circuits_view(), "relayed": p.engine.relay_view()}

    @rpc_method("onion.build")
    async def rpc_build(self, hops: int | None = None, last: str | None = None) -> dict[str, Any]:
        """Build a circuit of HOPS relays (default protocols.onion.hops), ending at the relay
        LAST if given, and wait until it is built or fails."""
        if hops is not None and not 1 <= hops <= 8:
            raise RpcError(E.NO_PATH, f"hops must be between 1 and 8, got {hops}")
        p = await self._rpc_parts()
        from fognode.protocols.onion.engine import BuildFailed   # loaded with the parts

        relay = None
        if last is not None:
            relay = p.directory.get(last)
            if relay is None:
                raise RpcError(E.NO_PATH, f"{last} is not a known relay (no valid onion key in its record)")
        try:
            circ = await p.engine.build(hops=hops, last=relay, purpose="general")
        except E.PathError as e:
            raise RpcError(E.NO_PATH, str(e)) from None
        except BuildFailed as e:
            raise RpcError(E.BUILD_FAILED, str(e)) from None
        return next(c for c in p.engine.circuits_view() if c["circuit"] == f"{circ.key[0]}:{circ.key[1]:08x}")

    @rpc_method("onion.close")
    async def rpc_close(self, circuit: str) -> dict[str, Any]:
        """Close one of this node's circuits (CIRCUIT as onion.circuits names it)."""
        p = await self._rpc_parts()
        key = p.engine.by_name(circuit)
        if key is None:
            raise RpcError(E.UNKNOWN_CIRCUIT, f"no circuit {circuit!r} (see onion.circuits)")
        p.engine.close(key)
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
        try:
            pubkey_from_peer_id(peer)
        except ValueError as e:
            raise RpcError(E.LINK_FAILED, f"peer: {e}") from None
        p = await self._rpc_parts()
        t = trio.current_time()
        try:
            sent = await p.engine.links.send_padding(peer, mb * 1_000_000)
        except E.OnionError as e:
            raise RpcError(E.LINK_FAILED, f"link test to {peer}: {e}") from None
        return {"peer": peer, "bytes": sent, "seconds": round(trio.current_time() - t, 6)}

    @rpc_method("onion.services")
    async def rpc_services(self) -> list[dict[str, Any]]:
        """The hidden services of this node: address, ports, introduction points, published."""
        return (await self._rpc_parts()).host.view()

    @rpc_method("onion.add_service")
    async def rpc_add_service(self, name: str, port: int, target: str) -> dict[str, Any]:
        """Map PORT of the .fog service NAME to the local TARGET ("127.0.0.1:8080"); the
        service's key is made on first use (<datadir>/onion/services/NAME/). Lasts until the
        daemon restarts: add a [[protocols.onion.services]] table to keep it."""
        p = await self._rpc_parts()
        try:
            svc = p.add_service({"name": name, "port": port, "target": target})
        except ConfigError as e:
            raise RpcError(E.BAD_SERVICE, str(e)) from None
        except ServiceError as e:
            raise RpcError(E.SERVICE_REFUSED, str(e)) from None
        return svc.to_json()

    @rpc_method("onion.remove_service")
    async def rpc_remove_service(self, name: str, port: int | None = None, forget_key: bool = False) -> dict[str, Any]:
        """Unmap PORT of service NAME, or the whole service; with FORGET_KEY its key files are
        deleted too (its .fog address is gone for good)."""
        p = await self._rpc_parts()
        try:
            forgot = p.remove_service(name, port, forget_key)
        except ServiceError as e:
            raise RpcError(E.SERVICE_REFUSED, str(e)) from None
        return {"name": name, "port": port, "removed": True, "key_deleted": forgot}

    @rpc_method("onion.deploy")
    async def rpc_deploy(self, file: FilePath, budget: str, privacy_level: int = 2, fee: str = "0", hours: int = 24,
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
            return await (await self._rpc_parts()).owner.deploy(data, name=name or path.name[:255], level=privacy_level,
                                            budget=budget_micro, fee=fee_micro, hours=hours)
        except (HostingError, FognodeError, ValueError) as e:
            raise RpcError(E.DEPLOY_FAILED, str(e)) from None

    @rpc_method("onion.access")
    async def rpc_access(self, address: str, out: FilePath, wallet: str = "") -> dict[str, Any]:
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
            content, info = await (await self._rpc_parts()).accessor.access(addr, wallet=payer)
        except (HostingError, FognodeError) as e:
            raise RpcError(E.ACCESS_FAILED, str(e)) from None
        try:
            await trio.Path(target).write_bytes(content)
        except OSError as e:
            raise RpcError(E.ACCESS_FAILED, f"out: cannot write {target}: {e.strerror or e}") from None
        return {**info, "fee_paid": format_amount(info["fee_paid"]), "out": str(target)}

    @rpc_method("onion.stats")
    async def rpc_stats(self, service: str = "") -> dict[str, Any]:
        """Counters: circuits by state, relayed circuits and cells, neighbours, link bytes,
        the SOCKS port's outcomes, guards, the adaptive build timeout, refused descriptors,
        hosted data (as owner: accesses and fees per deployed address; as host: shards,
        quota, requests served and refused). With SERVICE (a .fog address), only that
        hosted service's stats (get_service_stats)."""
        p = await self._rpc_parts()
        if service:
            try:
                addr = parse_address(service)
            except ValueError as e:
                raise RpcError(E.BAD_HOSTING_PARAM, f"service: {e}") from None
            found = p.hosted_stats(addr)
            if not found:
                raise RpcError(E.BAD_HOSTING_PARAM, f"service: {addr.host} was neither deployed nor accessed here")
            return found[addr.host]
        eng = p.engine
        states: dict[str, int] = {}
        for c in eng.client.circuits.values():
            states[c.state.value] = states.get(c.state.value, 0) + 1
        return {
            "relay": self.config.relay, "onion_key": p.keyring.current.public.hex() if p.keyring.current else None,
            "circuits": states, "relay_circuits": len(eng.relay.circuits), "cells_relayed": eng.relay.cells_relayed,
            "cells_dropped": eng.relay.dropped, "neighbours": eng.links.neighbours(),
            "link_bytes_in": eng.links.bytes_in, "link_bytes_out": eng.links.bytes_out,
            "link_writes": eng.links.writes,
            "relays_known": len(p.directory.relays()), "guards": eng.client.guards.peers,
            "build_timeout": round(eng.client.build_times.timeout(), 3),
            "socks_port": self.socks.port if self.socks is not None else None,
            "socks": dict(self.socks.stats) if self.socks is not None else {},
            "services": p.table.count(),
            "descriptors_rejected": {"dht": {r.value: n for r, n in p.validator.rejected.items()},
                                     "fetch": dict(p.hs_client.rejected)},
            "onion_certs_rejected": dict(p.directory.rejected),
            "hosted": p.hosted_stats(), "hosting": p.hosting.view(),
            "hosted_manifests_rejected": p.hosted_validator.rejected,
        }

