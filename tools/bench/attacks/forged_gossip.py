"""Gossip written straight onto a victim's pubsub stream, each message from an origin key the
attacker chooses (usually a fresh throw-away key per message).

`send_forged(peer, items)` seals one fognode envelope per (origin key, topic, payload) with the
code the daemon itself uses (gap_bomb.forged_pubsub_messages: valid envelope, valid libp2p
signature, seq 1 of a fresh epoch) and writes them all in one RPC on the hostile peer's pubsub
stream to the victim, whatever its mesh says. Only a topic's content check can refuse them.
Used by the content-check tests (monitor statuses via bad_status.py, ledger certificates,
registry records and observations).

As an attack (`attack`, for tools/bench/attack.py): certificate batches that do not decode,
each from a fresh throw-away origin, `per_rpc` to an RPC every `interval` seconds. Without
content checks the victim relayed every one to its peers and charged the origins, which no
charge reaches; with them it refuses the first ones before relay, charges the hostile peer,
graylists it and then ignores its RPCs unread (`flood` does the same on any topic).
"""
from __future__ import annotations

import os
import time

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from nacl.signing import SigningKey

from fognode.node.wire import pack

from fognode.node.peerid import peer_id_from_pubkey
from fognode.tools.bench.attacks import HostilePeer, hostile_peer
from fognode.tools.bench.attacks.gap_bomb import forged_pubsub_messages
from fognode.tools.bench.attacks.invalid_gossip import CERT_TOPIC


async def send_forged(peer: HostilePeer, items: list[tuple[SigningKey, str, bytes]], *,
                      timeout: float = 30.0) -> list[str]:
    """Write one message per (origin key, topic, payload), in this order and in one RPC (a
    victim decides whether to read an RPC of a peer it graylists once per RPC) on the pubsub
    stream to the victim; returns the origins' peer ids. trio.TooSlowError if the pubsub
    stream does not open within `timeout` seconds; RuntimeError if the write fails."""
    epoch = time.time_ns() // 1_000_000
    msgs: list[object] = []
    for key, topic, data in items:
        msgs.extend(forged_pubsub_messages(key, topic, (1,), epoch, data))
    victim = ID.from_base58(peer.target_peer)
    pubsub = peer.overlay.pubsub
    with trio.fail_after(timeout):
        while victim not in pubsub.peers:        # the pubsub stream opens after connect
            await trio.sleep(0.02)
    if not await pubsub.write_msg(pubsub.peers[victim],
                                  rpc_pb2.RPC(publish=msgs)):  # type: ignore[arg-type]
        raise RuntimeError(f"could not write {len(msgs)} messages on the pubsub stream")
    return [peer_id_from_pubkey(bytes(k.verify_key)) for k, _, _ in items]


async def flood(target: str, *, seconds: float, topic: str, payload: bytes, per_rpc: int = 10,
                interval: float = 0.1) -> dict[str, float]:
    """Write `payload` on `topic` from fresh origins, `per_rpc` messages to an RPC every
    `interval` seconds, for `seconds`; returns the messages written and failed writes."""
    out = {"messages": 0.0, "write_failures": 0.0}
    with trio.move_on_after(seconds):
        async with hostile_peer(target) as peer:
            while True:
                try:
                    await send_forged(peer, [(SigningKey(os.urandom(32)), topic, payload)
                                             for _ in range(per_rpc)], timeout=seconds)
                    out["messages"] += per_rpc
                except RuntimeError:     # the victim closed our pubsub stream
                    out["write_failures"] += 1
                await trio.sleep(interval)
    return out


async def attack(target: str, *, seconds: float) -> dict[str, float]:
    """Certificate batches that do not decode, from throw-away origins (module doc)."""
    return await flood(target, seconds=seconds, topic=CERT_TOPIC, payload=pack({"v": 1}))
