"""The role interface (DESIGN.md "One interface for every role").

A role is a subclass of `Role` with:
- `name` (also its `[protocols.<name>]` section in node.toml),
- `Config`, a frozen dataclass with defaults for every field (read from that section),
- `stream_ids` / `topics` it owns (checked unique across roles at start-up),
- `async def run(self, *, task_status)`: register handlers and subscriptions, call
  `task_status.started()`, then serve until cancelled,
- RPC methods declared with `@rpc_method("<name>.<verb>")` on the class.

A role gets everything through its `NodeContext`: no globals. Roles that offer an interface to
other roles (the ledger's `verify_payment_capability`, reputation's `report_outcome`) put it in
`ctx.services` under a documented name during `run` before `task_status.started()`.
"""
from __future__ import annotations

import abc
import dataclasses
import enum
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.errors import LocalProtocolError
from fognode.node.events import EventBus
from fognode.node.health import HealthReport
from fognode.node.overlay import Overlay

Clock = Callable[[], float]


class Health(enum.Enum):
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"   # crashed, waiting for a restart with backoff
    STOPPED = "stopped"


class Services:
    """Interfaces roles offer each other, by name (e.g. "ledger", "reputation")."""

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}

    def provide(self, name: str, obj: Any) -> None:
        self._items[name] = obj

    def withdraw(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> Any | None:
        return self._items.get(name)

    def require(self, name: str) -> Any:
        obj = self._items.get(name)
        if obj is None:
            raise LocalProtocolError(f"service {name!r} is not running on this node")
        return obj


@dataclass
class NodeContext:
    """What a role may touch. Built by the daemon; shared by all roles of one node."""

    peer_id: str
    identity: SigningKey            # the node's Ed25519 key (also its libp2p identity)
    overlay: Overlay
    events: EventBus
    metrics: CollectorRegistry
    datadir: Path
    genesis: dict[str, Any]
    services: Services = field(default_factory=Services)
    clock: Clock = time.time        # wall clock, seconds; tests may pass their own
    region: str = ""
    roles: tuple[str, ...] = ()     # names of the roles this node runs (enabled in its config)

    def role_dir(self, role: str) -> Path:
        """`<datadir>/<role>/`, created on first use (mode 0700)."""
        p = self.datadir / role
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
        return p


@dataclass(frozen=True)
class EmptyConfig:
    """For roles without settings."""


class Role(abc.ABC):
    """Base class of every role. Subclasses set the class attributes and implement run()."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = EmptyConfig
    stream_ids: ClassVar[tuple[str, ...]] = ()
    topics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: NodeContext, config: Any) -> None:
        self.ctx = ctx
        self.config = config

    @abc.abstractmethod
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register handlers, call task_status.started(), serve until cancelled."""

    def health_detail(self) -> dict[str, Any]:
        """Role-specific facts shown by node.info / monitor (cheap, synchronous)."""
        return {}

    def health_report(self) -> HealthReport:
        """Healthy / degraded / unhealthy with a reason (node/health.py), as the role sees
        itself while it runs (cheap, synchronous; the supervisor covers crashes)."""
        return HealthReport.healthy()


def config_fields(cfg_type: type) -> list[dataclasses.Field[Any]]:
    if not dataclasses.is_dataclass(cfg_type):
        raise TypeError(f"{cfg_type!r} is not a dataclass")
    return list(dataclasses.fields(cfg_type))
