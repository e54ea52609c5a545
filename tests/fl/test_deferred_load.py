"""The fl role's numeric core loads after the node is ready (protocols/fl/loading.py): what
arrives meanwhile (gossip, RPC calls) is served once it loaded, and a core that does not import
fails the role loudly. Real libp2p overlays on 127.0.0.1, the real supervisor and method table.

The daemon's readiness signal is the "node" service's `ready` event (NodeService); these tests
hold it unset, as a daemon does while its other roles are still starting."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from fognode.node.errors import RpcError
from fognode.node.roles import Supervisor
from fognode.node.rpc.methods import NODE_ROLE_UNAVAILABLE, MethodTable
from fognode.protocols.fl.protocol import FlConfig, FlRole
from tests.polling import wait_until
from tests.role_contexts import contexts


def config(i: int) -> FlConfig:
    return FlConfig(data_seed=7, data_index=i, tick_interval=0.1, republish_interval=600.0)


async def test_gossip_and_calls_that_arrive_while_the_core_loads_are_served(tmp_path: Path) -> None:
    async with contexts(2, tmp_path) as ctxs, trio.open_nursery() as nursery:
        ctxs[0].services.require("node").ready.set()          # the starter's node is ready
        starter = FlRole(ctxs[0], config(0))
        late = FlRole(ctxs[1], config(1))                     # its node is not ready yet
        await nursery.start(starter.run)
        await nursery.start(late.run)
        assert late.core is None and late.health_detail() == {"loading": "numeric core: waiting for the node"}
        await wait_until(lambda: starter.core is not None, 60, "the starter's core")
        await wait_until(lambda: all(len([p for p in c.overlay.peers() if p.connected]) >= 1 for c in ctxs),
                         60, "the overlays connected")

        answers: list[Any] = []

        async def call_sessions() -> None:
            answers.append(await late.sessions())

        nursery.start_soon(call_sessions)
        out = await starter.start(task="synthetic", rounds=1, min_participants=2, participants=2,
                                  deadline=30.0, optin_seconds=5.0, task_params={"max_samples": 100})
        sid = bytes.fromhex(out["session_id"])
        # the announcement reached the loading role (its check decoded it) and waits there
        await wait_until(lambda: any(origin == starter.ctx.peer_id for origin, _ in late._checked), 30,
                         "the announcement at the loading role")
        assert late.core is None and answers == []
        ctxs[1].services.require("node").ready.set()
        await wait_until(lambda: late.core is not None and sid in late.core.sessions, 60,
                         "the announcement handled once the core loaded")
        await wait_until(lambda: answers != [], 10, "the waiting fl.sessions call answered")
        assert answers == [[]] or [r["session_id"] for r in answers[0]] == [sid.hex()]
        assert "loading" not in late.health_detail()
        assert late._load.state == "loaded" and late._load.seconds is not None
        nursery.cancel_scope.cancel()


async def test_a_core_that_does_not_import_fails_the_role_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "broken_fl_numeric.py").write_text(
        'raise ImportError("numpy.core.multiarray failed to import")\n')
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))

    class BrokenFl(FlRole):
        numeric_module = "broken_fl_numeric"

    async with contexts(1, tmp_path) as ctxs, trio.open_nursery() as nursery:
        table = MethodTable()
        sup = Supervisor(ctxs[0], table, backoff_initial=0.01)
        await sup.start(nursery, BrokenFl, config(0))
        assert sup.health()["fl"]["health"] == "healthy"      # serving (calls wait) while it loads
        assert sup.health()["fl"]["loading"] == "numeric core: waiting for the node"
        spec = table.get("fl.sessions")
        assert spec is not None
        errors: list[RpcError] = []

        async def call_sessions() -> None:
            try:
                await spec.handler()
            except RpcError as e:
                errors.append(e)

        nursery.start_soon(call_sessions)
        with caplog.at_level(logging.ERROR):
            ctxs[0].services.require("node").ready.set()
            await wait_until(lambda: sup.health()["fl"]["health"] == "unhealthy", 30, "the role failed")
            await wait_until(lambda: errors != [], 10, "the waiting call refused")
        row = sup.health()["fl"]
        assert row["detail"].startswith("failed, not restarted: its numeric core (broken_fl_numeric) did not "
                                        "import: ImportError: numpy.core.multiarray failed to import")
        assert sup.health()["fl"]["restarts"] == 0
        assert errors[0].code == NODE_ROLE_UNAVAILABLE and "failed" in str(errors[0])
        assert any("did not import" in r.getMessage() and r.exc_info for r in caplog.records)
        await sup.stop_all(5.0)
        nursery.cancel_scope.cancel()
    sys.modules.pop("broken_fl_numeric", None)
