"""Finding roles and keeping them running.

Built-in roles are an explicit ordered list (start order; stop order is the reverse).
Third-party roles load from the entry-point group `fognode.protocols` and start after them.
Names, RPC methods, stream ids and topics are checked unique before anything starts.

The supervisor runs each enabled role in its own task and cancel scope: a role that raises is
logged with its traceback, shown unhealthy, and restarted (a fresh instance) with exponential
backoff; it never takes the daemon down.

One exception: a role that raises `FatalStorageError` (it could not write its data dir: disk
full, I/O error) is not restarted. A fresh instance would reload from the same failing disk,
and a role whose memory may differ from its disk must not serve: the role is shown unhealthy
("storage failed: ..."), the reason is logged at CRITICAL, and `on_fatal` asks the daemon to
shut down cleanly and exit non-zero (node/daemon.py), as Bitcoin Core's AbortNode does.

A role that raises `PermanentRoleError` (or `ConfigError`: a setting it cannot honour) is not
restarted either, since a fresh instance would fail the same way (a port another program holds):
the reason is logged as one ERROR line without a traceback, the role is shown unhealthy
("failed, not restarted: ..."), and the daemon and the other roles keep running.

While a role is down (restarting or failed), its RPC methods are withdrawn with the reason and
the time it went down, so calls to them say so (node/rpc/methods.py MethodTable.remove_owner).
"""
from __future__ import annotations

import importlib
import logging
import math
import re
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

import trio
from prometheus_client import Counter, Gauge

from fognode.node.errors import ConfigError, FatalStorageError, PermanentRoleError
from fognode.node.events import RoleHealthChanged
from fognode.node.health import HealthReport, Status
from fognode.node.role import Health, NodeContext, Role
from fognode.node.rpc.jsonrpc import EncodedJSON, encode_json
from fognode.node.rpc.methods import MethodTable

log = logging.getLogger("fognode.roles")

# Start order (stop order is the reverse). Each entry is "module:Class". The ledger comes before
# the roles that pay or get paid; the registry before the roles that select devices; harvest
# (it announces this device's availability in its registry record and gates the work it runs)
# before the roles whose work it gates.
BUILTIN_ROLES: tuple[str, ...] = (
    "fognode.protocols.monitor.protocol:MonitorRole",
    "fognode.ledger.protocol:LedgerRole",
    "fognode.protocols.registry.protocol:RegistryRole",
    "fognode.protocols.harvest.protocol:HarvestRole",
    "fognode.protocols.fl.protocol:FlRole",
    "fognode.protocols.market.protocol:MarketRole",
    "fognode.protocols.onion.protocol:OnionRole",
)

_STREAM_ID = re.compile(r"^/fognode/[a-z][a-z0-9_-]*(/[a-z0-9_-]+)*/\d+\.\d+\.\d+$")
_TOPIC = re.compile(r"^fognode/[a-z][a-z0-9_-]*(/[a-z0-9_-]+)*/\d+$")


def _load(ref: str) -> type[Role]:
    mod, _, attr = ref.partition(":")
    cls = getattr(importlib.import_module(mod), attr)
    if not (isinstance(cls, type) and issubclass(cls, Role)):
        raise ConfigError(f"{ref} is not a fognode Role subclass")
    return cls


def discover_roles(extra: dict[str, str] | None = None) -> list[type[Role]]:
    """Built-in roles in order, then `fognode.protocols` entry points (sorted by name)."""
    classes = [_load(ref) for ref in BUILTIN_ROLES]
    for ep in sorted(entry_points(group="fognode.protocols"), key=lambda e: e.name):
        try:
            cls = ep.load()
        except Exception as e:
            raise ConfigError(f"third-party role {ep.name!r} ({ep.value}) failed to load: {e}") from e
        if not (isinstance(cls, type) and issubclass(cls, Role)):
            raise ConfigError(f"entry point {ep.name!r} ({ep.value}) is not a fognode Role subclass")
        classes.append(cls)
    for ref in (extra or {}).values():
        classes.append(_load(ref))
    check_unique(classes)
    return classes


def check_unique(classes: list[type[Role]]) -> None:
    """Role names, stream ids and topics must be unique and well formed (ConfigError)."""
    seen: dict[str, str] = {}
    for cls in classes:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", cls.name or ""):
            raise ConfigError(f"role class {cls.__qualname__} has a bad name {cls.name!r}")
        for kind, ids, rx in (("role", (cls.name,), None), ("stream id", cls.stream_ids, _STREAM_ID),
                              ("topic", cls.topics, _TOPIC)):
            for i in ids:
                if rx is not None and not rx.match(i):
                    raise ConfigError(f"role {cls.name}: {kind} {i!r} does not follow the naming rule "
                                      f"({'/fognode/<role>/<semver>' if kind == 'stream id' else 'fognode/<role>/<topic>/<v>'})")
                k = f"{kind}:{i}"
                if k in seen:
                    raise ConfigError(f"{kind} {i!r} is claimed by both role {seen[k]} and role {cls.name}")
                seen[k] = cls.name


def describe(e: BaseException) -> str:
    """`Type: message` of the innermost errors (trio wraps a task's error in ExceptionGroups)."""
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}"


def fatal_storage_error(e: BaseException) -> FatalStorageError | None:
    """The FatalStorageError inside `e` (trio wraps a task's error in ExceptionGroups), or None."""
    if isinstance(e, FatalStorageError):
        return e
    if isinstance(e, BaseExceptionGroup):
        for x in e.exceptions:
            found = fatal_storage_error(x)
            if found is not None:
                return found
    return None


def permanent_error(e: BaseException) -> PermanentRoleError | ConfigError | None:
    """The PermanentRoleError or ConfigError inside `e` (through ExceptionGroups), or None."""
    if isinstance(e, (PermanentRoleError, ConfigError)):
        return e
    if isinstance(e, BaseExceptionGroup):
        for x in e.exceptions:
            found = permanent_error(x)
            if found is not None:
                return found
    return None


@dataclass
class RoleState:
    cls: type[Role]
    config: Any
    health: Health = Health.STARTING
    detail: str = ""
    restarts: int = 0
    down_since: float | None = None   # wall-clock time the role went down (None while it is up)
    instance: Role | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


# what a role's health row is made of, read now (Supervisor._read): its health, the
# supervisor's detail sentence, its restarts, and its own report (None when it is not running)
_RowInputs = tuple[Health, str, int, "HealthReport | None"]
# the member itself, for node.info's path (Supervisor._read: twice per role and call): on
# Python 3.11 `Health.HEALTHY` is a lookup through the enum's metaclass, 0.1-0.4 us each
_HEALTHY = Health.HEALTHY


def _row(inputs: _RowInputs, detail: dict[str, Any]) -> dict[str, Any]:
    """One role's health row from `Supervisor._read`: health, detail, restarts, status, reason
    and the role's `health_detail` facts."""
    health, text, restarts, report = inputs
    if report is not None:
        row = {"health": "healthy", "detail": text, "restarts": restarts, "status": report.status._value_,
               "reason": report.reason}
    elif health is Health.UNHEALTHY:
        row = {"health": "unhealthy", "detail": text, "restarts": restarts, "status": "unhealthy",
               "reason": text or "unhealthy"}
    else:
        row = {"health": health.value, "detail": text, "restarts": restarts, "status": "healthy", "reason": ""}
    if detail:
        row.update(detail)
    return row


class Supervisor:
    """Starts roles in order, restarts crashed ones with backoff, stops them in reverse order."""

    def __init__(self, ctx: NodeContext, table: MethodTable, *, backoff_initial: float = 1.0,
                 backoff_max: float = 60.0,
                 on_fatal: Callable[[str, FatalStorageError], None] | None = None) -> None:
        self.ctx = ctx
        self.on_fatal = on_fatal
        self.table = table
        self.roles: dict[str, RoleState] = {}
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._health = Gauge("fognode_node_role_healthy", "1 when the role is running, 0 otherwise",
                             ["role"], registry=ctx.metrics)
        self._restarts = Counter("fognode_node_role_restarts_total", "Role restarts after a crash",
                                 ["role"], registry=ctx.metrics)
        # health_encoded: per role (inputs, facts, row, row JSON) of the last call, and the answer
        self._rows: dict[str, tuple[_RowInputs, dict[str, Any], dict[str, Any], bytes]] = {}
        self._encoded: EncodedJSON | None = None

    def health(self) -> dict[str, dict[str, Any]]:
        """Every role's health row, read now: health, detail, restarts, status, reason and the
        role's own `health_detail` facts."""
        return {name: _row(*self._read(st)) for name, st in self.roles.items()}

    def health_encoded(self) -> EncodedJSON:
        """`health()` with its JSON text (node.info asks for it on every call). Every role's
        facts and report are read now, as for `health()`; a role's row is built and encoded
        again only when they differ from the last call's (`==`: roles return a new
        `health_detail` dict each time), and the whole answer only when a row did. The object
        returned may be the last call's: never mutate it."""
        rows = self._rows
        changed = len(rows) != len(self.roles)
        read = self._read
        for name, st in self.roles.items():
            inputs, detail = read(st)
            last = rows.get(name)
            # a tuple compares its items by identity first: the usual row (same health, same
            # detail text, the shared healthy report) costs a few pointer checks
            if last is None or last[0] != inputs or last[1] != detail:
                row = _row(inputs, detail)
                rows[name] = (inputs, detail, row, encode_json(row).encode())
                changed = True
        if changed or self._encoded is None:
            for gone in set(rows) - set(self.roles):
                del rows[gone]
            text = b",".join(b"%s:%s" % (encode_json(name).encode(), rows[name][3]) for name in self.roles)
            self._encoded = EncodedJSON({name: rows[name][2] for name in self.roles}, b"{" + text + b"}")
        return self._encoded

    @staticmethod
    def _read(st: RoleState) -> tuple[_RowInputs, dict[str, Any]]:
        """What a role's health row is made of, read now (`_row` builds it): its inputs, and its
        `health_detail` facts. A running role's `health_detail` and `health_report` are called;
        a check that raises shows as degraded."""
        inst = st.instance
        if st.health is _HEALTHY and inst is not None:
            try:
                detail = inst.health_detail()
                report = inst.health_report()
            except Exception as e:  # a role's status must never break node.info
                detail = {"error": f"{type(e).__name__}: {e}"}
                report = HealthReport(Status.DEGRADED, f"its health check failed: {type(e).__name__}: {e}")
            return (_HEALTHY, st.detail, st.restarts, report), detail
        return (st.health, st.detail, st.restarts, None), {}

    def _set(self, st: RoleState, health: Health, detail: str = "") -> None:
        changed = st.health is not health
        st.health, st.detail = health, detail
        self._health.labels(st.cls.name).set(1 if health is Health.HEALTHY else 0)
        if changed:
            self.ctx.events.publish(RoleHealthChanged(st.cls.name, health is Health.HEALTHY, detail))

    async def start(self, nursery: trio.Nursery, cls: type[Role], config: Any) -> None:
        """Start one role and wait until it is serving (or has failed its first start)."""
        st = RoleState(cls, config)
        self.roles[cls.name] = st
        await nursery.start(self._supervise, st)

    async def _supervise(self, st: RoleState, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        name = st.cls.name
        started = False
        attempt = 0
        with st.scope:
            try:
                while True:
                    try:
                        inst = st.cls(self.ctx, st.config)
                        st.instance = inst
                        self.table.remove_owner(name)
                        self.table.add_object(inst, name)
                        async with trio.open_nursery() as n:
                            await n.start(inst.run)
                            self._set(st, Health.HEALTHY)
                            st.down_since = None
                            attempt = 0
                            if not started:
                                started = True
                                task_status.started()
                        log.warning("role %s returned from run(); restarting it", name)
                        why = "run() returned"
                    except Exception as e:
                        fatal = fatal_storage_error(e)
                        if fatal is not None:
                            self._stop_fatal(st, fatal)
                            if not started:
                                started = True
                                task_status.started()
                            await trio.sleep_forever()    # until the daemon stops the roles
                        permanent = permanent_error(e)
                        if permanent is not None:
                            self._stop_permanent(st, permanent)
                            if not started:
                                started = True
                                task_status.started()
                            await trio.sleep_forever()    # until the daemon stops the roles
                        why = describe(e)
                        log.error("role %s crashed: %s", name, why, exc_info=True)
                    if st.down_since is None:
                        st.down_since = time.time()
                    st.instance = None
                    st.restarts += 1
                    self._restarts.labels(name).inc()
                    delay = min(self.backoff_max, self.backoff_initial * math.pow(2, attempt))
                    attempt += 1
                    detail = f"{why}; restarting in {delay:.0f} s"
                    self.table.remove_owner(name, reason=f"crashed ({detail})", since=st.down_since)
                    self._set(st, Health.UNHEALTHY, detail)
                    if not started:
                        started = True
                        task_status.started()
                    await trio.sleep(delay)
            finally:
                self.table.remove_owner(name, reason="stopped (the daemon is shutting down)")
                st.instance = None
                st.health = Health.STOPPED
                self._health.labels(name).set(0)
                st.done.set()

    def _stop_fatal(self, st: RoleState, err: FatalStorageError) -> None:
        """Keep the role stopped (no restart), say why, ask the daemon to exit. Its RPC methods
        stay registered until the daemon stops, so they can answer with the reason."""
        name = st.cls.name
        log.critical("role %s stopped for good: %s", name, err)
        self._set(st, Health.UNHEALTHY, f"storage failed, not restarted: {err}")
        if self.on_fatal is not None:
            self.on_fatal(name, err)

    def _stop_permanent(self, st: RoleState, err: PermanentRoleError | ConfigError) -> None:
        """Keep the role stopped (no restart) and say why in one line; the daemon carries on.
        Its RPC methods are withdrawn with the reason, so calls to them say it."""
        name = st.cls.name
        log.error("role %s failed and will not be restarted: %s", name, err)
        st.instance = None
        if st.down_since is None:
            st.down_since = time.time()
        detail = f"failed, not restarted: {err}"
        self.table.remove_owner(name, reason=detail, since=st.down_since)
        self._set(st, Health.UNHEALTHY, detail)

    async def stop_all(self, grace: float) -> None:
        """Cancel roles in reverse start order, each given up to `grace` seconds in total."""
        deadline = trio.current_time() + grace
        for name in reversed(list(self.roles)):
            st = self.roles[name]
            st.scope.cancel()
            with trio.move_on_at(deadline):
                await st.done.wait()
            if not st.done.is_set():
                log.warning("role %s did not stop within the grace period", name)
