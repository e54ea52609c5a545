"""The daemon: one node's lifetime, from the data-dir lock to a clean exit.

Start-up, in stages so an operator gets an answer at once: lock the data dir, open the control
socket (the [rpc] settings were read on their own, node/daemon_start.py), then warm up: import
the roles and libp2p and load the whole config in a worker thread, load identity and genesis,
open the overlay (libp2p host, pubsub, DHT), start roles in order under the supervisor. While
warming up, every RPC method but `node.stop` answers NODE_NOT_READY (code 100) naming the
stage (node/rpc/server.py); the node is "ready" when `node.info` answers. Shutdown on
SIGINT/SIGTERM or `node.stop`: stop accepting RPC, stop roles in reverse order within the grace
period, close the host, release the lock, exit 0. A stop while warming up cancels the warm-up
(what was opened is closed) and exits 0 the same way.

A role that cannot write its data dir (FatalStorageError: disk full, I/O error) stops the
daemon the same clean way, after which `run()` raises that error: `fognode run` prints it on
stderr and exits with status 2. The operator frees space and starts the node again; it never
keeps serving with a role whose memory may differ from its disk.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable

import trio
from prometheus_client import CollectorRegistry

from fognode.node import __version__
from fognode.node.config import Config
from fognode.node.daemon_start import EarlySettings
from fognode.node.datadir import DataDirLock, load_identity, read_genesis, socket_path
from fognode.node.errors import FatalStorageError, FognodeError, RpcError
from fognode.node.events import EventBus
from fognode.node.looplag import watch_loop_lag
from fognode.node.role import NodeContext, Role
from fognode.node.roles import Supervisor
from fognode.node.rpc.methods import (NODE_BAD_MULTIADDR, NODE_DIAL_FAILED, NODE_UNKNOWN_PEER, MethodTable,
                                      rpc_method)
from fognode.node.rpc.server import RpcServer

log = logging.getLogger("fognode.daemon")


def only_error(eg: BaseExceptionGroup) -> BaseException:
    """The one error inside `eg` (trio wraps a task's error in ExceptionGroups), so `fognode
    run` can report a start-up error (ConfigError, a port in use) as such; `eg` itself when it
    holds more than one."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [eg]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        else:
            leaves.append(e)
    return leaves[0] if len(leaves) == 1 else eg


class NodeService:
    """The node's own RPC methods (`node.*`) and the "node" service roles may read."""

    def __init__(self, daemon: "Daemon") -> None:
        self._d = daemon
        self.ready = trio.Event()  # set once every role has started and the socket answers
        # roles' deferred imports, once ready: one at a time (node/deferredload.py)
        self.deferred_imports = trio.CapacityLimiter(1)

    def uptime(self) -> float:
        return time.monotonic() - self._d.started_at

    def role_health(self) -> dict[str, dict[str, Any]]:
        return self._d.supervisor.health() if self._d.supervisor else {}

    def rpc_methods(self) -> MethodTable:
        """The daemon's RPC method table (the monitor's dashboard calls read methods in-process)."""
        return self._d.table

    @rpc_method("node.info")
    async def info(self) -> dict[str, Any]:
        """This node: peer id, listen addresses, version, roles and their health, uptime."""
        d = self._d
        ov = d.ctx.overlay
        return {
            "peer_id": d.ctx.peer_id,
            "addresses": ov.listen_addrs(),
            "version": __version__,
            "uptime_s": round(self.uptime(), 3),
            "peers": ov.peer_count(),
            "region": d.config.node.region,
            "chain_id": d.ctx.genesis.get("chain_id", ""),
            "datadir": str(d.datadir),
            "socket": str(d.socket),
            "config": d.config.source,
            "roles": self._d.supervisor.health_encoded() if self._d.supervisor else {},
        }

    @rpc_method("node.peers")
    async def peers(self) -> list[dict[str, Any]]:
        """Connected peers: peer id, addresses, direction, latency."""
        return [
            {"peer_id": p.peer_id, "addrs": list(p.addrs), "direction": p.direction,
             "latency_ms": p.latency_ms}
            for p in self._d.ctx.overlay.peers() if p.connected
        ]

    @rpc_method("node.connect")
    async def connect(self, multiaddr: str) -> dict[str, Any]:
        """Dial MULTIADDR (with /p2p/<peer-id>) and return the connected peer id."""
        from multiaddr import Multiaddr

        try:
            ma = Multiaddr(multiaddr)
        except Exception as e:
            raise RpcError(NODE_BAD_MULTIADDR, f"bad multiaddr {multiaddr!r}: {e}") from None
        if "/p2p/" not in str(ma):
            raise RpcError(NODE_BAD_MULTIADDR, f"multiaddr {multiaddr!r} has no /p2p/<peer-id> part")
        try:
            pid = await self._d.ctx.overlay.connect(multiaddr)
        except FognodeError as e:
            raise RpcError(NODE_DIAL_FAILED, f"could not connect to {multiaddr}: {e}") from None
        except Exception as e:  # libp2p raises a zoo of types on dial failure
            raise RpcError(NODE_DIAL_FAILED, f"could not connect to {multiaddr}: {type(e).__name__}: {e}") from None
        return {"peer_id": pid}

    @rpc_method("node.disconnect")
    async def disconnect(self, peer_id: str) -> dict[str, Any]:
        """Close every connection to PEER_ID."""
        if not any(p.peer_id == peer_id and p.connected for p in self._d.ctx.overlay.peers()):
            raise RpcError(NODE_UNKNOWN_PEER, f"not connected to {peer_id}")
        await self._d.ctx.overlay.disconnect(peer_id)
        return {"peer_id": peer_id, "disconnected": True}

    @rpc_method("node.config")
    async def show_config(self) -> dict[str, Any]:
        """The effective configuration (file, environment and flags applied)."""
        c = self._d.config
        out: dict[str, Any] = {"source": c.source}
        for sec in ("node", "overlay", "rpc"):
            out[sec] = asdict(getattr(c, sec))
        out["protocols"] = {
            name: {"enabled": rs.enabled,
                   **(asdict(rs.config) if is_dataclass(rs.config) and not isinstance(rs.config, type) else {})}
            for name, rs in c.protocols.items()
        }
        return out

    @rpc_method("node.stop")
    async def stop(self) -> dict[str, Any]:
        """Stop the daemon cleanly (roles in reverse order, then the host)."""
        self._d.request_stop("node.stop")
        return {"stopping": True}


class Daemon:
    """One node's lifetime (module docstring). `settings` are the [node] and [rpc] sections
    read before start-up; `load` imports the roles and loads the whole config (blocking: it
    runs in a worker thread while the control socket answers "warming up")."""

    def __init__(self, datadir: Path, settings: EarlySettings,
                 load: Callable[[], tuple[Config, list[type[Role]]]]) -> None:
        self.datadir = datadir
        self.settings = settings
        self.load = load
        self.config: Config
        self.role_classes: list[type[Role]] = []
        self.started_at = time.monotonic()
        self.socket = socket_path(datadir, settings.rpc.socket)
        self.metrics = CollectorRegistry()
        self.events = EventBus(self.metrics)
        self.table = MethodTable()
        self.supervisor: Supervisor | None = None
        self.ctx: NodeContext
        self._stop = trio.Event()
        self._warmup_scope: trio.CancelScope | None = None    # cancelled by a stop while warming up
        self.stop_reason = ""
        self.fatal: FatalStorageError | None = None    # why the daemon must exit non-zero

    def request_stop(self, why: str) -> None:
        if not self._stop.is_set():
            self.stop_reason = why
            self._stop.set()
            if self._warmup_scope is not None:
                log.info("stopping while warming up (%s)", why)
                self._warmup_scope.cancel()

    def fatal_stop(self, role: str, err: FatalStorageError) -> None:
        """A role hit a fatal storage error: shut down cleanly, then `run()` raises it."""
        if self.fatal is None:
            self.fatal = err
        self.request_stop(f"role {role} failed: {err}")

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
            async for sig in sigs:
                self.request_stop(signal.Signals(sig).name)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until stopped. Raises DataDirError before anything is opened, ConfigError if the
        whole config (loaded while warming up) is wrong, and FatalStorageError after a clean
        shutdown caused by a role's storage failure."""
        lock = DataDirLock(self.datadir)
        lock.acquire()
        try:
            rpc = RpcServer(self.table, self.socket, self.metrics,
                            max_request=self.settings.rpc.max_request,
                            idle_timeout=self.settings.rpc.idle_timeout,
                            max_clients=self.settings.rpc.max_clients)
            rpc.warm_up("importing the roles and libp2p")
            node = NodeService(self)
            self.table.add_object(node, "node")    # node.stop answers while warming up
            rpc_scope = trio.CancelScope()

            async def serve_rpc(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with rpc_scope:
                    await rpc.serve(task_status=task_status)

            try:
                async with trio.open_nursery() as outer:
                    outer.start_soon(self._signals)
                    await outer.start(serve_rpc)
                    log.info("control socket %s answers (warming up); pid %d", self.socket, os.getpid())
                    try:
                        await self._run_node(rpc, rpc_scope, node, task_status)
                    finally:
                        rpc.stop_accepting()
                        rpc_scope.cancel()
                        outer.cancel_scope.cancel()
            except BaseExceptionGroup as eg:
                raise only_error(eg) from None
        finally:
            lock.release()
        if self.fatal is not None:
            log.info("stopped (a role could not write its data: exiting non-zero)")
            raise self.fatal
        log.info("stopped")

    async def _run_node(self, rpc: RpcServer, rpc_scope: trio.CancelScope, node: NodeService,
                        task_status: trio.TaskStatus[None]) -> None:
        """Warm up (load the roles, open the overlay, start the roles) while the socket answers
        NODE_NOT_READY, then serve until stopped, then stop the roles and close the host."""
        with trio.CancelScope() as warmup:
            self._warmup_scope = warmup
            if self._stop.is_set():
                return
            # not abandoned on a stop: the imports finish (about a second), then the stop proceeds,
            # so no thread is left importing while the interpreter shuts down
            self.config, self.role_classes = await trio.to_thread.run_sync(self.load)
            from fognode.node.host import open_overlay  # already imported by `load`

            identity = load_identity(self.datadir)
            genesis = read_genesis(self.datadir)
            rpc.warm_up("opening the overlay")
            async with open_overlay(self.config.overlay, identity, self.events, self.metrics) as overlay:
                self.ctx = NodeContext(
                    peer_id=overlay.peer_id, identity=identity, overlay=overlay, events=self.events,
                    metrics=self.metrics, datadir=self.datadir, genesis=genesis,
                    region=self.config.node.region,
                    roles=tuple(cls.name for cls in self.role_classes
                                if (st := self.config.protocols.get(cls.name)) is not None and st.enabled),
                )
                self.ctx.services.provide("node", node)
                self.supervisor = Supervisor(self.ctx, self.table, on_fatal=self.fatal_stop)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch_loop_lag, self.metrics)
                    for cls in self.role_classes:
                        settings = self.config.protocols.get(cls.name)
                        if settings is None or not settings.enabled:
                            log.info("role %s is disabled", cls.name)
                            self.table.add_disabled(cls, cls.name, f"set [protocols.{cls.name}] enabled = true in "
                                                                   f"node.toml (or --set protocols.{cls.name}.enabled=true) "
                                                                   f"and restart")
                            continue
                        rpc.warm_up(f"starting role {cls.name}")
                        await self.supervisor.start(nursery, cls, settings.config)
                    self._warmup_scope = None
                    rpc.warm_up(None)
                    node.ready.set()
                    log.info("node %s ready: listening on %s; control socket %s; pid %d; %.2f s of CPU since "
                             "the process started", overlay.peer_id, ", ".join(overlay.listen_addrs()), self.socket,
                             os.getpid(), time.process_time())
                    task_status.started()
                    await self._stop.wait()
                    log.info("stopping (%s)", self.stop_reason)
                    t0 = time.monotonic()
                    rpc.stop_accepting()
                    await self.supervisor.stop_all(self.config.node.shutdown_grace)
                    rpc_scope.cancel()
                    nursery.cancel_scope.cancel()
                log.info("roles stopped in %.2f s; closing the host", time.monotonic() - t0)
