"""A peer that writes past a Yamux stream's receive window is reset and charged, instead of
being buffered without bound (issue 10 item 2, node/p2pfix_yamux_window.py): a hostile
py-libp2p host on 127.0.0.1 against a real overlay."""
from __future__ import annotations

import os
import time
from typing import Any

import trio
from libp2p.custom_types import TProtocol
from libp2p.stream_muxer.yamux.yamux import MAX_WINDOW_SIZE
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.events import EventBus
from fognode.node.host import OverlayConfig, open_overlay
from fognode.tools.bench.attacks import hostile_peer
from tests.polling import wait_until

LOCAL = ["/ip4/127.0.0.1/tcp/0"]
SINK = "/fognode-test/sink/1.0.0"
ERRORS = "fognode_node_remote_protocol_errors_total"


async def test_a_peer_writing_past_the_receive_window_is_reset_and_charged() -> None:
    reg = CollectorRegistry()
    got: dict[str, Any] = {}
    streams: list[Any] = []      # the victim's side of each sink stream (yamux)
    release = trio.Event()

    async def sink(stream: Any) -> None:
        """Reads nothing until released (a slow reader), then everything."""
        streams.append(stream.muxed_stream)
        n = 0
        try:
            await release.wait()
            while True:
                n += len(await stream.read(65536))
        except Exception as e:       # EOF or reset: what the test looks at
            got[stream.muxed_stream.stream_id] = (n, type(e).__name__)

    def buffered(ms: Any) -> int:
        return len(ms.conn.stream_buffers.get(ms.stream_id, b""))

    def errors() -> float:
        return reg.get_sample_value(ERRORS, {"protocol": "/yamux/1.0.0"}) or 0.0

    with trio.fail_after(90):
        async with open_overlay(OverlayConfig(listen=LOCAL, peers_low=0),
                                SigningKey(os.urandom(32)), EventBus(reg), reg) as victim:
            victim.host.set_stream_handler(TProtocol(SINK), sink)
            async with hostile_peer(victim.listen_addrs()[0]) as evil:
                # an honest writer to a reader that reads: 2 MiB arrive, nothing charged
                release.set()
                honest = await evil.raw_stream(SINK)
                await honest.write(b"h" * (2 << 20))
                await honest.close()
                await wait_until(lambda: len(got) == 1, timeout=30, what="the honest stream read")
                assert list(got.values()) == [(2 << 20, "StreamEOF")]
                assert errors() == 0

                # the attacker ignores the window it was given (py-libp2p's auto-tuning may
                # have grown it to a few MiB while the protocol was negotiated; with our
                # go-yamux-style updates, node/p2pfix_yamux.py, it is at most the initial
                # 256 KiB less the negotiation's bytes): it gives itself
                # 1 GiB more and writes 2 MiB past the window to a reader that is not reading
                release = trio.Event()
                hostile = await evil.raw_stream(SINK)
                await wait_until(lambda: len(streams) == 2, timeout=30, what="the sink stream")
                victim_side = streams[1]
                window = hostile.muxed_stream.send_window
                assert 0 < window <= MAX_WINDOW_SIZE
                hostile.muxed_stream.send_window += 1 << 30
                try:
                    with trio.move_on_after(30):
                        await hostile.write(b"x" * (window + (2 << 20)))
                except Exception:   # reset by the victim: its defence working
                    pass
                await wait_until(lambda: errors() >= 1, timeout=30,
                                 what="the overflow counted")
                assert buffered(victim_side) == 0       # what it held was dropped
                assert victim.violations.value(evil.peer_id, time.monotonic()) > 0.5   # charged
                release.set()
                await wait_until(lambda: len(got) == 2, timeout=30, what="the sink to see it")
                n, outcome = got[victim_side.stream_id]
                assert outcome == "StreamReset" and n == 0, (n, outcome)
                assert errors() == 1     # one report per stream, however many frames follow
