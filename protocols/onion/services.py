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
a LAN address is allowed, as in Tor, since the operator chose it. Every refusal is a
`ServiceConfigError` naming `protocols.onion.services[i].<field>` (or the RPC parameter).

`ServiceTable` is the run-time view (`onion.add_service` / `onion.remove_service` change it;
the connector asks `target(address, port)` when a rendezvous stream arrives).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from nacl.signing import SigningKey

from fognode.protocols.onion.address import FogAddress, address_from_pubkey
from fognode.protocols.onion.hs_errors import HsConnectError, ServiceConfigError, ServiceError, SocksReply
from fognode.protocols.onion.keyfiles import NAME_RE, load_or_create_service_key

PREFIX = "protocols.onion.services"
MAX_SERVICES = 64
MAX_PORTS = 256


@dataclass(frozen=True)
class Target:
    host: str          # an IP address literal ("localhost" is kept as written)
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ServicePort:
    """One `[[protocols.onion.services]]` entry."""

    name: str
    port: int
    target: Target


def parse_target(text: Any, key: str) -> Target:
    """`host:port` with an IP literal or localhost; ServiceConfigError naming `key`."""
    if not isinstance(text, str):
        raise ServiceConfigError(f"must be a string \"host:port\", got {type(text).__name__}", key=key)
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ServiceConfigError(f"{text!r}: an IPv6 target is written [address]:port", key=key)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ServiceConfigError(f"{text!r} is not host:port (e.g. \"127.0.0.1:8080\")", key=key)
    if host != "localhost":
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ServiceConfigError(f"{host!r} is not an IP address or localhost (host names are not "
                                     "resolved)", key=key) from None
        if ip.is_unspecified or ip.is_multicast:
            raise ServiceConfigError(f"{host} cannot be connected to", key=key)
        if text.startswith("[") != (ip.version == 6):
            raise ServiceConfigError(f"{text!r}: write IPv6 addresses as [address]:port", key=key)
        host = str(ip)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ServiceConfigError(f"port {port_text!r} is not in 1-65535", key=key)
    return Target(host, int(port_text))


def parse_service_port(raw: Any, key: str) -> ServicePort:
    """One entry (a TOML table or RPC params); ServiceConfigError naming `key.<field>`."""
    if not isinstance(raw, dict):
        raise ServiceConfigError(f"must be a table with name, port and target, got {type(raw).__name__}", key=key)
    unknown = sorted(set(raw) - {"name", "port", "target"})
    if unknown:
        raise ServiceConfigError(f"unknown field(s) {', '.join(map(str, unknown))}; known: name, port, target",
                                 key=key)
    for f in ("name", "port", "target"):
        if f not in raw:
            raise ServiceConfigError("is missing", key=f"{key}.{f}")
    name, port = raw["name"], raw["port"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ServiceConfigError("must be 1-64 of a-z, 0-9, '_', '-' (starting with a letter or digit)",
                                 key=f"{key}.name")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ServiceConfigError(f"must be a port number in 1-65535, got {port!r}", key=f"{key}.port")
    return ServicePort(name, port, parse_target(raw["target"], f"{key}.target"))


def parse_services(raw: Sequence[Any], *, prefix: str = PREFIX) -> tuple[ServicePort, ...]:
    """Every entry of `[[protocols.onion.services]]`, checked one by one and together
    (a port mapped twice in one service, too many services or ports)."""
    if not isinstance(raw, (list, tuple)):
        raise ServiceConfigError("must be a list of tables ([[protocols.onion.services]])", key=prefix)
    if len(raw) > MAX_PORTS:
        raise ServiceConfigError(f"at most {MAX_PORTS} entries", key=prefix)
    out: list[ServicePort] = []
    seen: dict[tuple[str, int], int] = {}
    for i, item in enumerate(raw):
        sp = parse_service_port(item, f"{prefix}[{i}]")
        if (sp.name, sp.port) in seen:
            raise ServiceConfigError(f"port {sp.port} of service {sp.name!r} is already mapped by "
                                     f"{prefix}[{seen[sp.name, sp.port]}]", key=f"{prefix}[{i}].port")
        seen[sp.name, sp.port] = i
        out.append(sp)
    if len({sp.name for sp in out}) > MAX_SERVICES:
        raise ServiceConfigError(f"at most {MAX_SERVICES} services", key=prefix)
    return tuple(out)


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
