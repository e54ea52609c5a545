"""Model serving and fetching (transfer/models.py, transfer/encoded.py) between two real libp2p
overlays on 127.0.0.1: a node encodes (checks, hashes, chunks) a model it serves once, not once
per fetch, and every fetch gets the same bytes; a fetched model whose bytes do not hash to the
model asked for is refused (the decoder's check of the float32 bytes is the model hash check)
and the next source is tried; a served model's header carries its model hash, the params
are not hashed again to serve them."""
from __future__ import annotations

import os

import numpy as np
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.events import EventBus
from fognode.node.host import OverlayConfig, open_overlay
from fognode.node.overlay import Overlay
from fognode.protocols.fl.actions import Action, FetchModel
from fognode.protocols.fl.config import FlConfig
from fognode.protocols.fl.messages import DeviceFacts
from fognode.protocols.fl.metrics import FlMetrics
from fognode.protocols.fl.session.core import FlCore
from fognode.protocols.fl.session.selection import DeviceCandidate
from fognode.protocols.fl.session.state import ModelBundle
from fognode.protocols.fl.transfer.encoded import EncodedModels
from fognode.protocols.fl.transfer.models import fetch_model
from fognode.protocols.fl.transfer.sessions import TransferSessions
from fognode.protocols.fl.transfer.streams import XFER_STREAM, Link
from fognode.protocols.fl.transfer.tensors import encode_tensor, params_hash
from fognode.protocols.fl.transfer.xfer import serve_xfer

LOCAL = ["/ip4/127.0.0.1/tcp/0"]
SID = b"s" * 32
SIZE = 300_000          # 1.2 MB of float32: two 1 MiB chunks


class Core(FlCore):
    """A real core without sessions that serves `models` (hash -> bundle, possibly a lying
    one), expects params of SIZE and records the models fetched and the failures."""

    def __init__(self, me: str, key: SigningKey, models: dict[bytes, ModelBundle]) -> None:
        super().__init__(me, key, tasks_enabled=set(), facts=DeviceFacts(),
                         candidate_view=lambda p, f: DeviceCandidate(
                             p, f.region, f.cores, f.memory_mb, f.charging, True))
        self.models = models
        self.fetched: list[np.ndarray] = []
        self.failed: list[str] = []

    def model_for(self, sid: bytes, model_hash: bytes) -> ModelBundle | None:
        return self.models.get(model_hash) if sid == SID else None

    def expected_shape(self, sid: bytes) -> tuple[int, ...] | None:
        return (SIZE,)

    def model_fetched(self, sid: bytes, model_hash: bytes, params: np.ndarray,
                      state: dict[str, np.ndarray], now: float) -> list[Action]:
        self.fetched.append(params)
        return []

    def model_fetch_failed(self, sid: bytes, model_hash: bytes, reason: str, now: float) -> list[Action]:
        self.failed.append(reason)
        return []


def link_of(ov: Overlay, key: SigningKey, models: dict[bytes, ModelBundle]) -> Link:
    cfg = FlConfig(stream_timeout=30.0)
    metrics = FlMetrics.create(CollectorRegistry())
    return Link(overlay=ov, config=cfg, metrics=metrics, core=Core(ov.peer_id, key, models),
                apply=lambda actions: None, now=trio.current_time, closed=lambda: False,
                sessions=TransferSessions(ov, metrics, idle=cfg.transfer_session_idle))


async def test_a_served_model_is_encoded_once_and_a_lying_source_is_passed_over() -> None:
    rng = np.random.default_rng(7)
    model = rng.standard_normal(SIZE).astype(np.float32)
    other = rng.standard_normal(SIZE).astype(np.float32)
    h = params_hash(model)
    keys = [SigningKey(os.urandom(32)) for _ in range(3)]
    regs = [CollectorRegistry() for _ in range(3)]
    with trio.fail_after(60):
        async with open_overlay(OverlayConfig(listen=LOCAL), keys[0], EventBus(regs[0]), regs[0]) as good, \
                open_overlay(OverlayConfig(listen=LOCAL), keys[1], EventBus(regs[1]), regs[1]) as liar, \
                open_overlay(OverlayConfig(listen=LOCAL), keys[2], EventBus(regs[2]), regs[2]) as cli:
            served = link_of(good, keys[0], {h: ModelBundle(model)})
            lying = link_of(liar, keys[1], {h: ModelBundle(other)})    # another model under h
            good.set_stream_handler(XFER_STREAM, lambda st: serve_xfer(served, st))
            liar.set_stream_handler(XFER_STREAM, lambda st: serve_xfer(lying, st))
            await cli.connect(good.listen_addrs()[0])
            await cli.connect(liar.listen_addrs()[0])
            link = link_of(cli, keys[2], {})
            core = link.core
            assert isinstance(core, Core)
            for _ in range(3):
                await fetch_model(link, FetchModel(SID, h, (good.peer_id,)))
            assert len(core.fetched) == 3 and all(np.array_equal(p, model) for p in core.fetched)
            first = served.encoded.get(SID, h, ModelBundle(other), served.config.chunk_size)
            # the cached encoding, not one of the bundle passed
            assert b"".join(bytes(c) for c in first[0][2]) == model.tobytes()
            await fetch_model(link, FetchModel(SID, h, (liar.peer_id,)))
            # the liar's header names the model hash (a held model's params are not hashed
            # again to serve them), so its bytes fail the decoder's hash check
            assert len(core.failed) == 1 and core.failed[0].startswith(f"{liar.peer_id}: TensorRejected") \
                and "tensor rejected (hash)" in core.failed[0], core.failed
            await fetch_model(link, FetchModel(SID, h, (liar.peer_id, good.peer_id)))
            assert len(core.fetched) == 4 and np.array_equal(core.fetched[-1], model)
            assert len(core.failed) == 1      # the liar first or not: the good source served it


def test_served_params_carry_the_model_hash_without_hashing_again() -> None:
    rng = np.random.default_rng(8)
    model = rng.standard_normal(SIZE).astype(np.float32)
    state = {"m": rng.standard_normal(10).astype(np.float32)}
    h = params_hash(model)
    enc = EncodedModels()
    got = enc.get(SID, h, ModelBundle(model, state), 1 << 20)
    assert [n for n, _, _ in got] == ["params", "m"]
    th, chunks = encode_tensor(model, chunk_size=1 << 20)
    assert got[0][1] == th and [bytes(c) for c in got[0][2]] == [bytes(c) for c in chunks]
    assert got[1][1] == encode_tensor(state["m"], chunk_size=1 << 20)[0]   # state: hashed
    # the model hash is taken as the params' hash: no second BLAKE2b of the same bytes
    assert enc.get(b"t" * 32, b"\1" * 32, ModelBundle(model), 1 << 20)[0][1].hash == b"\1" * 32
