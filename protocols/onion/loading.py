"""The onion role's deferred load: its working parts (parts.py: the circuit engine and its
crypto, the relay directory, hidden services, hosted data: about 40 of our modules) are
imported in a worker thread once the node is ready and no other role's deferred import runs
(node/deferredload.py), not on the way to `node.info` answering.

Why: importing them is about 20 ms of CPU of a daemon's cold start (`python -X importtime`,
session 27), and nothing needs them until a peer's onion link, a hosting stream, a SOCKS
client, a DHT record of the role's namespaces or an `onion.*` call arrives. The role's shell
(protocol.py) serves those from the start with its light modules (config, wire names, metrics,
errors, the SOCKS server). A failed import is raised as `PartsLoadFailed` (not restarted: a
module that does not import will not import on a retry), with the traceback logged at ERROR.
"""
from __future__ import annotations

from fognode.node.deferredload import DeferredImport
from fognode.node.errors import PermanentRoleError

PARTS_MODULE = "fognode.protocols.onion.parts"
WAIT_BOUND = 120.0      # seconds a stream, SOCKS client or call waits for the role to serve


class PartsLoadFailed(PermanentRoleError):
    """The onion role's working parts did not import (a broken install). The message names
    the module and the error."""


def parts_load(module: str = PARTS_MODULE) -> DeferredImport:
    """The deferred import of the working parts (`run` returns the module)."""
    return DeferredImport(module, role="onion", what="its parts", hint="reinstall fognode",
                          failed=PartsLoadFailed)
