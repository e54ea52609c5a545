"""Test helpers for real in-process overlays (node/host.py `open_overlay` on 127.0.0.1): a
metric read from an overlay's own registry, and a lone overlay that keeps what one topic
delivers (the victim of the attack tests)."""
from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.events import EventBus
from fognode.node.host import OverlayConfig, open_overlay
from fognode.node.overlay import GossipMessage


def metric(ov: Any, name: str, **labels: str) -> float:
    """The overlay's sample `name{labels}`, 0 when it was never counted."""
    v = ov.metrics.get_sample_value(name, labels)
    return 0.0 if v is None else v


@asynccontextmanager
async def receiving_overlay(topic: str) -> AsyncIterator[tuple[Any, list[GossipMessage]]]:
    """A fresh overlay listening on 127.0.0.1 (no bootstrap, peers_low 0) subscribed to
    `topic`, and the list its deliveries are appended to."""
    got: list[GossipMessage] = []

    async def keep(m: GossipMessage) -> None:
        got.append(m)

    reg = CollectorRegistry()
    async with open_overlay(OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], peers_low=0),
                            SigningKey(os.urandom(32)), EventBus(reg), reg) as ov:
        await ov.subscribe(topic, keep)
        yield ov, got
