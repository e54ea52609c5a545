"""The fl role's deferred load: its numeric core (numpy and the modules that need it) is
imported in a worker thread once the node is ready and no other role's deferred import runs
(node/deferredload.py), not on the way to `node.info` answering.

Why: numpy and the FL modules built on it are about 80 ms of a daemon's ~0.8 s cold start
(`python -X importtime`, session 25), and nothing needs them until an FL session, an FL stream
or an `fl.*` call arrives. So the role starts (serves its streams, topic and RPC methods) with
only its light modules loaded (config, messages, metrics, archive); whatever arrives meanwhile
waits for the role to be serving (`FlRole.wait_serving`, bounded by `WAIT_BOUND`), so nothing
is dropped. A failed import is raised as `CoreLoadFailed` (not restarted: a module that does
not import will not import on a retry), with the traceback logged at ERROR. The role's health
detail says "loading" until it serves.
"""
from __future__ import annotations

from fognode.node.deferredload import DeferredImport
from fognode.node.errors import PermanentRoleError

NUMERIC_MODULE = "fognode.protocols.fl.numeric"
WAIT_BOUND = 120.0      # seconds a stream, gossip message or call waits for the role to serve


class CoreLoadFailed(PermanentRoleError):
    """The fl role's numeric core did not import (a broken install: numpy missing or built
    for another Python). The message names the module and the error."""


def core_load(numeric_module: str = NUMERIC_MODULE) -> DeferredImport:
    """The deferred import of the numeric core (`run` returns the module)."""
    return DeferredImport(numeric_module, role="fl", what="its numeric core",
                          hint="reinstall fognode with its numpy", failed=CoreLoadFailed)
