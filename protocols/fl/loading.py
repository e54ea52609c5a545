"""The fl role's deferred load: its numeric core (numpy and the modules that need it) is
imported in a worker thread once the node is ready, not on the way to `node.info` answering.

Why: numpy and the FL modules built on it are about 80 ms of a daemon's ~0.8 s cold start
(`python -X importtime`, session 25), and nothing needs them until an FL session, an FL stream
or an `fl.*` call arrives. So the role starts (serves its streams, topic and RPC methods) with
only its light modules loaded (config, messages, metrics, archive), and `CoreLoad.run`:

1. waits until the node is ready (the "node" service's `ready` event: every role started,
   `node.info` answering), so the imports do not compete with the other roles' starts for
   the GIL; without a "node" service (a role run on its own, in tests) it loads at once;
2. imports `numeric_module` (default `fognode.protocols.fl.numeric`) in a worker thread,
   timing it (`seconds`), with the cyclic GC off as the start's own imports are
   (node/startimports.py `imports_without_gc`: the objects it makes are long-lived).

Whatever arrives meanwhile waits for the role to be serving (`FlRole.wait_serving`, bounded by
`WAIT_BOUND`), so nothing is dropped. A failed import is raised as `CoreLoadFailed` (a
PermanentRoleError: the supervisor shows the role failed with the reason, logs it, and does
not restart it: a module that does not import will not import on a retry), with the
traceback logged at ERROR. The role's health detail says "loading" until it serves.
"""
from __future__ import annotations

import importlib
import logging
import time
from types import ModuleType

import trio

from fognode.node.errors import PermanentRoleError
from fognode.node.role import Services
from fognode.node.startimports import imports_without_gc

log = logging.getLogger("fognode.fl")

NUMERIC_MODULE = "fognode.protocols.fl.numeric"
WAIT_BOUND = 120.0      # seconds a stream, gossip message or call waits for the role to serve


class CoreLoadFailed(PermanentRoleError):
    """The fl role's numeric core did not import (a broken install: numpy missing or built
    for another Python). The message names the module and the error."""


class CoreLoad:
    """One deferred import of the numeric core (module docstring). `state` is "waiting for
    the node", "importing", "loaded" or "failed"; `seconds` the import's wall time."""

    def __init__(self, numeric_module: str = NUMERIC_MODULE) -> None:
        self.numeric_module = numeric_module
        self.state = "waiting for the node"
        self.seconds: float | None = None

    async def run(self, services: Services) -> ModuleType:
        """Wait for the node to be ready, then import the numeric core in a worker thread and
        return it. Cancellable while waiting; the worker thread runs to its end (an import
        cannot be interrupted). Raises CoreLoadFailed."""
        node = services.get("node")
        if node is not None:
            await node.ready.wait()
        self.state = "importing"
        t0 = time.perf_counter()
        try:
            module = await trio.to_thread.run_sync(_import, self.numeric_module)
        except Exception as e:
            self.state = "failed"
            log.error("fl: the numeric core (%s) did not import", self.numeric_module, exc_info=True)
            raise CoreLoadFailed(f"its numeric core ({self.numeric_module}) did not import: "
                                 f"{type(e).__name__}: {e}; reinstall fognode with its numpy") from e
        self.seconds = time.perf_counter() - t0
        self.state = "loaded"
        log.debug("fl: numeric core imported in %.3f s", self.seconds)
        return module


def _import(name: str) -> ModuleType:
    """`name`, imported with the cyclic GC off (blocking: a worker thread)."""
    with imports_without_gc():
        return importlib.import_module(name)
