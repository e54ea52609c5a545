"""An update refused by its header (here: the aggregator does not know the session) is over
for the sender as soon as the refusal arrives, however large the update: the receiver never
reads the tensor, so a sender that kept writing it would wait on flow control until its
stream timeout (transfer/updates.py `send_update`). Two real libp2p overlays on 127.0.0.1."""
from __future__ import annotations

import logging
import os
import socket
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
import pytest
import trio
from libp2p.peer.id import ID
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.events import EventBus
from fognode.node.host import OverlayConfig, open_overlay
from fognode.node.overlay import Overlay
from fognode.protocols.fl.actions import Action, SendUpdate
from fognode.protocols.fl.config import FlConfig
from fognode.protocols.fl.messages import DeviceFacts
from fognode.protocols.fl.metrics import FlMetrics
from fognode.protocols.fl.session.core import FlCore
from fognode.protocols.fl.session.selection import DeviceCandidate
from fognode.protocols.fl.transfer.sessions import TransferSessions
from fognode.protocols.fl.transfer.streams import UPDATE_STREAM, Link
from fognode.protocols.fl.transfer.updates import send_update, serve_update

LOCAL = ["/ip4/127.0.0.1/tcp/0"]


def _link(ov: Overlay, key: SigningKey, reg: CollectorRegistry, cfg: FlConfig) -> Link:
    """The transfer's collaborators on `ov` around a real core that runs no session."""
    core = FlCore(ov.peer_id, key, tasks_enabled=set(), facts=DeviceFacts(),
                  candidate_view=lambda p, f: DeviceCandidate(p, f.region, f.cores, f.memory_mb,
                                                              f.charging, True))
    done: list[Action] = []
    metrics = FlMetrics.create(reg)
    return Link(overlay=ov, config=cfg, metrics=metrics, core=core, apply=done.extend,
                now=trio.current_time, closed=lambda: False,
                sessions=TransferSessions(ov, metrics, idle=cfg.transfer_session_idle))


@asynccontextmanager
async def _aggregator_and_participant() -> AsyncIterator[tuple[Any, Any, Link]]:
    """Two overlays: an aggregator serving updates (its core runs no session, so it refuses
    every update as of an unknown session) and a connected participant, with the participant's
    transfer link."""
    cfg = FlConfig(stream_timeout=60.0)
    keys = [SigningKey(os.urandom(32)) for _ in range(2)]
    regs = [CollectorRegistry() for _ in range(2)]
    async with open_overlay(OverlayConfig(listen=LOCAL), keys[0], EventBus(regs[0]), regs[0]) as agg, \
            open_overlay(OverlayConfig(listen=LOCAL), keys[1], EventBus(regs[1]), regs[1]) as part:
        served = _link(agg, keys[0], regs[0], cfg)
        agg.set_stream_handler(UPDATE_STREAM, lambda st: serve_update(served, st))
        await part.connect(agg.listen_addrs()[0])
        yield agg, part, _link(part, keys[1], regs[1], cfg)


async def test_a_large_update_refused_by_its_header_ends_at_the_refusal(
        caplog: pytest.LogCaptureFixture) -> None:
    mib = 8     # far over a stream's flow-control window
    async with _aggregator_and_participant() as (agg, part, sender):
        delta = np.ones((mib << 20) // 4, dtype=np.float32)
        act = SendUpdate(b"s" * 32, 1, 0, 0, agg.peer_id, 10, 1.0, 0.5, 0.9, delta)
        caplog.set_level(logging.INFO, logger="fognode.fl")
        t0 = trio.current_time()
        with trio.fail_after(90):
            await send_update(sender, act)
        took = trio.current_time() - t0
    lines = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert lines and lines[0].endswith("not delivered: unknown session"), lines
    assert took < 20.0, took


async def test_a_refusal_that_cuts_the_chunk_pump_mid_write_keeps_the_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    """The refusal arrives while the sender's chunk pump waits for the kernel to take a write
    (a small send buffer on the participant's socket): the pump is cancelled mid-write. The
    connection to the aggregator stays up (node/p2pfix_noiseio.py, "A cancelled write": it
    used to drop, and the participant's retry then failed "No valid connections available",
    the FL benchmark's 5-7 s rounds), and the retry is refused again over the same connection."""
    async with _aggregator_and_participant() as (agg, part, sender):
        (conn,) = part.host.get_network().get_connections(ID.from_base58(agg.peer_id))
        sock = conn.muxed_conn.secured_conn._tcp.stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        delta = np.ones((4 << 20) // 4, dtype=np.float32)
        act = SendUpdate(b"s" * 32, 1, 0, 0, agg.peer_id, 10, 1.0, 0.5, 0.9, delta)
        caplog.set_level(logging.INFO, logger="fognode.fl")
        with trio.fail_after(60):
            for _ in range(3):
                await send_update(sender, act)
                await trio.sleep(0.2)
                assert part.host.get_network().get_connections(ID.from_base58(agg.peer_id)) == [conn]
                assert not conn.is_closed
    lines = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(lines) == 3 and all(x.endswith("not delivered: unknown session") for x in lines), lines
