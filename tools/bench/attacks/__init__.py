"""Hostile peers, for the hardening tests and `tools/bench/attack.py`.

`hostile_peer(target)` yields a `HostilePeer`: a py-libp2p host of its own (our overlay's
hardened host, with a fresh identity and no bootstrap) connected to the daemon at `target`
(a multiaddr ending in /p2p/<peer id>). It reaches below the framing layer on purpose:
`raw_stream` negotiates a protocol and hands back py-libp2p's stream, so an attack can send
half a frame, nothing at all, or garbage. Each attack lives in a module of its own in this
package, as an async function that a test and the benchmark both call.

Only 127.0.0.1 or addresses in network namespaces a test made are ever targets.
"""
from __future__ import annotations

import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.events import EventBus
from fognode.node.host import Libp2pOverlay, OverlayConfig, open_overlay

LOCAL = ["/ip4/127.0.0.1/tcp/0"]


@dataclass
class HostilePeer:
    """One attacking peer, connected to `target_peer`."""

    overlay: Libp2pOverlay
    identity: SigningKey
    target_peer: str

    @property
    def peer_id(self) -> str:
        return self.overlay.peer_id

    async def raw_stream(self, protocol_id: str) -> Any:
        """A py-libp2p stream to the target speaking `protocol_id` (no framing). Raises
        whatever py-libp2p raises when the target refuses or resets."""
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID
        return await self.overlay.host.new_stream(ID.from_base58(self.target_peer),
                                                  [TProtocol(protocol_id)])


@asynccontextmanager
async def hostile_peer(target: str, *, identity: SigningKey | None = None,
                       **overlay: Any) -> AsyncIterator[HostilePeer]:
    """Start a peer on 127.0.0.1 with a fresh identity (or `identity`), connect it to
    `target`, yield it; closed on exit. `overlay` overrides OverlayConfig fields. Raises
    DialError when the target cannot be reached."""
    key = identity or SigningKey(os.urandom(32))
    reg = CollectorRegistry()
    cfg = OverlayConfig(listen=overlay.pop("listen", LOCAL), peers_low=0, **overlay)
    async with open_overlay(cfg, key, EventBus(reg), reg) as ov:
        pid = await ov.connect(target)
        yield HostilePeer(ov, key, pid)
