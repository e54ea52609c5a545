"""A host's access gate and the accessor's shard fetch over real TCP on 127.0.0.1 (host.py's
AccessGate, client.py's fetch_shard): a paid request gets its verified shard; an unpaid one,
a replayed payment past its uses and garbage get a refusal naming the rule; a host that
returns other bytes than the manifest names is caught by the accessor."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.protocols.onion.address import address_from_pubkey
from fognode.protocols.onion.hosting.accessor import fetch_shard
from fognode.protocols.onion.hosting.errors import HostingError
from fognode.protocols.onion.hosting.fees import AccessRequest
from fognode.protocols.onion.hosting.framing import FrameReader, send_frame, send_obj
from fognode.protocols.onion.hosting.host import AccessGate
from fognode.protocols.onion.hosting.manifest import Manifest, ShardRef, service_id
from fognode.protocols.onion.hosting.metrics import HostingMetrics
from fognode.protocols.onion.hosting.shards import ShardMismatch, split

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
    assert gate.served[SID].view() == {"accesses": 1, "shards_served": 3, "fees_seen": FEE}


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
