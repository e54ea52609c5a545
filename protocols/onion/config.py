"""The onion role's settings (`[protocols.onion]` in node.toml).

Relaying and circuits (issue 14 items 1, 2 and 6), then the SOCKS5 port and hidden services
(items 3 and 4): `services` holds the `[[protocols.onion.services]]` tables (services.py
checks them). `period_length` and `period_offset` are network-wide: every node must use the
same values, or clients look for descriptors under keys the services never published.

Checked when the daemon starts, before the rest of the role loads (protocol.py), so this module
imports only what `validate` needs (periods.py, service_ports.py); the methods that build the
cores' parameters (`flow`, `relay_params`, `cbt_params`, `socks_settings`) import their
modules when called, once the role's working parts load.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fognode.node.errors import ConfigError
from fognode.protocols.onion.periods import TimePeriods
from fognode.protocols.onion.service_ports import ServicePort, parse_services

if TYPE_CHECKING:   # the parameter types of the cores: imported by the methods that build them
    from fognode.protocols.onion.cbt import CbtParams
    from fognode.protocols.onion.flow import FlowParams
    from fognode.protocols.onion.relay import RelayParams
    from fognode.protocols.onion.socks_server import SocksSettings


@dataclass(frozen=True)
class OnionConfig:
    relay: bool = True                      # relay other nodes' cells (the default on servers)
    hops: int = 3                           # hops of a circuit built by this node
    num_guards: int = 3                     # guards kept for the first hop (in order of use)
    guard_lifetime_days: float = 60.0       # a guard is replaced after 45-60 days (randomised)
    guard_retry: float = 60.0               # seconds before retrying a failed guard (doubles each time)
    onion_key_rotation_days: float = 7.0    # days between onion key rotations; the previous key stays valid one period
    circuit_window: int = 1024              # DATA cells (4 KiB) in flight per circuit (the same on every node)
    circuit_sendme_increment: int = 256     # cells acknowledged per circuit SENDME
    stream_window: int = 512                # DATA cells in flight per stream
    stream_sendme_increment: int = 128      # cells acknowledged per stream SENDME
    build_timeout_initial: float = 10.0     # seconds to wait for a circuit until 100 builds were measured
    build_timeout_quantile: float = 0.8     # the adaptive timeout is this quantile of the Pareto fit
    padding_rate: float = 0.0               # constant-rate padding on our circuits, cells/s (0: off)
    max_padding_rate: float = 20.0          # the highest padding rate this relay grants a client
    max_relay_circuits: int = 4096          # circuits this relay carries at once
    extend_timeout: float = 30.0            # seconds a relay waits for the next hop's CREATED
    link_queue_bytes: int = 33554432        # bytes of cells queued for one neighbour; over it the link is dropped
    onion_key_overlap: float = 86400.0      # seconds a rotated-out onion key still answers (> registry record_ttl)
    socks_port: int = 9060                  # SOCKS5 port for .fog addresses (0: no SOCKS port)
    socks_host: str = "127.0.0.1"           # address the SOCKS port listens on (must be loopback)
    socks_extended_errors: bool = False     # answer onion failures with Tor's extended SOCKS codes 0xF0-0xF7
    socks_handshake_timeout: float = 10.0   # seconds a SOCKS client has for its greeting and request
    socks_connect_timeout: float = 120.0    # seconds to reach a .fog service before the client gets a failure
    socks_idle_timeout: float = 300.0       # seconds of silence both ways before a SOCKS connection is closed
    socks_max_clients: int = 256            # SOCKS connections at once
    intro_points: int = 3                   # introduction points per hidden service (1-10)
    period_length: int = 86400              # seconds per descriptor time period (network-wide)
    period_offset: int = 43200              # seconds after the epoch period 0 starts (network-wide)
    descriptor_window: float = 3600.0       # near a period boundary, also publish/fetch the neighbouring period
    descriptor_lifetime: int = 10800        # seconds a published descriptor stays valid
    descriptor_republish_interval: float = 3600.0   # seconds between republishing descriptors
    max_clock_skew: float = 300.0           # seconds a descriptor may be issued ahead of our clock
    hosting_quota_mib: int = 0              # MiB of other owners' shards this node keeps and offers as fog.hosting (0: none)
    hosting_price: int = 1000000            # micro-units per GB-hour this node asks for hosting
    hosting_interval: float = 600.0         # seconds of hosting each debit note of an owner pays ahead
    hosting_grace: float = 3600.0           # seconds an unpaid shard is kept (not served) before it is deleted
    services: list[dict[str, Any]] = field(default_factory=list)   # [[protocols.onion.services]] tables: name, port, target

    def validate(self, source: str) -> None:
        """Raise ConfigError naming the first bad key."""
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(msg, source=source, key=f"protocols.onion.{key}")

        if not 1 <= self.hops <= 8:
            raise bad("hops", "must be between 1 and 8")
        if not 1 <= self.num_guards <= 16:
            raise bad("num_guards", "must be between 1 and 16")
        if not 1 <= self.guard_lifetime_days <= 365:
            raise bad("guard_lifetime_days", "must be between 1 and 365")
        if not 1 <= self.guard_retry <= 86400:
            raise bad("guard_retry", "must be between 1 s and 1 day")
        if not 0.01 <= self.onion_key_rotation_days <= 365:
            raise bad("onion_key_rotation_days", "must be between 0.01 and 365")
        for win, inc in (("circuit_window", "circuit_sendme_increment"), ("stream_window", "stream_sendme_increment")):
            w, i = getattr(self, win), getattr(self, inc)
            if not 1 <= w <= 65536:
                raise bad(win, "must be between 1 and 65536 cells")
            if not 1 <= i <= w:
                raise bad(inc, f"must be between 1 and {win} ({w})")
        if not 0.1 <= self.build_timeout_initial <= 120:
            raise bad("build_timeout_initial", "must be between 0.1 and 120 s")
        if not 0.5 <= self.build_timeout_quantile < 1:
            raise bad("build_timeout_quantile", "must be in [0.5, 1)")
        if not 0 <= self.padding_rate <= 1000:
            raise bad("padding_rate", "must be between 0 and 1000 cells/s")
        if not 0 <= self.max_padding_rate <= 1000:
            raise bad("max_padding_rate", "must be between 0 and 1000 cells/s")
        if not 1 <= self.max_relay_circuits <= 1_000_000:
            raise bad("max_relay_circuits", "must be between 1 and 1000000")
        if not 1 <= self.extend_timeout <= 600:
            raise bad("extend_timeout", "must be between 1 and 600 s")
        if not 65536 <= self.link_queue_bytes <= 1 << 30:
            raise bad("link_queue_bytes", "must be between 64 KiB and 1 GiB")
        if not 0 <= self.onion_key_overlap <= 30 * 86400:
            raise bad("onion_key_overlap", "must be between 0 and 30 days")
        if not 0 <= self.socks_port <= 65535:
            raise bad("socks_port", "must be a port number (0: no SOCKS port)")
        try:
            loopback = ipaddress.ip_address(self.socks_host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise bad("socks_host", f"{self.socks_host!r} is not a loopback address (the port has no authentication)")
        for key, hi in (("socks_handshake_timeout", 600), ("socks_connect_timeout", 3600), ("socks_idle_timeout", 86400)):
            if not 0.1 <= getattr(self, key) <= hi:
                raise bad(key, f"must be between 0.1 and {hi} s")
        if not 1 <= self.socks_max_clients <= 65536:
            raise bad("socks_max_clients", "must be between 1 and 65536")
        if not 1 <= self.intro_points <= 10:
            raise bad("intro_points", "must be between 1 and 10")
        self.periods().validate("protocols.onion.period_length")
        if not 0 <= self.descriptor_window <= self.period_length / 2:
            raise bad("descriptor_window", "must be between 0 and half the period length")
        if not 60 <= self.descriptor_lifetime <= 12 * 3600:
            raise bad("descriptor_lifetime", "must be between 60 s and 12 h")
        if not 10 <= self.descriptor_republish_interval < self.descriptor_lifetime:
            raise bad("descriptor_republish_interval", "must be at least 10 s and below descriptor_lifetime")
        if not 0 <= self.max_clock_skew <= 3600:
            raise bad("max_clock_skew", "must be between 0 and 3600 s")
        if not 0 <= self.hosting_quota_mib <= 1 << 30:
            raise bad("hosting_quota_mib", "must be between 0 and 2^30 MiB")
        if not 0 <= self.hosting_price <= 10**15:
            raise bad("hosting_price", "must be between 0 and 10^15 micro-units per GB-hour")
        if not 10 <= self.hosting_interval <= 86400:
            raise bad("hosting_interval", "must be between 10 s and 1 day")
        if not 0 <= self.hosting_grace <= 30 * 86400:
            raise bad("hosting_grace", "must be between 0 and 30 days")
        self.service_ports()

    def flow(self) -> FlowParams:
        from fognode.protocols.onion.flow import FlowParams

        return FlowParams(self.circuit_window, self.circuit_sendme_increment,
                          self.stream_window, self.stream_sendme_increment)

    def relay_params(self) -> RelayParams:
        from fognode.protocols.onion.relay import RelayParams

        return RelayParams(flow=self.flow(), max_circuits=self.max_relay_circuits,
                           extend_timeout=self.extend_timeout, max_padding_rate=self.max_padding_rate)

    def cbt_params(self) -> CbtParams:
        from fognode.protocols.onion.cbt import CbtParams

        return CbtParams(initial_timeout=self.build_timeout_initial, quantile=self.build_timeout_quantile)

    @property
    def guard_lifetime(self) -> float:
        return self.guard_lifetime_days * 86400.0

    def periods(self) -> TimePeriods:
        return TimePeriods(self.period_length, self.period_offset)

    def service_ports(self) -> tuple[ServicePort, ...]:
        """The `[[protocols.onion.services]]` entries, checked (ServiceConfigError naming one;
        service_ports.py)."""
        return parse_services(self.services)

    def socks_settings(self) -> SocksSettings:
        from fognode.protocols.onion.socks_server import SocksSettings

        return SocksSettings(host=self.socks_host, port=self.socks_port,
                             handshake_timeout=self.socks_handshake_timeout,
                             connect_timeout=self.socks_connect_timeout, idle_timeout=self.socks_idle_timeout,
                             max_clients=self.socks_max_clients, extended_errors=self.socks_extended_errors)
