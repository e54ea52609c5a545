"""Attack: frames that py-libp2p 0.8.1's own handlers refuse, on `/meshsub/1.2.0` and
`/ipfs/id/push/1.0.0`.

Each function opens `n` fresh streams from a hostile peer (tools/bench/attacks/__init__.py) and
writes one bad frame on each: a pubsub RPC whose varint length prefix claims more than the
victim accepts (`send_oversized_rpcs`), a length prefix that is no varint at all (ten bytes
with the continuation bit set: `send_bad_varints`), and identify-push messages that are too
large or do not parse as protobuf (`send_bad_identify_pushes`). A defended victim resets each
stream and charges the peer for each one (issue 10 item 5): before node/p2pfix_peer_faults.py,
0.8.1 caught these itself, logged them and charged nobody. Each returns how many streams the
victim accepted to open (it may refuse some once the peer is graylisted or over its limits).
Used by tests/node/test_peer_faults.py. `attack` (tools/bench/attack.py's window) sends the
three kinds in rounds of `per_round` streams each from one hostile peer until `seconds` pass or
the victim stops accepting its streams.
"""
from __future__ import annotations

import trio
from libp2p.utils.varint import encode_uvarint

from fognode.node.gossip_settings import GossipSettings
from fognode.tools.bench.attacks import HostilePeer, hostile_peer

MESHSUB = "/meshsub/1.2.0"
IDENTIFY_PUSH = "/ipfs/id/push/1.0.0"
BAD_VARINT = b"\xff" * 10 + b"\x01"      # 11 bytes with the continuation bit: over 64 bits


async def send_frames(peer: HostilePeer, protocol: str, frames: list[bytes]) -> int:
    """One stream on `protocol` per frame, the frame written, the stream closed; returns how
    many streams the victim accepted to open."""
    opened = 0
    for frame in frames:
        try:
            stream = await peer.raw_stream(protocol)
        except Exception:   # the victim refused the stream or dropped the connection
            continue
        opened += 1
        try:
            await stream.write(frame)
            await stream.close()
        except Exception:   # reset by the victim: its defence working
            pass
    return opened


async def send_oversized_rpcs(peer: HostilePeer, n: int, *, limit: int) -> int:
    """`n` pubsub RPCs announcing `limit + 1` bytes (the victim's max_message_size is
    `limit`), each followed by a few bytes of body."""
    return await send_frames(peer, MESHSUB, [encode_uvarint(limit + 1) + b"\0" * 64] * n)


async def send_bad_varints(peer: HostilePeer, n: int) -> int:
    """`n` pubsub streams whose length prefix is no varint."""
    return await send_frames(peer, MESHSUB, [BAD_VARINT] * n)


async def send_bad_identify_pushes(peer: HostilePeer, n: int) -> int:
    """`n` identify pushes, alternately a frame that is no protobuf Identify and one that
    announces 2 MiB."""
    frames = [b"\x10" + b"\xff" * 16 if i % 2 == 0 else encode_uvarint(2 << 20) + b"\0" * 64
              for i in range(n)]
    return await send_frames(peer, IDENTIFY_PUSH, frames)


async def attack(target: str, *, seconds: float, per_round: int = 8) -> dict[str, float]:
    """Rounds of oversized RPCs, bad varints and bad identify pushes against `target` (a
    multiaddr ending in /p2p/<peer id>) for at most `seconds`; returns how many frames were
    sent and how many streams the victim accepted. Stops early once a whole round is refused
    (the victim has graylisted or dropped the peer: its defence working)."""
    limit = GossipSettings().max_message_size
    out = {"rounds": 0.0, "frames_sent": 0.0, "streams_accepted": 0.0, "refused_round": 0.0}
    with trio.move_on_after(seconds):
        async with hostile_peer(target) as peer:
            while True:
                accepted = (await send_oversized_rpcs(peer, per_round, limit=limit)
                            + await send_bad_varints(peer, per_round)
                            + await send_bad_identify_pushes(peer, per_round))
                out["rounds"] += 1
                out["frames_sent"] += 3 * per_round
                out["streams_accepted"] += accepted
                if accepted == 0:
                    out["refused_round"] = 1.0
                    break
                await trio.sleep(0.1)
    return out
