"""What one small message costs on an open libp2p stream: CPU and trio scheduler work per
message, for round trips and for a one-way run of frames.

    .venv/bin/python -m fognode.tools.bench.stream_msgs [--messages 4000] [--size 200] [--runs 3]

Two overlays (node/host.py, real py-libp2p hosts: TCP on 127.0.0.1, Noise, Yamux, fognode's
p2pfix classes) run in this one trio loop, so the CPU measured is both ends of the stack. A
opens one stream of an echo protocol to B (node/streams.py framed streams), then:
- round trips: A sends a `--size`-byte frame, B's handler sends it back, A reads it; repeated;
- one way: A sends `--messages` frames with `send_bytes` one after the other, B reads them all
  and answers with one frame at the end.
The figures per message are CPU microseconds (`time.process_time`, both ends), scheduler
iterations (`before_io_wait`) and task steps (`after_task_step`: each time a task runs until
its next checkpoint). The bound row is the same exchange on a bare trio `SocketStream` pair
over TCP on 127.0.0.1 in the same loop (a 4-byte length and the body, `send_all` and
`receive_some`): no encryption, no muxer, no framing layer. It shows what the stack costs
on top of the socket, the cost every small protocol message (ledger votes and certificates,
gossip RPCs) pays. Each figure is the median of `--runs` runs; the spread is printed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import struct
import time
from typing import Any, Awaitable, Callable

import trio

PROTOCOL = "/fognode/bench/msgs/1.0.0"
_HEADER = struct.Struct(">I")


class _Counter(trio.abc.Instrument):
    """Scheduler iterations and task steps while `on`."""

    def __init__(self) -> None:
        self.iterations = 0
        self.steps = 0
        self.on = False

    def before_io_wait(self, timeout: float) -> None:
        if self.on:
            self.iterations += 1

    def after_task_step(self, task: Any) -> None:
        if self.on:
            self.steps += 1


Row = tuple[float, float, float]     # CPU us, iterations, task steps per message


async def _timed(counter: _Counter, n: int, run: Callable[[], Awaitable[None]]) -> Row:
    counter.iterations = counter.steps = 0
    counter.on = True
    t = time.process_time()
    await run()
    cpu = time.process_time() - t
    counter.on = False
    return cpu / n * 1e6, counter.iterations / n, counter.steps / n


async def _bare(counter: _Counter, n: int, size: int) -> tuple[Row, Row]:
    """The bound: the same two exchanges on a bare TCP socket pair."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    body = os.urandom(size)
    frame = _HEADER.pack(size) + body

    async def read_frame(s: trio.SocketStream, buf: bytearray) -> bytes:
        while True:
            if len(buf) >= 4:
                (k,) = _HEADER.unpack(buf[:4])
                if len(buf) >= 4 + k:
                    out = bytes(buf[4:4 + k])
                    del buf[:4 + k]
                    return out
            data = await s.receive_some(65536)
            if not data:
                raise EOFError
            buf += data

    async with trio.open_nursery() as nursery:
        server: list[trio.SocketStream] = []
        got = trio.Event()

        async def accept() -> None:
            server.append(await listeners[0].accept())
            got.set()
        nursery.start_soon(accept)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await got.wait()
        srv = server[0]
        cbuf, sbuf = bytearray(), bytearray()

        async def echo_rounds() -> None:
            async def serve() -> None:
                for _ in range(n):
                    await srv.send_all(_HEADER.pack(size) + await read_frame(srv, sbuf))
            async with trio.open_nursery() as inner:
                inner.start_soon(serve)
                for _ in range(n):
                    await client.send_all(frame)
                    await read_frame(client, cbuf)

        async def one_way() -> None:
            async def sink() -> None:
                for _ in range(n):
                    await read_frame(srv, sbuf)
                await srv.send_all(frame)
            async with trio.open_nursery() as inner:
                inner.start_soon(sink)
                for _ in range(n):
                    await client.send_all(frame)
                await read_frame(client, cbuf)

        rt = await _timed(counter, n, echo_rounds)
        ow = await _timed(counter, n, one_way)
        await client.aclose()
        await srv.aclose()
        for lst in listeners:
            await lst.aclose()
        nursery.cancel_scope.cancel()
    return rt, ow


async def measure(n: int, size: int, runs: int) -> dict[str, list[Row]]:
    """Per exchange ("round trip", "one way", and their bare bounds): one Row per run."""
    from nacl.signing import SigningKey
    from prometheus_client import CollectorRegistry

    from fognode.node.events import EventBus
    from fognode.node.host import OverlayConfig, open_overlay
    from fognode.node.overlay import FramedStream

    counter = _Counter()
    trio.lowlevel.add_instrument(counter)
    ra, rb = CollectorRegistry(), CollectorRegistry()
    cfg = OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], peers_low=1)
    out: dict[str, list[Row]] = {"round trip": [], "one way": [], "bare round trip": [],
                                 "bare one way": []}
    body = os.urandom(size)
    async with open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(ra), ra) as a, \
            open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(rb), rb) as b:
        async def handler(st: FramedStream) -> None:
            mode = await st.recv_bytes()
            count = int(mode[1:])
            if mode[:1] == b"e":
                for _ in range(count):
                    await st.send_bytes(await st.recv_bytes())
            else:
                for _ in range(count):
                    await st.recv_bytes()
                await st.send_bytes(b"done")

        b.set_stream_handler(PROTOCOL, handler)
        await a.connect(b.listen_addrs()[0])
        await trio.sleep(1.0)      # identify and the gossip streams settle
        for _ in range(runs):
            st = await a.open_stream(b.peer_id, PROTOCOL)
            await st.send_bytes(b"e%d" % n)

            async def rounds() -> None:
                for _ in range(n):
                    await st.send_bytes(body)
                    await st.recv_bytes()
            out["round trip"].append(await _timed(counter, n, rounds))
            await st.close()
            st = await a.open_stream(b.peer_id, PROTOCOL)
            await st.send_bytes(b"s%d" % n)

            async def one_way() -> None:
                for _ in range(n):
                    await st.send_bytes(body)
                await st.recv_bytes()
            out["one way"].append(await _timed(counter, n, one_way))
            await st.close()
            rt, ow = await _bare(counter, n, size)
            out["bare round trip"].append(rt)
            out["bare one way"].append(ow)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rows = trio.run(measure, args.messages, args.size, args.runs)
    print(f"{args.size}-byte frames on one libp2p stream, both ends in one trio loop: "
          f"{args.messages} messages per run, median of {args.runs} runs (min-max)")
    print(f"{'exchange':<18}{'CPU us/msg':>22}{'iterations/msg':>16}{'task steps/msg':>16}"
          f"{'x bare CPU':>12}")
    for kind in ("round trip", "one way"):
        for name in (kind, "bare " + kind):
            rs = rows[name]
            cpu = [r[0] for r in rs]
            bare = statistics.median(r[0] for r in rows["bare " + kind])
            ratio = f"{statistics.median(cpu) / bare:.1f}" if name == kind else "bound"
            print(f"{name:<18}{statistics.median(cpu):>8.1f} ({min(cpu):.1f}-{max(cpu):.1f})"
                  f"{statistics.median(r[1] for r in rs):>16.2f}"
                  f"{statistics.median(r[2] for r in rs):>16.2f}{ratio:>12}")


if __name__ == "__main__":
    main()
