"""Attack: mint orders whose receipt body cannot be re-encoded, sent on the ledger order stream.

A hostile client sends `{"v": 1, "order": {"v": 1, "order": <mint order>, "sig"}}` frames on
`/fognode/ledger/order/1.0.0` whose receipt evidence carries a body that msgpack decodes but
fognode's canonical encoding refuses: a NaN or infinite float, a bytes map key, a msgpack
timestamp (ext type -1). The validator hashes the receipt as received, so before the fix the
decoder raised LocalProtocolError, which the stream guard logs as this node's own bug (ERROR
with a traceback) and charges to nobody. Found by the `ledger_receipt` fuzz target
(tests/fuzz); each frame must now be refused as the peer's fault: a WARNING, a penalty, the
stream reset.
"""
from __future__ import annotations

import os
import struct
from typing import Any

import msgpack
import trio
from nacl.signing import SigningKey

from fognode.ledger.messages import MintOrder
from fognode.ledger.receipts import Receipt, uptime_claim
from fognode.tools.bench.attacks import hostile_peer

ORDER_STREAM = "/fognode/ledger/order/1.0.0"

# bodies that msgpack decodes and fognode.node.wire.pack refuses
BAD_BODIES: list[dict[Any, Any]] = [
    {"seconds": 60, "x": float("nan")},
    {"seconds": 60, "x": [1, {"y": float("inf")}]},
    {"seconds": 60, b"k": 1},
    {"seconds": 60, "t": msgpack.Timestamp(1, 0)},
]


def hostile_order(key: SigningKey, body: dict[Any, Any], sequence: int = 0) -> bytes:
    """One order-stream frame (u32 length + msgpack) with a mint order carrying `body`."""
    pub = bytes(key.verify_key)
    ok = Receipt.issue(key, "uptime", pub, 1, {"seconds": 60, "claim": uptime_claim(1)})
    order = MintOrder(chain="fognode-devnet", epoch=1, sender=pub, sequence=sequence, fee=0,
                      recipient=pub, amount=1, receipt=ok).body()
    order["receipt"] = {**ok.to_wire(), "body": body}
    # plain msgpack: fognode's pack() refuses these values, which is the point
    signed = {"v": 1, "order": order, "sig": b"\x00" * 64}
    data = msgpack.packb({"v": 1, "order": signed}, use_bin_type=True)
    return struct.pack(">I", len(data)) + data


async def attack(target: str, *, seconds: float) -> dict[str, float]:
    """Send each bad body once per stream, cycling, until `seconds` pass; count what the
    daemon did with each stream (reset/closed without a reply, or a reply)."""
    sent = reset = replied = 0
    key = SigningKey(os.urandom(32))
    with trio.move_on_after(seconds):
        async with hostile_peer(target) as hp:
            i = 0
            while True:
                stream = await hp.raw_stream(ORDER_STREAM)
                await stream.write(hostile_order(key, BAD_BODIES[i % len(BAD_BODIES)], i))
                i += 1
                try:
                    with trio.fail_after(5):
                        got = await stream.read(4)
                except trio.TooSlowError:
                    got = b""
                except Exception:  # py-libp2p's reset/EOF errors: the stream was refused
                    got = b""
                sent += 1     # counted with its outcome (a stream cut by the deadline is not)
                if got:
                    replied += 1
                else:
                    reset += 1
                try:
                    await stream.reset()
                except Exception:
                    pass
    return {"orders_sent": sent, "streams_refused": reset, "replies": replied}
