"""A peer's bad frames on py-libp2p's own protocols are charged to it (issue 10 item 5):
a hostile py-libp2p host on 127.0.0.1 sends oversized and undecodable pubsub RPCs and
identify pushes to a real overlay (node/p2pfix_peer_faults.py)."""
from __future__ import annotations

import logging
import os
import time

import pytest
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.events import EventBus
from fognode.node.host import Libp2pOverlay, OverlayConfig, open_overlay
from fognode.tools.bench.attacks import hostile_peer
from fognode.tools.bench.attacks.malformed_frames import (IDENTIFY_PUSH, MESHSUB,
                                                          send_bad_identify_pushes,
                                                          send_bad_varints, send_oversized_rpcs)
from tests.polling import wait_until

LOCAL = ["/ip4/127.0.0.1/tcp/0"]
ERRORS = "fognode_node_remote_protocol_errors_total"


def errors(ov: Libp2pOverlay, protocol: str) -> float:
    return ov.metrics.get_sample_value(ERRORS, {"protocol": protocol}) or 0.0


async def test_oversized_and_undecodable_frames_are_charged_to_the_sender(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    reg = CollectorRegistry()
    with trio.fail_after(90):
        async with open_overlay(OverlayConfig(listen=LOCAL, peers_low=0, max_message_size=65536),
                                SigningKey(os.urandom(32)), EventBus(reg), reg) as victim:
            async with hostile_peer(victim.listen_addrs()[0]) as evil:
                def charged() -> float:
                    return victim.violations.value(evil.peer_id, time.monotonic())

                # an RPC announcing more than max_message_size: reset and charged
                assert await send_oversized_rpcs(evil, 3, limit=65536) == 3
                await wait_until(lambda: errors(victim, MESHSUB) >= 3, timeout=30,
                                 what="3 oversized pubsub RPCs counted")
                assert charged() > 2.5           # (violations decay with a half-life)
                # a length prefix that is no varint
                assert await send_bad_varints(evil, 3) == 3
                await wait_until(lambda: errors(victim, MESHSUB) >= 6, timeout=30,
                                 what="3 bad varints counted")
                # identify pushes: undecodable and oversized
                assert await send_bad_identify_pushes(evil, 4) == 4
                await wait_until(lambda: errors(victim, IDENTIFY_PUSH) >= 4, timeout=30,
                                 what="4 bad identify pushes counted")
                assert charged() > 9
                assert victim._score(evil.peer_id) < victim.score_params.publish_threshold
                # an honest identify push (the hostile host's own) still updates the peerstore
                # and is not charged
                from libp2p.identity.identify_push.identify_push import push_identify_to_peer
                from libp2p.peer.id import ID
                before = errors(victim, IDENTIFY_PUSH)
                store, evil_id = victim.host.get_peerstore(), ID.from_base58(evil.peer_id)
                store.clear_addrs(evil_id)
                assert await push_identify_to_peer(evil.overlay.host,
                                                   ID.from_base58(victim.peer_id))
                await wait_until(lambda: bool(store.addrs(evil_id)), timeout=30,
                                 what="the honest push's addresses in the victim's peerstore")
                assert errors(victim, IDENTIFY_PUSH) == before
    mine = [r for r in caplog.records if evil.peer_id in r.getMessage()
            and r.name.startswith("fognode")]
    assert mine and all(r.levelno == logging.WARNING and r.exc_info is None for r in mine)
    assert len(mine) <= 4, [r.getMessage() for r in mine]   # one a minute per protocol
    assert "Traceback" not in caplog.text
