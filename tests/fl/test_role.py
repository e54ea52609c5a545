"""The `fl` role on real libp2p overlays (TCP on 127.0.0.1, Noise, Yamux, GossipSub) in one
process: gossip control plane, update and model streams, worker-thread training, RPC handlers
called directly (the daemon does not list the role yet: see the report)."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable

import pytest
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.errors import RpcError
from fognode.node.events import EventBus
from fognode.node.host import OverlayConfig, open_overlay
from fognode.node.role import NodeContext
from fognode.protocols.fl.events import TrainingRoundCompleted, TrainingRoundStarted
from fognode.protocols.fl.protocol import FlConfig, FlRole

LOCAL = ["/ip4/127.0.0.1/tcp/0"]


@asynccontextmanager
async def fl_nodes(n: int, root: Path, **cfg: object) -> AsyncIterator[list[FlRole]]:
    """n roles on n overlays; on exit the roles stop first, then the overlays close."""
    async with AsyncExitStack() as stack:
        overlays = []
        for i in range(n):
            reg = CollectorRegistry()
            bus = EventBus(reg)
            key = SigningKey(os.urandom(32))
            boot = [overlays[0][0].listen_addrs()[0]] if overlays else []
            ov = await stack.enter_async_context(open_overlay(
                OverlayConfig(listen=LOCAL, bootstrap=boot, peers_low=n), key, bus, reg))
            overlays.append((ov, key, bus, reg))
        async with trio.open_nursery() as nursery:
            roles: list[FlRole] = []
            for i, (ov, key, bus, reg) in enumerate(overlays):
                (root / f"n{i}").mkdir()
                ctx = NodeContext(peer_id=ov.peer_id, identity=key, overlay=ov, events=bus,
                                  metrics=reg, datadir=root / f"n{i}", genesis={}, region="eu")
                role = FlRole(ctx, FlConfig(data_seed=7, data_index=i, tick_interval=0.1,
                                            republish_interval=1.0, **cfg))  # type: ignore[arg-type]
                await nursery.start(role.run)
                roles.append(role)
            try:
                yield roles
            finally:
                nursery.cancel_scope.cancel()


async def wait_until(cond: Callable[[], bool], timeout: float) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.05)


async def test_three_nodes_train_over_real_streams(tmp_path: Path) -> None:
    # facts are gathered with the nodes up and checked after they are down: an assertion
    # raised inside the overlays' nurseries is buried in nested exception groups
    async with fl_nodes(3, tmp_path) as roles:
        await wait_until(lambda: all(len([p for p in r.ctx.overlay.peers() if p.connected]) >= 1
                                     for r in roles), 60)
        subs = [r.ctx.events.subscribe("test", [TrainingRoundStarted, TrainingRoundCompleted])
                for r in roles]
        out = await roles[0].start(task="synthetic", rounds=3, min_participants=2, participants=3,
                                   deadline=15.0, local_epochs=2, lr=0.05, optin_seconds=5.0,
                                   task_params={"alpha": 0.5, "beta": 0.5, "max_samples": 300},
                                   wire_dtype="float16")
        sid = out["session_id"]
        await wait_until(lambda: roles[0].core is not None and
                         roles[0].core.status(bytes.fromhex(sid))["state"] != "running", 90)
        # the final model is written by a background task right after the session ends
        await wait_until(lambda: roles[0]._final_path(bytes.fromhex(sid)) is not None, 20)
        st = await roles[0].status(sid, verbose=True)
        st1 = await roles[1].status(sid, verbose=True)
        seen: list[list[object]] = []
        for sub in subs:
            got: list[object] = []
            while True:
                try:
                    got.append(sub._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            seen.append(got)
        peers = [r.ctx.peer_id for r in roles]
        reg = roles[0].ctx.metrics
        received = sum((reg.get_sample_value("fognode_fl_bytes_received_total", {"stream": k}) or 0)
                       for k in ("update", "model"))
        rounds_observed = reg.get_sample_value("fognode_fl_round_duration_seconds_count")
        target = tmp_path / "model.pt"
        exp = await roles[0].export(sid, str(target)) if st["state"] == "completed" else {}
        listed = [s["session_id"] for s in await roles[0].sessions()]
        codes = []
        for call in (lambda: roles[0].status("00" * 32), lambda: roles[0].export(sid, "relative/path.pt")):
            try:
                await call()
                codes.append(0)
            except RpcError as e:
                codes.append(e.code)

    assert st["state"] == "completed", st
    json.dumps(st, allow_nan=False)          # what the RPC server sends must be plain JSON
    json.dumps(st1, allow_nan=False)
    assert [h["round"] for h in st["history"]] == [1, 2, 3]
    assert all(len(h["accepted"]) >= 2 for h in st["history"]), st["history"]
    assert st["history"][-1]["loss"] < st["history"][0]["loss"], st["history"]
    assert st["model_file"] and Path(st["model_file"]).exists()
    # every participant saw its rounds start on its own event bus
    for peer, got in zip(peers, seen):
        mine = {h["round"] for h in st["history"] if peer in h["participants"]}
        started = {e.round for e in got if isinstance(e, TrainingRoundStarted)}
        assert mine <= started, (mine, started)
    assert received > 0 and rounds_observed == 3
    # the export is a torch state dict
    assert exp["tensors"] == ["weight", "bias"]
    code = ("import torch, sys; sd = torch.load(sys.argv[1], weights_only=True); "
            "print(tuple(sd['weight'].shape), tuple(sd['bias'].shape))")
    res = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "(10, 60) (10,)"
    assert listed == [sid] and codes == [503, 500]


async def test_start_validation_errors(tmp_path: Path) -> None:
    async with fl_nodes(1, tmp_path) as (role,):
        cases = [
            (dict(task="nope"), 501),
            (dict(task="synthetic", min_participants=5, participants=3), 500),
            (dict(task="synthetic", strategy="bogus"), 502),
            (dict(task="synthetic", strategy="krum", secagg=True), 507),
            (dict(task="synthetic", hierarchical=True, secagg=True), 507),
            (dict(task="synthetic", hierarchical=True, strategy="median"), 502),
            (dict(task="synthetic", task_params={"alpha": -1.0}), 500),
            (dict(task="synthetic", dp_clip=1.0, dp_noise=0.0), 502),
        ]
        for kw, code in cases:
            with pytest.raises(RpcError) as ei:
                await role.start(**kw)  # type: ignore[arg-type]
            assert ei.value.code == code, (kw, ei.value.message)
        # checked before the session starts (issue 15 item 13), each refusal naming the fix
        refused = [
            (dict(task="synthetic", dp_noise=1.0), "without --dp-clip"),
            (dict(task="synthetic", strategy="krum", min_participants=3, participants=5), "at least 5"),
            (dict(task="synthetic", strategy="bulyan", strategy_params={"f": 1}, min_participants=6,
                  participants=6), "needs at least 7"),
        ]
        for kw, words in refused:
            with pytest.raises(RpcError) as ei:
                await role.start(**kw)  # type: ignore[arg-type]
            assert ei.value.code == 500 and words in ei.value.message, (kw, ei.value.message)
        # one node knows only itself: asking for five is a warning, not a refusal
        out = await role.start(task="synthetic", rounds=1, min_participants=2, participants=5)
        assert any("more than the 1 eligible device" in w for w in out["warnings"]), out


async def test_stop_saves_final_model(tmp_path: Path) -> None:
    async with fl_nodes(1, tmp_path) as (role,):
        out = await role.start(task="synthetic", rounds=100, min_participants=1, participants=1,
                               deadline=30.0, optin_seconds=0.2, task_params={"max_samples": 200})
        sid = out["session_id"]
        await wait_until(lambda: role.core is not None and
                         role.core.status(bytes.fromhex(sid))["rounds_done"] >= 1, 30)
        res = await role.stop(sid)
        assert res["state"] == "stopped" and res["model_file"]
        assert Path(res["model_file"]).name.startswith("final-" + res["model_hash"][:16])
        with pytest.raises(RpcError) as ei:
            await role.stop(sid)
        assert ei.value.code == 500


def test_importing_the_role_does_not_import_torch() -> None:
    code = ("import sys; import fognode.protocols.fl.protocol, fognode.protocols.fl.tasks.synthetic; "
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


class LiveNode:
    def __init__(self, role: FlRole, scope: trio.CancelScope) -> None:
        self.role = role
        self.scope = scope

    def kill(self) -> None:
        """Stop the role and close the node's host (peers see the connection drop)."""
        self.scope.cancel()


async def _live_node(i: int, root: Path, boot: list[str], cfg: dict[str, object],
                     task_status: trio.TaskStatus[LiveNode] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.CancelScope() as scope:
        reg = CollectorRegistry()
        bus = EventBus(reg)
        key = SigningKey(os.urandom(32))
        async with open_overlay(OverlayConfig(listen=LOCAL, bootstrap=boot, peers_low=8, dial_timeout=2.0),
                                key, bus, reg) as ov:
            (root / f"n{i}").mkdir()
            ctx = NodeContext(peer_id=ov.peer_id, identity=key, overlay=ov, events=bus, metrics=reg,
                              datadir=root / f"n{i}", genesis={}, region="eu")
            role = FlRole(ctx, FlConfig(data_seed=7, data_index=i, tick_interval=0.1,
                                        republish_interval=1.0, **cfg))  # type: ignore[arg-type]
            async with trio.open_nursery() as nursery:
                await nursery.start(role.run)
                task_status.started(LiveNode(role, scope))
                await trio.sleep_forever()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_aggregator_killed_mid_round_on_real_overlays(tmp_path: Path) -> None:
    """Five nodes; when round 2's plan is out, its elected aggregator's host is shut down.
    The participants cannot reach it and send to the first fallback, which completes the
    round from the last completed model; the session completes.

    A host cancelled this way leaves sockets unclosed (reported to the overlay's owner); they
    are collected at the end of this test so their warnings cannot land in another test."""
    try:
        await _killed_scenario(tmp_path)
    finally:
        gc.collect()


async def _killed_scenario(tmp_path: Path) -> None:
    with trio.fail_after(210):
        async with trio.open_nursery() as nursery:
            nodes: list[LiveNode] = []
            for i in range(5):
                boot = [nodes[0].role.ctx.overlay.listen_addrs()[0]] if nodes else []
                nodes.append(await nursery.start(_live_node, i, tmp_path, boot, {}))
            starter = nodes[0].role
            await wait_until(lambda: all(len([p for p in n.role.ctx.overlay.peers() if p.connected]) >= 2
                                         for n in nodes), 60)
            params = {"alpha": 0.5, "beta": 0.5, "max_samples": 300.0}
            # warm-up: each task process imports torch before the session (5 at once took
            # longer than opt-in plus a deadline at load 20: the session failed with "only 1
            # eligible candidates"); this test is about the killed aggregator
            async with trio.open_nursery() as warm:
                for n in nodes:
                    warm.start_soon(n.role.tasks.prepare, n.role._task_key("synthetic", params, 0))
            out = await starter.start(task="synthetic", rounds=4, min_participants=3, participants=5,
                                      deadline=4.0, local_epochs=2, lr=0.05, optin_seconds=3.0,
                                      task_params=params)
            sid = bytes.fromhex(out["session_id"])
            assert starter.core is not None
            sess = starter.core.sessions[sid]
            coord = sess.coordinator
            assert coord is not None
            victim: LiveNode | None = None
            while starter.core.status(sid)["state"] == "running":
                if victim is None and coord.plan is not None and coord.round_no >= 2 \
                        and coord.order and coord.order[0] != starter.ctx.peer_id:
                    victim = next(n for n in nodes if n.role.ctx.peer_id == coord.order[0])
                    killed_round = coord.round_no
                    victim.kill()
                await trio.sleep(0.02)
            st = starter.core.status(sid)
            assert st["state"] == "completed", st["reason"]
            if victim is not None:
                h = st["history"][killed_round - 1]
                dead = victim.role.ctx.peer_id
                assert h["aggregator"] != dead and dead not in h["accepted"] and dead in h["dropped"]
                assert len(h["accepted"]) >= 3
            else:   # the coordinator was elected in rounds 2 to 4 (about 1 run in 125)
                pytest.skip("the election never picked a non-coordinator aggregator after round 1")
            nursery.cancel_scope.cancel()


async def test_restarted_role_still_gets_gossip(tmp_path: Path) -> None:
    """The supervisor restarts a crashed role with a fresh instance on the same overlay; the
    overlay keeps the first gossip handler, which forwards to the running instance."""
    async with fl_nodes(2, tmp_path) as roles:
        ctx = roles[1].ctx
        await wait_until(lambda: all(len([p for p in r.ctx.overlay.peers() if p.connected]) >= 1
                                     for r in roles), 60)
        async with trio.open_nursery() as nursery:
            again = FlRole(ctx, FlConfig(data_seed=7, data_index=1, tick_interval=0.1))
            await nursery.start(again.run)
            out = await roles[0].start(task="synthetic", rounds=1, min_participants=2,
                                       participants=2, deadline=10.0, optin_seconds=2.0,
                                       task_params={"max_samples": 100})
            sid = bytes.fromhex(out["session_id"])
            assert again.core is not None
            await wait_until(lambda: sid in again.core.sessions, 20)
            nursery.cancel_scope.cancel()


async def test_three_nodes_secure_aggregation_over_real_streams(tmp_path: Path) -> None:
    """secagg=true on real overlays: every round's updates travel only as SecAgg messages on
    the secagg stream (no update stream traffic), and the session completes."""
    async with fl_nodes(3, tmp_path) as roles:
        await wait_until(lambda: all(len([p for p in r.ctx.overlay.peers() if p.connected]) >= 1
                                     for r in roles), 60)
        out = await roles[0].start(task="synthetic", rounds=2, min_participants=2, participants=3,
                                   deadline=15.0, local_epochs=2, lr=0.05, optin_seconds=5.0,
                                   task_params={"alpha": 0.5, "beta": 0.5, "max_samples": 300},
                                   secagg=True)
        sid = out["session_id"]
        await wait_until(lambda: roles[0].core is not None and
                         roles[0].core.status(bytes.fromhex(sid))["state"] != "running", 90)
        st = await roles[0].status(sid, verbose=True)
        secagg_bytes = sum((r.ctx.metrics.get_sample_value("fognode_fl_bytes_received_total",
                                                           {"stream": "secagg"}) or 0) for r in roles)
        update_bytes = sum((r.ctx.metrics.get_sample_value("fognode_fl_bytes_received_total",
                                                           {"stream": "update"}) or 0) for r in roles)
        refused = []
        try:
            await roles[0].start(task="synthetic", strategy="median", secagg=True)
        except RpcError as e:
            refused = [e.code, e.message]

    assert st["state"] == "completed", st
    assert [h["round"] for h in st["history"]] == [1, 2]
    assert all(len(h["accepted"]) >= 2 for h in st["history"]), st["history"]
    assert secagg_bytes > 0 and update_bytes == 0
    assert refused[0] == 507 and "robust" in refused[1]
