"""Attack: silent and half-sent streams (issue 10, item 2).

`peers` hostile peers (fresh identities, one connection each) open `streams` streams apiece on
the victim's framed protocols (ledger order and sync, registry, gossip pull), round robin. Half
of them send nothing at all; the other half announce a frame of `frame` bytes (1 MiB) and send
all of it but its last byte, then go quiet. Every stream is held open until the victim resets
it or `seconds` run out. Before the resource manager each stream stayed open for minutes and
each half-sent one pinned its partial frame in the victim's memory (256 streams from one peer:
104 -> 434 MB; 6 peers with 1,511 streams: 2.4 GB). The counts returned say what the victim did
with them: refused (reset while the protocol was being negotiated: a limit), reset after it
opened (a missed deadline, a spent buffer budget or an oversize frame), or still open when the
attack ended; and when (seconds after the start) the last stream opened and the last reset
came.
"""
from __future__ import annotations

import struct
from contextlib import AsyncExitStack
from typing import Any, Sequence

import trio

from fognode.tools.bench.attacks import HostilePeer, hostile_peer

# the victim's framed request protocols (ledger/service.py, protocols/registry/direct.py,
# node/gossip.py); spelled out so the attack does not load the roles
PROTOCOLS = ("/fognode/ledger/order/1.0.0", "/fognode/ledger/sync/1.0.0",
             "/fognode/registry/1.0.0", "/fognode/gossip/pull/1.0.0")

KEYS = ("peers", "streams_opened", "streams_refused", "streams_reset", "streams_open_at_end",
        "half_sent", "bytes_sent",
        "last_open_s", "last_reset_s")


OPENS_IN_FLIGHT = 32   # stream negotiations at once per hostile peer (1,500 at once all timed out)


async def _hold(hp: HostilePeer, opening: trio.Semaphore, protocol: str, half: bool, frame: int,
                counts: dict[str, float]) -> None:
    """Open one stream, send nothing or all but the last byte of a frame, wait for a reset."""
    try:
        async with opening:
            s = await hp.raw_stream(protocol)
    except Exception:   # reset while negotiating: refused (or the connection is gone)
        counts["streams_refused"] += 1
        return
    counts["streams_opened"] += 1
    counts["last_open_s"] = max(counts["last_open_s"], trio.current_time() - counts["_start"])
    ended = False
    try:
        if half:
            counts["half_sent"] += 1
            try:
                await s.write(struct.pack(">I", frame) + bytes(frame - 1))
                counts["bytes_sent"] += frame + 3
            except Exception:   # reset while writing (or the window never reopened): read on
                pass
        while True:
            try:
                data = await s.read(65536)
            except Exception:   # reset (or EOF) by the victim
                break
            if not data:
                break
        ended = True
        counts["last_reset_s"] = max(counts["last_reset_s"], trio.current_time() - counts["_start"])
        counts["streams_reset"] += 1
    finally:
        if not ended:
            counts["streams_open_at_end"] += 1
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:
                    await s.reset()
                except Exception:   # already gone
                    pass


async def attack(target: str, *, seconds: float, peers: int = 1, streams: int = 256,
                 frame: int = 1 << 20, protocols: Sequence[str] = PROTOCOLS,
                 in_flight: int = OPENS_IN_FLIGHT) -> dict[str, float]:
    """Run the attack against `target` (a multiaddr ending in /p2p/<peer id>) for at most
    `seconds` (less when the victim has reset every stream), with at most `in_flight` stream
    opens under way per peer; returns the counts named in KEYS. Raises DialError if the
    target cannot be reached at all."""
    counts: dict[str, float] = dict.fromkeys(KEYS, 0.0)
    counts["_start"] = trio.current_time()
    with trio.move_on_after(seconds):
        async with AsyncExitStack() as stack:
            hps: list[Any] = []
            for _ in range(peers):
                hps.append(await stack.enter_async_context(hostile_peer(target)))
                counts["peers"] += 1
            opening = [trio.Semaphore(in_flight) for _ in hps]
            async with trio.open_nursery() as nursery:
                for i in range(streams):
                    for hp, sem in zip(hps, opening):
                        nursery.start_soon(_hold, hp, sem, protocols[i % len(protocols)],
                                           (i // len(protocols)) % 2 == 1, frame, counts)
                    if i % 16 == 15:
                        await trio.sleep(0)   # let the opens interleave with the victim's resets
    del counts["_start"]
    return counts
