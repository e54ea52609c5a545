"""Window on new Yamux streams: a large frame's window is opened when its length is read
(node/p2pfix_yamux_ahead.py), and a writer out of window is woken by the window update itself
(node/p2pfix_yamux.py `QuickYamuxStream.send_window`), between two real overlays on 127.0.0.1."""
from __future__ import annotations

import os
from typing import Any

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE

from fognode.node import p2pfix_yamux
from tests.node.test_p2pfix import overlays
from tests.polling import wait_until

FRAMES = "/fognode-test/frames/1.0.0"
RAW = TProtocol("/fognode-test/raw/1.0.0")


async def test_a_large_frame_opens_the_window_for_all_of_it_and_the_charge_goes_back() -> None:
    big = os.urandom(3 << 19)     # 1.5 MiB: within the peer's window share (2 MiB)
    got: list[bytes] = []
    seen: dict[str, Any] = {}

    async def handler(fs: Any) -> None:
        got.append(await fs.recv_bytes())       # a small frame: the window stays as it was
        ms = fs.raw.muxed_stream
        seen["small"] = ms.target_recv_window
        got.append(await fs.recv_bytes())
        seen["big"] = ms.target_recv_window
        seen["charged"] = ms.window_charged
        await fs.send_bytes(b"done")

    with trio.fail_after(60):
        async with overlays(2) as (a, b):
            b.set_stream_handler(FRAMES, handler)
            st = await a.open_stream(b.peer_id, FRAMES)
            await st.send_bytes(b"x" * 1000)
            await st.send_bytes(big)
            assert await st.recv_bytes() == b"done"
            assert got == [b"x" * 1000, big]
            assert seen["small"] == DEFAULT_WINDOW_SIZE
            # the whole frame's window was given in one go, and charged to the peer's budget
            assert seen["big"] >= len(big) and seen["charged"] > 0
            await st.close()
            await wait_until(lambda: b.resources.manager.buffered_by(a.peer_id) == 0,
                             timeout=20, what="the stream's window charge given back")


async def test_a_writer_out_of_window_is_woken_by_the_update_not_by_a_poll(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # with the fallback check every 10 s, 2 MiB over 256 KiB windows could not finish in the
    # bound below unless each window update wakes the writer itself
    monkeypatch.setattr(p2pfix_yamux, "WINDOW_POLL", 10.0)
    total = 2 << 20
    read = trio.Event()

    async def sink(stream: Any) -> None:
        n = 0
        while n < total:
            n += len(await stream.read(1 << 16))
        read.set()

    async with overlays(2) as (a, b):
        b.host.set_stream_handler(RAW, sink)
        stream = await a.host.new_stream(b.host.get_id(), [RAW])
        with trio.fail_after(8):
            await stream.write(b"w" * total)
            await read.wait()
        assert stream.muxed_stream._zero_window_waits > 0     # it did run out of window
        await stream.close()
