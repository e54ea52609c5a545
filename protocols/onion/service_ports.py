"""The `[[protocols.onion.services]]` entries of node.toml, checked: which `.fog` port of which
service maps to which local `host:port` (the format is in services.py's docstring). Light
(no crypto, no key files), so the role's config is checked at start while the rest of the
role loads after the node is ready (protocol.py); services.py builds the run-time table
from what this returns. Every refusal is a `ServiceConfigError` naming
`protocols.onion.services[i].<field>` (or the RPC parameter).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Sequence

from fognode.protocols.onion.hs_errors import ServiceConfigError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")   # a service's name (its key's directory)
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
