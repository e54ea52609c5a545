"""Attack: a mesh peer that sends invalid gossip and garbage pubsub streams.

The hostile peer subscribes to a topic the victim serves (the ledger's certificate topic by
default), waits until the victim has GRAFTed it into that topic's mesh, then sends invalid
messages of three kinds (libp2p-signed messages whose payload is not a fognode envelope,
envelopes whose Ed25519 signature fails, and messages whose libp2p signature fails), and opens
`garbage_streams` streams on `/meshsub/1.2.0` that carry bytes that are no protobuf RPC. A
defended victim PRUNEs it from the mesh (its score drops below 0) and then graylists it (its
RPCs are ignored); `attack` reports whether and when the PRUNE arrived.

Messages go on fresh `/meshsub/1.2.0` streams of their own, so they reach the victim whatever
its mesh says. The building blocks (`join_mesh`, `send_invalid`, `send_valid`,
`send_garbage_streams`, `pruned`) are used
by tests/node/test_peerscore.py to check each stage; `attack` is the benchmark's entry point
(tools/bench/attack.py).
"""
from __future__ import annotations

import os
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.utils.varint import encode_varint_prefixed

from fognode.node.gossip import KIND_MESSAGE, seal
from fognode.tools.bench.attacks import HostilePeer, hostile_peer

CERT_TOPIC = "fognode/ledger/certs/1"     # ledger/service.py: every daemon serves it
MESHSUB = "/meshsub/1.2.0"
KINDS = ("libp2p_signature", "payload", "envelope_signature")   # the order `attack` sends


async def join_mesh(peer: HostilePeer, topic: str, *, timeout: float) -> Any:
    """Subscribe raw (no fognode validator) and wait until the victim is in our mesh for
    `topic` (GRAFT exchanged). Returns the libp2p subscription. trio.TooSlowError after
    `timeout` seconds."""
    sub = await peer.overlay.pubsub.subscribe(topic)
    victim = ID.from_base58(peer.target_peer)
    with trio.fail_after(timeout):
        while victim not in peer.overlay.gossipsub.mesh.get(topic, set()):
            await trio.sleep(0.05)
    return sub


def in_mesh(peer: HostilePeer, topic: str) -> bool:
    """Whether the victim is in our mesh for `topic` (a PRUNE from it removes it)."""
    return ID.from_base58(peer.target_peer) in peer.overlay.gossipsub.mesh.get(topic, set())


async def pruned(peer: HostilePeer, topic: str, *, timeout: float) -> bool:
    """Wait up to `timeout` seconds for the victim to PRUNE us from `topic`'s mesh."""
    with trio.move_on_after(timeout):
        while in_mesh(peer, topic):
            await trio.sleep(0.05)
        return True
    return False


def signed_message(peer: HostilePeer, topic: str, data: bytes) -> rpc_pb2.Message:
    """A pubsub message from `peer`, signed as libp2p signs (so only `data` can be wrong)."""
    msg = rpc_pb2.Message(from_id=peer.overlay.host.get_id().to_bytes(), data=data,
                          seqno=os.urandom(8), topicIDs=[topic])
    key = peer.overlay.pubsub.sign_key
    assert key is not None
    msg.signature = key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
    msg.key = peer.overlay.host.get_public_key().serialize()
    return msg


async def send_messages(peer: HostilePeer, msgs: list[rpc_pb2.Message]) -> None:
    """Write `msgs` in one RPC on a fresh `/meshsub/1.2.0` stream (whatever the mesh says)."""
    stream = await peer.raw_stream(MESHSUB)
    try:
        await stream.write(encode_varint_prefixed(rpc_pb2.RPC(publish=msgs).SerializeToString()))
        await trio.sleep(0.05)       # let the victim read it before the stream goes
    finally:
        await stream.close()


async def send_valid(peer: HostilePeer, topic: str, seq: int, data: bytes) -> None:
    """A message that is valid in every respect (fognode envelope, libp2p signature)."""
    env = seal(peer.identity, KIND_MESSAGE, 7, topic, seq, data)
    await send_messages(peer, [signed_message(peer, topic, env.raw)])


async def send_invalid(peer: HostilePeer, topic: str, kind: str) -> None:
    """Send one invalid message of `kind` (one of KINDS) on `topic` to the victim."""
    if kind == "payload":                # libp2p-signed, but not a fognode envelope
        msg = signed_message(peer, topic, b"\x92garbage" + os.urandom(32))
    elif kind == "envelope_signature":   # a fognode envelope whose signature fails
        raw = bytearray(seal(peer.identity, KIND_MESSAGE, 7, topic, 1, b"forged").raw)
        raw[-1] ^= 0xFF                  # the signature is the last field packed
        msg = signed_message(peer, topic, bytes(raw))
    elif kind == "libp2p_signature":     # a valid envelope, a libp2p signature that fails
        env = seal(peer.identity, KIND_MESSAGE, 7, topic, 1, b"forged")
        msg = signed_message(peer, topic, env.raw)
        msg.signature = os.urandom(64)
    else:
        raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
    await send_messages(peer, [msg])


async def send_garbage_streams(peer: HostilePeer, n: int, *, protocol: str = MESHSUB,
                               sent: list[Any] | None = None) -> int:
    """Open `n` streams on `protocol` carrying bytes that are no valid message; returns how
    many the victim accepted to open (appended to `sent` when given, for `read_by_victim`)."""
    opened = 0
    for _ in range(n):
        try:
            stream = await peer.raw_stream(protocol)
        except Exception:   # the victim refused the stream or dropped the connection
            continue
        opened += 1
        try:
            await stream.write(b"\x10" + b"\xff" * 16)   # a 16-byte RPC that does not parse
            await stream.close()
            if sent is not None:
                sent.append(stream)
        except Exception:   # reset by the victim: that is its defence working
            pass
    return opened


async def read_by_victim(streams: list[Any], *, timeout: float) -> None:
    """Wait (at most `timeout` s) until the victim has ended each garbage stream (it resets
    one once it has read its garbage). Leaving earlier ends the connection under streams a
    loaded victim has not read yet, which it then sees as a clean close, not as garbage."""
    with trio.move_on_after(timeout):
        for stream in streams:
            try:
                while await stream.read(64):
                    pass
            except Exception:   # the victim's reset: it has read the garbage
                pass


async def attack(target: str, *, seconds: float, topic: str = CERT_TOPIC,
                 invalid_rounds: int = 1, garbage_streams: int = 17) -> dict[str, float]:
    """Join `topic`'s mesh on `target`, send `invalid_rounds` of each invalid kind and
    `garbage_streams` garbage streams, then wait for the PRUNE and for the victim to have
    read the garbage (`read_by_victim`, after the PRUNE: the timing is unchanged); all within
    `seconds`."""
    out: dict[str, float] = {"joined_mesh": 0.0, "invalid_sent": 0.0, "garbage_streams": 0.0,
                             "pruned": 0.0, "seconds_to_prune": -1.0}
    deadline = trio.current_time() + seconds
    with trio.move_on_at(deadline):
        async with hostile_peer(target) as peer:
            await join_mesh(peer, topic, timeout=seconds)
            out["joined_mesh"] = 1.0
            t0 = trio.current_time()
            for _ in range(invalid_rounds):
                for kind in KINDS:
                    await send_invalid(peer, topic, kind)
                    out["invalid_sent"] += 1
            sent: list[Any] = []
            out["garbage_streams"] = float(await send_garbage_streams(peer, garbage_streams,
                                                                      sent=sent))
            if await pruned(peer, topic, timeout=max(0.0, deadline - trio.current_time())):
                out["pruned"] = 1.0
                out["seconds_to_prune"] = trio.current_time() - t0
            await read_by_victim(sent, timeout=max(0.0, deadline - trio.current_time()))
    return out
