"""The `fl` role on real libp2p overlays (TCP on 127.0.0.1, Noise, Yamux, GossipSub) in one
process: gossip control plane, update and model streams, worker-thread training, RPC handlers
called directly (the daemon does not list the role yet: see the report)."""
from __future__ import annotations

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
from fognode.node.protocol import NodeContext
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
    async with fl_nodes(3, tmp_path) as roles:
        await wait_until(lambda: all(len([p for p in r.ctx.overlay.peers() if p.connected]) >= 1
                                     for r in roles), 20)
        events = roles[1].ctx.events.subscribe("test", [TrainingRoundStarted, TrainingRoundCompleted])
        out = await roles[0].start(task="synthetic", rounds=3, min_participants=2, participants=3,
                                   deadline=15.0, local_epochs=2, lr=0.05, optin_seconds=3.0,
                                   task_params={"alpha": 0.5, "beta": 0.5, "max_samples": 300},
                                   wire_dtype="float16")
        sid = out["session_id"]
        await wait_until(lambda: roles[0].core is not None and
                         roles[0].core.status(bytes.fromhex(sid))["state"] != "running", 90)
        st = await roles[0].status(sid)
        assert st["state"] == "completed", st
        assert [h["round"] for h in st["history"]] == [1, 2, 3]
        assert all(len(h["accepted"]) >= 2 for h in st["history"])
        assert st["history"][-1]["loss"] < st["history"][0]["loss"]
        assert st["model_file"] and Path(st["model_file"]).exists()
        # a participant saw the rounds on its event bus
        seen = []
        while True:
            try:
                seen.append(events._recv.receive_nowait())
            except trio.WouldBlock:
                break
        assert any(isinstance(e, TrainingRoundStarted) for e in seen)
        # tensors went over the streams, in both directions
        reg = roles[0].ctx.metrics
        assert (reg.get_sample_value("fognode_fl_bytes_received_total", {"stream": "update"}) or 0) > 0 \
            or (reg.get_sample_value("fognode_fl_bytes_received_total", {"stream": "model"}) or 0) > 0
        assert reg.get_sample_value("fognode_fl_round_duration_seconds_count") == 3
        # export as a torch state dict; sessions list; errors
        target = tmp_path / "model.pt"
        exp = await roles[0].export(sid, str(target))
        assert exp["tensors"] == ["weight", "bias"]
        code = ("import torch, sys; sd = torch.load(sys.argv[1], weights_only=True); "
                "print(tuple(sd['weight'].shape), tuple(sd['bias'].shape))")
        res = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, check=True)
        assert res.stdout.strip() == "(10, 60) (10,)"
        assert [s["session_id"] for s in await roles[0].sessions()] == [sid]
        with pytest.raises(RpcError) as ei:
            await roles[0].status("00" * 32)
        assert ei.value.code == 503
        with pytest.raises(RpcError) as ei:
            await roles[0].export(sid, "relative/path.pt")
        assert ei.value.code == 500


async def test_start_validation_errors(tmp_path: Path) -> None:
    async with fl_nodes(1, tmp_path) as (role,):
        cases = [
            (dict(task="nope"), 501),
            (dict(task="synthetic", min_participants=5, participants=3), 500),
            (dict(task="synthetic", strategy="bogus"), 502),
            (dict(task="synthetic", strategy="krum", secagg=True), 507),
            (dict(task="synthetic", task_params={"alpha": -1.0}), 500),
            (dict(task="synthetic", dp_clip=1.0, dp_noise=0.0), 502),
        ]
        for kw, code in cases:
            with pytest.raises(RpcError) as ei:
                await role.start(**kw)  # type: ignore[arg-type]
            assert ei.value.code == code, (kw, ei.value.message)


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
