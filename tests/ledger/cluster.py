"""In-process ledger clusters: each node a real libp2p overlay on 127.0.0.1 (node.host) with
its own data dir, LevelDB store and LedgerRole; nodes can be stopped and restarted."""
from __future__ import annotations

import gc
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.ledger.genesis import DEV_FUNDING, DEV_STAKE, dev_genesis
from fognode.ledger.protocol import LedgerConfig, LedgerRole
from fognode.ledger.wallet import Keystore
from fognode.node.errors import FatalStorageError
from fognode.node.events import EventBus
from fognode.node.host import OverlayConfig, open_overlay
from fognode.node.role import NodeContext
from fognode.node.roles import fatal_storage_error

LOCAL = ["/ip4/127.0.0.1/tcp/0"]


@dataclass
class LNode:
    index: int
    datadir: Path
    identity: SigningKey
    wallet: bytes
    role: LedgerRole | None = None
    ctx: NodeContext | None = None
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)
    addr: str = ""
    failure: FatalStorageError | None = None    # why the node's ledger stopped (as the daemon would)

    @property
    def up(self) -> bool:
        return self.role is not None and self.role.service is not None

    @property
    def svc(self) -> Any:
        assert self.role is not None and self.role.service is not None, f"node {self.index} is down"
        return self.role.service


class Cluster:
    def __init__(self, root: Path, n: int, nursery: trio.Nursery, config: LedgerConfig,
                 clock: Callable[[], float] | None = None, ledger_overrides: dict[str, Any] | None = None,
                 genesis_time: int | None = None, ledger_dirs: dict[int, Path] | None = None) -> None:
        self.root = root
        self.clock = clock
        self.nursery = nursery
        self.config = config
        self.nodes: list[LNode] = []
        for i in range(n):
            d = root / f"n{i}"
            d.mkdir(parents=True)
            if ledger_dirs and i in ledger_dirs:      # e.g. on a small filesystem that fills up
                (d / "ledger").symlink_to(ledger_dirs[i], target_is_directory=True)
            ident = SigningKey(bytes([200 + i]) * 32)
            wallet = Keystore(d).create("", "default")
            self.nodes.append(LNode(i, d, ident, wallet))
        ledger = dev_genesis("fog-test", [(bytes(x.identity.verify_key), DEV_STAKE) for x in self.nodes],
                             {x.wallet: DEV_FUNDING for x in self.nodes}, genesis_time=genesis_time)
        ledger.update(ledger_overrides or {})
        self.genesis = {"chain_id": "fog-test", "ledger": ledger}

    async def start(self, i: int) -> None:
        node = self.nodes[i]
        node.stopped = trio.Event()
        await self.nursery.start(self._run, node)

    async def _run(self, node: LNode, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        reg = CollectorRegistry()
        events = EventBus(reg)
        boot = [n.addr for n in self.nodes if n is not node and n.up and n.addr]
        cfg = OverlayConfig(listen=LOCAL, bootstrap=boot[:1], connmgr_interval=0.3, peers_low=len(self.nodes) - 1)
        try:
            with trio.CancelScope() as scope:
                node.scope = scope
                await self._serve(node, cfg, reg, events, boot, task_status)
        except* FatalStorageError as eg:
            # the daemon's supervisor would stop the node (node/roles.py); the cluster records it
            node.failure = fatal_storage_error(eg)
        finally:
            node.role = None
            node.stopped.set()

    async def _serve(self, node: LNode, cfg: OverlayConfig, reg: CollectorRegistry, events: EventBus,
                     boot: list[str], task_status: trio.TaskStatus[None]) -> None:
        async with open_overlay(cfg, node.identity, events, reg) as ov:
            node.addr = ov.listen_addrs()[0]
            ctx = NodeContext(peer_id=ov.peer_id, identity=node.identity, overlay=ov, events=events,
                              metrics=reg, datadir=node.datadir, genesis=self.genesis,
                              **({"clock": self.clock} if self.clock is not None else {}))
            node.ctx = ctx
            role = LedgerRole(ctx, self.config)
            async with trio.open_nursery() as inner:
                await inner.start(role.run)
                node.role = role
                for b in boot:
                    inner.start_soon(ov.connect, b)
                task_status.started()

    async def stop(self, i: int) -> None:
        node = self.nodes[i]
        assert node.scope is not None
        node.scope.cancel()
        await node.stopped.wait()


@asynccontextmanager
async def ledger_cluster(root: Path, n: int, *, clock: Callable[[], float] | None = None,
                         ledger_overrides: dict[str, Any] | None = None, genesis_time: int | None = None,
                         ledger_dirs: dict[int, Path] | None = None, **config: Any) -> AsyncIterator[Cluster]:
    """Start n nodes; on exit stop them and collect the sockets py-libp2p leaves behind.

    Observed: after a node of the cluster is stopped, the live hosts keep TCP sockets (dials to
    the stopped node's port) that are never closed; their ResourceWarning fires at some later
    garbage collection, inside whichever test runs then. They are collected here, inside the
    test that caused them, with that one warning ignored (reported to the host's owner).
    """
    cfg = LedgerConfig(**{"batch_interval": 0.05, "request_timeout": 3.0, "retry_interval": 0.3,
                          "sync_interval": 1.0, "uptime_claims": False, **config})
    c: Cluster | None = None
    try:
        async with trio.open_nursery() as nursery:
            c = Cluster(root, n, nursery, cfg, clock, ledger_overrides, genesis_time, ledger_dirs)
            for i in range(n):
                await c.start(i)
            yield c
            nursery.cancel_scope.cancel()
    finally:
        for node in c.nodes if c is not None else []:   # the test frame still holds `c`
            node.role = None
            node.ctx = None
            node.scope = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


async def wait_until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.05)
