"""A host's access gate and the accessor's shard fetch over real TCP on 127.0.0.1 (host.py's
AccessGate, client.py's fetch_shard): a paid request gets its verified shard; an unpaid one,
a replayed payment past its uses and garbage get a refusal naming the rule; a host that
returns other bytes than the manifest names is caught by the accessor."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.ledger.amounts import format_amount
from fognode.protocols.onion.address import address_from_pubkey
from fognode.protocols.onion.hosting.accessor import HostedAccessor, fetch_shard
from fognode.protocols.onion.hosting.errors import HostingError
from fognode.protocols.onion.hosting.fees import AccessRequest
from fognode.protocols.onion.hosting.framing import FrameReader, send_frame, send_obj
from fognode.protocols.onion.hosting.host import AccessGate
from fognode.protocols.onion.hosting.manifest import Manifest, ShardRef, service_id
from fognode.protocols.onion.hosting.metrics import HostingMetrics
from fognode.protocols.onion.hosting.levels import LEVELS
from fognode.protocols.onion.hosting.shards import ShardMismatch, join, split

from tests.onion.hosting_helpers import EPOCH, FEE, HOST_KEY, NOW, OWNER, paid_store, payment, verify

SERVICE = SigningKey(b"g" * 32)
SID = service_id(bytes(SERVICE.verify_key))
HOST = address_from_pubkey(HOST_KEY).host


def setup(tmp_path: Path) -> tuple[AccessGate, Manifest, bytes]:
    s = split(os.urandom(30_000), 2, 3)
    store, _ = paid_store(tmp_path, SID, s.shards[1])
    gate = AccessGate(store, lambda: HOST_KEY, verify, lambda: EPOCH, lambda: NOW,
                      HostingMetrics.create(CollectorRegistry()))
    m = Manifest("f", 1, 2, 3, s.size, s.key, FEE, bytes(OWNER.verify_key), int(NOW), int(NOW) + 60,
                 tuple(ShardRef(HOST, h) for h in s.hashes))
    return gate, m, s.shards[1]


async def serve(handler: Any, nursery: trio.Nursery) -> int:
    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    return int(listeners[0].socket.getsockname()[1])


async def test_paid_unpaid_and_replayed_requests(tmp_path: Path) -> None:
    gate, m, shard = setup(tmp_path)
    ak = SigningKey(b"q" * 32)
    cert = payment(SID, bytes(ak.verify_key))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await serve(gate.serve, nursery)

            async def ask(req: AccessRequest) -> bytes:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    return await fetch_shard(stream, req, 1, m)

            paid = AccessRequest.make(ak, HOST_KEY, SID, m.shards[1].hash, cert)
            assert await ask(paid) == shard
            with pytest.raises(HostingError, match=r"refused \(no_payment\): an access to this service costs 5000"):
                await ask(AccessRequest.make(ak, HOST_KEY, SID, m.shards[1].hash, None))
            assert await ask(paid) == shard and await ask(paid) == shard        # a broken transfer may retry
            with pytest.raises(HostingError, match=r"refused \(used_up\)"):
                await ask(paid)                                                   # but a payment is not shared
            with pytest.raises(HostingError, match=r"refused \(unknown_shard\)"):
                await ask(AccessRequest.make(ak, HOST_KEY, SID, m.shards[0].hash, cert))
            # garbage: a frame that is no request, and an oversize announcement
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await send_frame(stream, b"\x93\x01\x02")
                reply = await FrameReader(stream).recv_obj(4096, "reply")
            assert reply["t"] == "refused" and reply["reason"] == "malformed"
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await stream.send_all(b"\xff\xff\xff\xff")
                reply = await FrameReader(stream).recv_obj(4096, "reply")
            assert reply["reason"] == "malformed" and "over the limit" in reply["message"]
            nursery.cancel_scope.cancel()
    assert gate.refused == {"no_payment": 1, "used_up": 1, "unknown_shard": 1, "malformed": 2}
    assert gate.served[SID].view() == {"accesses": 1, "shards_served": 3, "fees_seen": format_amount(FEE)}


async def test_a_host_returning_other_bytes_is_caught(tmp_path: Path) -> None:
    _, m, shard = setup(tmp_path)
    forged = bytes([shard[0] ^ 1]) + shard[1:]

    async def liar(stream: trio.SocketStream) -> None:
        async with stream:
            await FrameReader(stream).recv(65536)
            await send_obj(stream, {"v": 1, "t": "shard", "size": len(forged)})
            await send_frame(stream, forged)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await serve(liar, nursery)
            req = AccessRequest.make(SigningKey(b"q" * 32), HOST_KEY, SID, m.shards[1].hash, None)
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                with pytest.raises(ShardMismatch, match="shard 1 does not hash"):
                    await fetch_shard(stream, req, 1, m)
            nursery.cancel_scope.cancel()


async def test_the_accessor_skips_and_reports_a_lying_host(tmp_path: Path) -> None:
    """HostedAccessor.fetch_shards over real TCP to three hosts (the onion circuits replaced by
    a connector that dials each host's gate): the lying host is asked first, its bytes fail
    the hash, it is reported, and the two honest hosts give the content back."""
    s = split(os.urandom(40_000), 2, 3)
    keys = [SigningKey(bytes([60 + i]) * 32) for i in range(3)]
    addrs = [address_from_pubkey(bytes(k.verify_key)) for k in keys]
    m = Manifest("f", 1, 2, 3, s.size, s.key, 0, bytes(OWNER.verify_key), int(NOW), int(NOW) + 60,
                 tuple(ShardRef(a.host, h) for a, h in zip(addrs, s.hashes)))
    metrics = HostingMetrics.create(CollectorRegistry())
    ports: dict[bytes, int] = {}

    async def liar(stream: trio.SocketStream) -> None:
        async with stream:
            await FrameReader(stream).recv(65536)
            await send_obj(stream, {"v": 1, "t": "shard", "size": len(s.shards[1])})
            await send_frame(stream, bytes(len(s.shards[1])))

    async def connect(hops: int, address: Any, port: int) -> trio.SocketStream:
        assert hops == 2 and port == 1
        return await trio.open_tcp_stream("127.0.0.1", ports[address.pubkey])

    forgotten: list[str] = []
    rng = random.Random(next(seed for seed in range(1000) if _first(seed) == 1))
    acc = HostedAccessor(overlay=None, services={}, clock=lambda: NOW, metrics=metrics,  # type: ignore[arg-type]
                         connect=connect, forget_circuit=lambda h, a: forgotten.append(a.host), rng=rng)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i, a in enumerate(addrs):
                if i == 1:
                    ports[a.pubkey] = await serve(liar, nursery)
                    continue
                store, _ = paid_store(tmp_path / str(i), SID, s.shards[i], fee=0)
                gate = AccessGate(store, lambda a=a: a.pubkey, verify, lambda: EPOCH, lambda: NOW, metrics)
                ports[a.pubkey] = await serve(gate.serve, nursery)
            got, report = await acc.fetch_shards(m, LEVELS[1], SID, SigningKey(b"q" * 32), None)
            nursery.cancel_scope.cancel()
    assert sorted(got) == [0, 2]
    assert join(got, m.hashes, key=s.key, k=2, size=s.size) and [r["shard"] for r in report] == [1]
    assert report[0]["bad"] and "does not hash" in report[0]["error"] and report[0]["host"] == addrs[1].host
    assert not forgotten                        # level 1 keeps its circuits


def _first(seed: int) -> int:
    order = [0, 1, 2]
    random.Random(seed).shuffle(order)
    return order[0]
