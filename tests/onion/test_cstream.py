"""CircuitStream (cstream.py): what a reader gets and what the circuit is told, against a
recording engine (the StreamOps side; the engine itself is exercised by the devnet tests)."""
from __future__ import annotations

import trio

from fognode.protocols.onion.actions import CircKey
from fognode.protocols.onion.cstream import CircuitStream

KEY: CircKey = ("guard", 7)


class Ops:
    """Records what the stream asks of its engine."""

    def __init__(self) -> None:
        self.consumed: list[int] = []
        self.sent: list[bytes] = []
        self.ended = 0

    def stream_send(self, key: CircKey, sid: int, data: bytes) -> None:
        self.sent.append(data)

    def stream_consumed(self, key: CircKey, sid: int, chunks: int) -> None:
        self.consumed.append(chunks)

    def stream_end(self, key: CircKey, sid: int) -> None:
        self.ended += 1

    def stream_queued(self, key: CircKey, sid: int) -> int:
        return 0

    async def wait_progress(self) -> None:
        await trio.sleep(0)


async def test_waiting_cells_come_out_in_one_piece_in_order_and_are_counted_once() -> None:
    ops = Ops()
    s = CircuitStream(ops, KEY, 1)
    cells = [bytes([i]) * 4066 for i in range(40)]
    for c in cells:
        s.feed(c)
    whole = b"".join(cells)
    got = await s.receive_some(65536)               # 16 whole cells and part of the 17th
    assert got == whole[:65536] and ops.consumed == [16]
    rest = bytearray()
    while len(rest) < len(whole) - 65536:
        rest += await s.receive_some(10_000)
    assert bytes(rest) == whole[65536:]
    assert sum(ops.consumed) == 40                   # each cell reported consumed exactly once
    s.feed_end("done")
    assert await s.receive_some() == b""


async def test_data_fed_after_a_partial_read_follows_it() -> None:
    ops = Ops()
    s = CircuitStream(ops, KEY, 1)
    s.feed(b"abcdef")
    assert await s.receive_some(4) == b"abcd" and ops.consumed == []
    s.feed(b"ghi")
    s.feed_end("done")                               # the data still waiting is handed out first
    assert await s.receive_some() == b"efghi"
    assert await s.receive_some() == b""
    assert ops.consumed == []                        # the stream had ended: no SENDMEs for it
