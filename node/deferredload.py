"""A role's deferred import: a module a role needs only to serve (not to start) is imported in
a worker thread once the node is ready, not on the way to `node.info` answering (the fl role's
numeric core, the onion role's working parts).

`DeferredImport.run`:
1. waits until the node is ready (the "node" service's `ready` event: every role started,
   `node.info` answering), so the import does not compete with the other roles' starts for
   the GIL;
2. waits for its turn: the "node" service's `deferred_imports` limiter (one token) lets one
   role's deferred import run at a time (which of the roles woken by `ready` goes first is
   the scheduler's choice; later ones queue in order). Two imports at once
   share the GIL with each other and the event loop: in one process, importing FL's core and
   onion's parts concurrently cost 139-221 ms of CPU (median 207) against 125-207 ms (median
   147) one after the other (session 27, load 5, 5 alternations);
3. imports the module in a worker thread, timing it (`seconds`), with the cyclic GC off as
   the start's own imports are (node/startimports.py `imports_without_gc`: the objects it
   makes are long-lived).
Without a "node" service (a role run on its own, in tests) it imports at once.

`wait_served` is the role's side once the import is asked for: what arrives while the role
loads (a stream, an RPC call) waits for the role to serve with the module, bounded, and is
refused with the load's state when it fails or takes longer.

A failed import raises `failed(message)` (the role's PermanentRoleError subclass: the
supervisor shows the role failed with the reason and does not restart it: a module that does
not import will not import on a retry), with the traceback logged at ERROR.
"""
from __future__ import annotations

import importlib
import logging
import time
from types import ModuleType
from typing import Callable, TypeVar

import trio

from fognode.node.errors import LocalProtocolError, PermanentRoleError
from fognode.node.role import Services
from fognode.node.startimports import imports_without_gc

QUEUED = "waiting for another role's load"
T = TypeVar("T")


class DeferredImport:
    """One deferred import (module docstring). `state` is "waiting for the node", "waiting for
    another role's load", "importing", "loaded" or "failed"; `seconds` the import's wall time.
    `role` names the logger (fognode.<role>) and prefixes its lines; `what` names the module
    in messages ("its numeric core"); `hint` says what to do ("reinstall fognode")."""

    def __init__(self, module: str, *, role: str, what: str, hint: str,
                 failed: Callable[[str], PermanentRoleError]) -> None:
        self.module, self.role, self.what, self.hint, self.failed = module, role, what, hint, failed
        self.log = logging.getLogger(f"fognode.{role}")
        self.state = "waiting for the node"
        self.seconds: float | None = None

    async def run(self, services: Services) -> ModuleType:
        """Wait for the node to be ready and for this import's turn, then import the module in
        a worker thread and return it. Cancellable while waiting; the worker thread runs to its
        end (an import cannot be interrupted), holding the turn until then. Raises
        `failed(...)`."""
        node = services.get("node")
        turn = trio.CapacityLimiter(1)     # a role on its own: nobody to wait for
        if node is not None:
            await node.ready.wait()
            turn = node.deferred_imports
        if turn.available_tokens == 0:
            self.state = QUEUED
        async with turn:
            self.state = "importing"
            t0 = time.perf_counter()
            try:
                module = await trio.to_thread.run_sync(_import, self.module)
            except Exception as e:
                self.state = "failed"
                self.log.error("%s: %s (%s) did not import", self.role, self.what, self.module, exc_info=True)
                raise self.failed(f"{self.what} ({self.module}) did not import: {type(e).__name__}: {e}; "
                                  f"{self.hint}") from e
        self.seconds = time.perf_counter() - t0
        self.state = "loaded"
        self.log.debug("%s: %s imported in %.3f s", self.role, self.what, self.seconds)
        return module


    async def wait_served(self, get: Callable[[], T | None], serving: trio.Event, bound: float) -> T:
        """`get()` once the role serves with what this import loaded: waits (at most `bound`
        seconds) for `serving`, which the role sets once it serves or its load failed. Raises
        LocalProtocolError naming the load's state when it failed or took longer."""
        got = get()
        if got is not None:
            return got
        with trio.move_on_after(bound):
            await serving.wait()
        got = get()
        if got is None:
            raise LocalProtocolError(f"the {self.role} role is not serving: {self.what} ({self.state})"
                                     + ("" if serving.is_set() else f" after {bound:g} s"))
        return got


def _import(name: str) -> ModuleType:
    """`name`, imported with the cyclic GC off (blocking: a worker thread)."""
    with imports_without_gc():
        return importlib.import_module(name)
