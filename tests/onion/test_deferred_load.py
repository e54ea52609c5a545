"""The onion role's working parts load after the node is ready (protocols/onion/loading.py):
the SOCKS port listens from the start, a peer's link stream and an `onion.*` call that arrive
meanwhile are served once they load, a DHT record of its namespaces is checked meanwhile, and
parts that do not import fail the role loudly. Real libp2p overlays on 127.0.0.1, the real supervisor and method table.

The daemon's readiness signal is the "node" service's `ready` event (NodeService); these tests
hold it unset, as a daemon does while its other roles are still starting."""
from __future__ import annotations

import logging
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from fognode.node.errors import RpcError
from fognode.node.roles import Supervisor
from fognode.node.rpc.methods import NODE_ROLE_UNAVAILABLE, MethodTable
from fognode.protocols.onion.config import OnionConfig
from fognode.protocols.onion.hs_errors import DescriptorRejected
from fognode.protocols.onion.protocol import OnionRole
from fognode.tools.devnet import free_port
from tests.polling import wait_until
from tests.role_contexts import contexts


CONFIG = OnionConfig(socks_port=0, period_length=60, period_offset=0, descriptor_window=10)


async def test_a_link_and_calls_that_arrive_while_the_parts_load_are_served(tmp_path: Path) -> None:
    async with contexts(2, tmp_path) as ctxs, trio.open_nursery() as nursery:
        ctxs[0].services.require("node").ready.set()          # the dialler's node is ready
        dialler = OnionRole(ctxs[0], CONFIG)
        late = OnionRole(ctxs[1], replace(CONFIG, socks_port=free_port()))   # its node is not ready yet
        await nursery.start(dialler.run)
        await nursery.start(late.run)
        assert late.health_detail()["loading"] == "circuits, relay and services: waiting for the node"
        # the SOCKS port listens from the start (a client's CONNECT would wait for the parts)
        assert late.socks is not None and late.health_detail()["socks_port"] == late.config.socks_port
        socket.create_connection(("127.0.0.1", late.config.socks_port), timeout=5).close()
        # a DHT record of its namespace is checked by the real validator, not refused unchecked
        with pytest.raises(DescriptorRejected):
            late.validator.validate("/fognode-hsdesc/" + "00" * 32, b"not a descriptor")
        dparts = await dialler.parts()
        await wait_until(lambda: all(len([p for p in c.overlay.peers() if p.connected]) >= 1 for c in ctxs),
                         60, "the overlays connected")
        sent: list[int] = []
        answers: list[Any] = []

        async def link_test() -> None:       # 1 MB of padding: more than the stream's window
            sent.append(await dparts.engine.links.send_padding(late.ctx.peer_id, 1_000_000))

        async def call_circuits() -> None:
            answers.append(await late.rpc_circuits())

        nursery.start_soon(link_test)
        nursery.start_soon(call_circuits)
        await trio.sleep(1.0)                 # (a chance for either to finish wrongly; not a sync)
        assert sent == [] and answers == [] and "loading" in late.health_detail()
        ctxs[1].services.require("node").ready.set()
        await wait_until(lambda: sent != [] and answers != [], 30, "the link and the call served once loaded")
        assert sent[0] >= 1_000_000 and answers[0] == {"own": [], "relayed": []}
        lparts = await late.parts()
        assert lparts.engine.links.bytes_in >= 1_000_000
        assert lparts.validator is late.validator.get()       # the one that checked meanwhile
        assert "loading" not in late.health_detail() and late._load.state == "loaded"
        nursery.cancel_scope.cancel()


async def test_parts_that_do_not_import_fail_the_role_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "broken_onion_parts.py").write_text('raise ImportError("nacl built for another Python")\n')
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))

    class BrokenOnion(OnionRole):
        parts_module = "broken_onion_parts"

    async with contexts(1, tmp_path) as ctxs, trio.open_nursery() as nursery:
        table = MethodTable()
        sup = Supervisor(ctxs[0], table, backoff_initial=0.01)
        await sup.start(nursery, BrokenOnion, CONFIG)
        assert sup.health()["onion"]["health"] == "healthy"   # serving (calls wait) while it loads
        assert sup.health()["onion"]["loading"] == "circuits, relay and services: waiting for the node"
        spec = table.get("onion.circuits")
        assert spec is not None
        errors: list[RpcError] = []

        async def call_circuits() -> None:
            try:
                await spec.handler()
            except RpcError as e:
                errors.append(e)

        nursery.start_soon(call_circuits)
        with caplog.at_level(logging.ERROR):
            ctxs[0].services.require("node").ready.set()
            await wait_until(lambda: sup.health()["onion"]["health"] == "unhealthy", 30, "the role failed")
            await wait_until(lambda: errors != [], 10, "the waiting call refused")
        row = sup.health()["onion"]
        assert row["detail"].startswith("failed, not restarted: its parts (broken_onion_parts) did not import: "
                                        "ImportError: nacl built for another Python")
        assert row["restarts"] == 0
        assert errors[0].code == NODE_ROLE_UNAVAILABLE and "failed" in str(errors[0])
        assert any("did not import" in r.getMessage() and r.exc_info for r in caplog.records)
        await sup.stop_all(5.0)
        nursery.cancel_scope.cancel()
    sys.modules.pop("broken_onion_parts", None)
