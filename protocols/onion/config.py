"""The onion role's circuit settings (`[protocols.onion]` in node.toml, once the role is wired).

These keys cover relaying and circuits (issue 14 items 1, 2 and 6). The hidden-service and
SOCKS keys (`socks_port`, `services`, ...) join this dataclass when the role's protocol.py
lands; until then the role is not registered, so node.toml does not list these keys yet.
"""
from __future__ import annotations

from dataclasses import dataclass

from fognode.node.errors import ConfigError
from fognode.protocols.onion.cbt import CbtParams
from fognode.protocols.onion.flow import FlowParams
from fognode.protocols.onion.relay import RelayParams


@dataclass(frozen=True)
class OnionConfig:
    relay: bool = True                      # relay other nodes' cells (the default on servers)
    hops: int = 3                           # hops of a circuit built by this node
    num_guards: int = 3                     # guards kept for the first hop (in order of use)
    guard_lifetime_days: float = 60.0       # a guard is replaced after 45-60 days (randomised)
    guard_retry: float = 60.0               # seconds before retrying a failed guard (doubles each time)
    onion_key_rotation_days: float = 7.0    # days between onion key rotations; the previous key stays valid one period
    circuit_window: int = 256               # DATA cells (4 KiB) in flight per circuit
    circuit_sendme_increment: int = 32      # cells acknowledged per circuit SENDME
    stream_window: int = 128                # DATA cells in flight per stream
    stream_sendme_increment: int = 16       # cells acknowledged per stream SENDME
    build_timeout_initial: float = 10.0     # seconds to wait for a circuit until 100 builds were measured
    build_timeout_quantile: float = 0.8     # the adaptive timeout is this quantile of the Pareto fit
    padding_rate: float = 0.0               # constant-rate padding on our circuits, cells/s (0: off)
    max_padding_rate: float = 20.0          # the highest padding rate this relay grants a client
    max_relay_circuits: int = 4096          # circuits this relay carries at once
    extend_timeout: float = 30.0            # seconds a relay waits for the next hop's CREATED

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

    def flow(self) -> FlowParams:
        return FlowParams(self.circuit_window, self.circuit_sendme_increment,
                          self.stream_window, self.stream_sendme_increment)

    def relay_params(self) -> RelayParams:
        return RelayParams(flow=self.flow(), max_circuits=self.max_relay_circuits,
                           extend_timeout=self.extend_timeout, max_padding_rate=self.max_padding_rate)

    def cbt_params(self) -> CbtParams:
        return CbtParams(initial_timeout=self.build_timeout_initial, quantile=self.build_timeout_quantile)

    @property
    def guard_lifetime(self) -> float:
        return self.guard_lifetime_days * 86400.0
