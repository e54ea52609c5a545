"""The onion role's deferred load: its working parts (parts.py: the circuit engine and its
crypto, the relay directory, hidden services, hosted data: about 40 of our modules) are
imported in a worker thread once the node is ready, not on the way to `node.info` answering.

Why: importing them is about 20 ms of CPU of a daemon's cold start (`python -X importtime`,
session 27), and nothing needs them until a peer's onion link, a hosting stream, a SOCKS
client, a DHT record of the role's namespaces or an `onion.*` call arrives. The role's shell
(protocol.py) serves those from the start with its light modules (config, wire names, metrics,
errors, the SOCKS server); `PartsLoad.run`:

1. waits until the node is ready (the "node" service's `ready` event: every role started,
   `node.info` answering), so the imports do not compete with the other roles' starts for
   the GIL; without a "node" service (a role run on its own, in tests) it loads at once;
2. imports `module` (default `fognode.protocols.onion.parts`) in a worker thread, timing it
   (`seconds`), with the cyclic GC off as the start's own imports are (node/startimports.py
   `imports_without_gc`: the objects it makes are long-lived).

A failed import is raised as `PartsLoadFailed` (a PermanentRoleError: the supervisor shows the
role failed with the reason, logs it, and does not restart it: a module that does not import
will not import on a retry), with the traceback logged at ERROR.
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

log = logging.getLogger("fognode.onion")

PARTS_MODULE = "fognode.protocols.onion.parts"
WAIT_BOUND = 120.0      # seconds a stream or call waits for the role to serve


class PartsLoadFailed(PermanentRoleError):
    """The onion role's working parts did not import (a broken install). The message names
    the module and the error."""


class PartsLoad:
    """One deferred import of the working parts (module docstring). `state` is "waiting for
    the node", "importing", "loaded" or "failed"; `seconds` the import's wall time."""

    def __init__(self, module: str = PARTS_MODULE) -> None:
        self.module = module
        self.state = "waiting for the node"
        self.seconds: float | None = None

    async def run(self, services: Services) -> ModuleType:
        """Wait for the node to be ready, then import the parts in a worker thread and return
        the module. Cancellable while waiting; the worker thread runs to its end (an import
        cannot be interrupted). Raises PartsLoadFailed."""
        node = services.get("node")
        if node is not None:
            await node.ready.wait()
        self.state = "importing"
        t0 = time.perf_counter()
        try:
            module = await trio.to_thread.run_sync(_import, self.module)
        except Exception as e:
            self.state = "failed"
            log.error("onion: the role's parts (%s) did not import", self.module, exc_info=True)
            raise PartsLoadFailed(f"its parts ({self.module}) did not import: {type(e).__name__}: {e}; "
                                  "reinstall fognode") from e
        self.seconds = time.perf_counter() - t0
        self.state = "loaded"
        log.debug("onion: parts imported in %.3f s", self.seconds)
        return module


def _import(name: str) -> ModuleType:
    """`name`, imported with the cyclic GC off (blocking: a worker thread)."""
    with imports_without_gc():
        return importlib.import_module(name)
