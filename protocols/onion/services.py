"""Hidden services of this node: `.fog` ports mapped to local TCP servers.

In node.toml, one `[[protocols.onion.services]]` table per mapped port, like Tor's
`HiddenServiceDir` + `HiddenServicePort`::

    [[protocols.onion.services]]
    name = "web"                 # the service (its key lives in <datadir>/onion/services/web/)
    port = 80                    # the port clients ask for on <address>.fog
    target = "127.0.0.1:8080"    # where this node connects for them

Entries with the same `name` are one service (one key, one address) with several ports.
`target` is `IPv4:port`, `[IPv6]:port` or `localhost:port`: an address literal, so that what
the service reaches does not depend on DNS (Tor's HiddenServicePort takes an address too);
a LAN address is allowed, as in Tor, since the operator chose it. The entries are checked by
service_ports.py (`parse_services`: every refusal a `ServiceConfigError` naming
`protocols.onion.services[i].<field>` or the RPC parameter).

`ServiceTable` is the run-time view (`onion.add_service` / `onion.remove_service` change it;
the connector asks `target(address, port)` when a rendezvous stream arrives).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from nacl.signing import SigningKey

from fognode.protocols.onion.address import FogAddress, address_from_pubkey
from fognode.protocols.onion.hs_errors import HsConnectError, ServiceError, SocksReply
from fognode.protocols.onion.keyfiles import load_or_create_service_key
from fognode.protocols.onion.service_ports import MAX_PORTS, MAX_SERVICES, ServicePort, Target, parse_service_port

@dataclass
class HiddenService:
    name: str
    key: SigningKey
    address: FogAddress
    ports: dict[int, Target] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address.host,
                "ports": {str(p): str(t) for p, t in sorted(self.ports.items())}}


class ServiceTable:
    """The services this node hosts, by name and by address."""

    def __init__(self) -> None:
        self._by_name: dict[str, HiddenService] = {}
        self._by_key: dict[bytes, HiddenService] = {}

    def add(self, name: str, key: SigningKey, port: int, target: Target) -> HiddenService:
        """Map `port` of service `name` (keyed by `key`) to `target`; ServiceError if that port
        is already mapped or `key` is not the key `name` already has."""
        svc = self._by_name.get(name)
        if svc is None:
            if len(self._by_name) >= MAX_SERVICES:
                raise ServiceError(f"this node already hosts {MAX_SERVICES} services")
            svc = HiddenService(name, key, address_from_pubkey(bytes(key.verify_key)))
            if svc.address.pubkey in self._by_key:
                raise ServiceError(f"service {self._by_key[svc.address.pubkey].name!r} already has that key")
        elif bytes(svc.key) != bytes(key):
            raise ServiceError(f"service {name!r} already exists with another key")
        if port in svc.ports:
            raise ServiceError(f"port {port} of service {name!r} is already mapped to {svc.ports[port]}")
        if len(svc.ports) >= MAX_PORTS:
            raise ServiceError(f"service {name!r} already maps {MAX_PORTS} ports")
        svc.ports[port] = target
        self._by_name[name] = svc
        self._by_key[svc.address.pubkey] = svc
        return svc

    def remove(self, name: str, port: int | None = None) -> None:
        """Unmap one port, or the whole service when `port` is None (or its last port goes);
        ServiceError if unknown."""
        svc = self._by_name.get(name)
        if svc is None:
            raise ServiceError(f"no service named {name!r}")
        if port is not None:
            if port not in svc.ports:
                raise ServiceError(f"service {name!r} does not map port {port}")
            del svc.ports[port]
        if port is None or not svc.ports:
            del self._by_name[name]
            del self._by_key[svc.address.pubkey]

    def get(self, name: str) -> HiddenService | None:
        return self._by_name.get(name)

    def by_address(self, address: FogAddress) -> HiddenService | None:
        return self._by_key.get(address.pubkey)

    def services(self) -> list[HiddenService]:
        return [self._by_name[n] for n in sorted(self._by_name)]

    def count(self) -> int:
        """len(services()), without building and sorting the list (node.info asks per call)."""
        return len(self._by_name)

    def target(self, address: FogAddress, port: int) -> Target:
        """Where a stream to `address`:`port` goes; HsConnectError(CONNECTION_REFUSED) when
        the service does not map that port (as a closed port answers), HOST_UNREACHABLE when
        this node does not host the address."""
        svc = self._by_key.get(address.pubkey)
        if svc is None:
            raise HsConnectError(f"{address.host} is not hosted here", reply=SocksReply.HOST_UNREACHABLE)
        t = svc.ports.get(port)
        if t is None:
            raise HsConnectError(f"{address.host} has no port {port}", reply=SocksReply.CONNECTION_REFUSED)
        return t


def load_services(datadir: Path, entries: Sequence[ServicePort]) -> ServiceTable:
    """The table of configured services, with their keys loaded (or made on first start)."""
    table = ServiceTable()
    for sp in entries:
        _add(datadir, table, sp)
    return table


def _add(datadir: Path, table: ServiceTable, sp: ServicePort) -> HiddenService:
    existing = table.get(sp.name)
    key = existing.key if existing is not None else load_or_create_service_key(datadir, sp.name)
    return table.add(sp.name, key, sp.port, sp.target)


def add_service(datadir: Path, table: ServiceTable, params: Any) -> HiddenService:
    """`onion.add_service` at run time: `params` is {name, port, target} (ServiceConfigError
    naming `params.<field>`); the service's key is loaded or made as at start-up. ServiceError
    if the port is already mapped. The change lasts until restart unless node.toml says so too."""
    return _add(datadir, table, parse_service_port(params, "params"))
