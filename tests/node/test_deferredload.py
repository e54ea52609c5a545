"""A role's deferred import (node/deferredload.py): it waits for the node to be ready, then for
its turn (one deferred import at a time), imports in a worker thread, and
imports at once for a role run without a "node" service. Real modules written to a temporary
directory on sys.path, the real NodeService and its limiter."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from fognode.node.daemon import NodeService
from fognode.node.deferredload import QUEUED, DeferredImport
from fognode.node.errors import PermanentRoleError
from fognode.node.role import Services
from tests.polling import wait_until

BLOCKING = """\
import os, time
deadline = time.monotonic() + 20.0          # bounded: the test creates the flag within it
while not os.path.exists({flag!r}) and time.monotonic() < deadline:
    time.sleep(0.01)
"""


class ProbeFailed(PermanentRoleError):
    pass


def deferred(module: str) -> DeferredImport:
    return DeferredImport(module, role="probe", what="its probe", hint="none", failed=ProbeFailed)


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


async def test_imports_wait_for_the_node_then_run_one_at_a_time(modules: Path) -> None:
    # both block until their flag exists: whichever gets the turn first (trio may run the two
    # woken tasks in either order) holds it until the test lets it finish
    for name in ("probe_first", "probe_second"):
        (modules / f"{name}.py").write_text(BLOCKING.format(flag=str(modules / f"{name}.go")))
    services = Services()
    node = NodeService(None)     # only `ready` and `deferred_imports` are read
    services.provide("node", node)
    first, second = deferred("probe_first"), deferred("probe_second")
    got: dict[str, object] = {}

    async def load(d: DeferredImport) -> None:
        got[d.module] = await d.run(services)

    def one_imports_one_waits() -> bool:
        return {first.state, second.state} == {"importing", QUEUED}

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(load, first)
            await wait_until(lambda: first.state == "waiting for the node", what="first waits")
            nursery.start_soon(load, second)
            await trio.sleep(0.1)
            assert first.state == second.state == "waiting for the node"
            node.ready.set()
            await wait_until(one_imports_one_waits, what="one imports, the other waits its turn")
            going, waiting = (first, second) if first.state == "importing" else (second, first)
            await trio.sleep(0.2)
            assert one_imports_one_waits() and waiting.module not in sys.modules
            (modules / f"{going.module}.go").touch()
            await wait_until(lambda: going.state == "loaded" and waiting.state == "importing",
                             what="the second import gets the turn once the first is done")
            (modules / f"{waiting.module}.go").touch()
        assert first.state == second.state == "loaded"
        assert first.seconds is not None and second.seconds is not None
        assert set(got) == {"probe_first", "probe_second"}
        assert node.deferred_imports.available_tokens == 1


async def test_without_a_node_service_it_imports_at_once(modules: Path) -> None:
    (modules / "probe_alone.py").write_text("LOADED = True\n")
    d = deferred("probe_alone")
    with trio.fail_after(15):
        module = await d.run(Services())
    assert getattr(module, "LOADED") is True and d.state == "loaded"


async def test_a_failed_import_gives_back_the_turn(modules: Path) -> None:
    (modules / "probe_broken.py").write_text("raise ImportError('no such library')\n")
    (modules / "probe_after.py").write_text("LOADED = True\n")
    services = Services()
    node = NodeService(None)
    services.provide("node", node)
    node.ready.set()
    with trio.fail_after(15):
        with pytest.raises(ProbeFailed, match=r"its probe \(probe_broken\) did not import: "
                                              r"ImportError: no such library; none"):
            await deferred("probe_broken").run(services)
        module = await deferred("probe_after").run(services)
    assert getattr(module, "LOADED") is True
