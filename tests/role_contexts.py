"""Node contexts on real, connected libp2p overlays (127.0.0.1), each with a "node" service
whose readiness the test sets: for tests of a role's deferred load (tests/fl, tests/onion)."""
from __future__ import annotations

import os
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.daemon import NodeService
from fognode.node.events import EventBus
from fognode.node.host import OverlayConfig, open_overlay
from fognode.node.role import NodeContext

LOCAL = ["/ip4/127.0.0.1/tcp/0"]


@asynccontextmanager
async def contexts(n: int, root: Path) -> AsyncIterator[list[NodeContext]]:
    """n node contexts on n connected real overlays, each with a "node" service whose
    readiness the test sets."""
    async with AsyncExitStack() as stack:
        out: list[NodeContext] = []
        for i in range(n):
            reg = CollectorRegistry()
            bus = EventBus(reg)
            key = SigningKey(os.urandom(32))
            boot = [out[0].overlay.listen_addrs()[0]] if out else []
            ov = await stack.enter_async_context(open_overlay(
                OverlayConfig(listen=LOCAL, bootstrap=boot, peers_low=n), key, bus, reg))
            (root / f"n{i}").mkdir()
            ctx = NodeContext(peer_id=ov.peer_id, identity=key, overlay=ov, events=bus,
                              metrics=reg, datadir=root / f"n{i}", genesis={}, region="eu")
            # only its `ready` event is read by the role; the daemon is not needed for that
            ctx.services.provide("node", NodeService(None))
            out.append(ctx)
        yield out
