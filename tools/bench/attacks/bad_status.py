"""Attack: monitor statuses that do not decode, each from a fresh throw-away origin.

A hostile peer seals, for each payload, one gossip envelope with a fresh Ed25519 key (the
code the daemon itself uses, via gap_bomb.forged_pubsub_messages) on the monitor's status topic
and writes them straight onto its pubsub stream to the victim. The envelopes and libp2p
signatures are valid, so only the content check can refuse them; charging the origin reaches
nobody (the key is never used again). A defended victim refuses them before relaying and
charges the peer that relayed them to it, the hostile peer (issue 10 item 5,
protocols/monitor/protocol.py `_check_status`). Used by tests/monitor/test_status_charges.py.
"""
from __future__ import annotations

import os
import time

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from nacl.signing import SigningKey

from fognode.node.peerid import peer_id_from_pubkey
from fognode.tools.bench.attacks import HostilePeer
from fognode.tools.bench.attacks.gap_bomb import STATUS_TOPIC, forged_pubsub_messages


async def send_statuses(peer: HostilePeer, payloads: list[bytes], *,
                        timeout: float = 30.0) -> list[str]:
    """Write one status per payload, each from a fresh origin (seq 1), in one RPC on the
    pubsub stream to the victim; returns the origins' peer ids. trio.TooSlowError if the
    pubsub stream does not open within `timeout` seconds; RuntimeError if the write fails."""
    epoch = time.time_ns() // 1_000_000
    msgs: list[object] = []
    origins = []
    for data in payloads:
        key = SigningKey(os.urandom(32))
        origins.append(peer_id_from_pubkey(bytes(key.verify_key)))
        msgs.extend(forged_pubsub_messages(key, STATUS_TOPIC, (1,), epoch, data))
    victim = ID.from_base58(peer.target_peer)
    pubsub = peer.overlay.pubsub
    with trio.fail_after(timeout):
        while victim not in pubsub.peers:        # the pubsub stream opens after connect
            await trio.sleep(0.02)
    if not await pubsub.write_msg(pubsub.peers[victim],
                                  rpc_pb2.RPC(publish=msgs)):  # type: ignore[arg-type]
        raise RuntimeError("could not write the statuses on the pubsub stream")
    return origins
