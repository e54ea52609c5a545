"""What opening one libp2p stream costs in trio scheduler iterations, and so how long it takes
on a busy event loop.

    .venv/bin/python -m fognode.tools.bench.stream_open [--opens 10]

Two overlays (node/host.py, real py-libp2p hosts, TCP on 127.0.0.1) run in this one trio
loop. Overlay A opens a stream of an echo protocol to B: a yamux stream, then multistream-select
negotiation. An instrument counts the loop's scheduler iterations (`before_io_wait`) during
each open. The open is then repeated with `busy` tasks beside it. Each busy task burns `work`
seconds of CPU and yields, so each iteration takes about busy x work: a daemon whose loop is
busy (gossip, transfers) or starved of CPU.

The figure is the median open time. The bound is iterations x one iteration's duration,
measured in the same run. What it shows: the open is a chain of sequential scheduler hops
(py-libp2p's multistream reads go a byte at a time through yamux's per-stream and
per-connection locks), so its latency grows with the loop's iteration time. It is the
mechanism behind the 10 to 30 s stream opens of tools/bench/fl_rounds.py on an overloaded
machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import trio

PROTOCOL = "/fognode/bench/echo/1.0.0"
LOADS = ((0, 0.0), (10, 0.001), (20, 0.002), (40, 0.002))   # (busy tasks, seconds of CPU per step)


class _Iterations(trio.abc.Instrument):
    def __init__(self) -> None:
        self.count = 0
        self.on = False

    def before_io_wait(self, timeout: float) -> None:
        if self.on:
            self.count += 1


async def _busy(work: float) -> None:
    while True:
        t = time.perf_counter()
        while time.perf_counter() - t < work:
            pass
        await trio.sleep(0)


async def _iteration_seconds(span: float = 1.0) -> float:
    """Mean duration of one scheduler iteration now (a task that only yields)."""
    t = time.perf_counter()
    k = 0
    while time.perf_counter() - t < span:
        await trio.sleep(0)
        k += 1
    return span / k


async def measure(opens: int) -> list[tuple[int, float, float, float, float, int]]:
    """Per load: (busy tasks, work, median open seconds, median iterations, iteration seconds,
    opens that failed); medians over the opens that succeeded."""
    from nacl.signing import SigningKey
    from prometheus_client import CollectorRegistry

    from fognode.node.connmgr import DialError
    from fognode.node.events import EventBus
    from fognode.node.host import OverlayConfig, open_overlay
    from fognode.node.overlay import FramedStream

    inst = _Iterations()
    trio.lowlevel.add_instrument(inst)
    ra, rb = CollectorRegistry(), CollectorRegistry()
    # a generous dial_timeout: under the heaviest load an open took longer than the default
    cfg = OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], peers_low=1, dial_timeout=120.0)
    out = []
    async with open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(ra), ra) as a, \
            open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(rb), rb) as b:
        async def echo(st: FramedStream) -> None:
            await st.send(await st.recv())

        b.set_stream_handler(PROTOCOL, echo)
        await a.connect(b.listen_addrs()[0])
        await trio.sleep(1.0)      # identify and the gossip streams settle
        for busy, work in LOADS:
            async with trio.open_nursery() as nursery:
                for _ in range(busy):
                    nursery.start_soon(_busy, work)
                await trio.sleep(0.2)
                times, iters, failed = [], [], 0
                for _ in range(opens):
                    inst.count, inst.on = 0, True
                    t = time.perf_counter()
                    try:
                        st = await a.open_stream(b.peer_id, PROTOCOL)
                    except DialError:       # py-libp2p's own negotiation timeouts, under load
                        inst.on = False
                        failed += 1
                        continue
                    times.append(time.perf_counter() - t)
                    inst.on = False
                    iters.append(inst.count)
                    await st.send(b"x")
                    await st.recv()
                    await st.close()
                it = await _iteration_seconds()
                nursery.cancel_scope.cancel()
            nan = float("nan")
            out.append((busy, work, statistics.median(times) if times else nan,
                        statistics.median(iters) if iters else nan, it, failed))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--opens", type=int, default=10)
    args = ap.parse_args()
    rows = trio.run(measure, args.opens)
    print(f"opening one libp2p stream (yamux + multistream-select, both ends in one trio loop), "
          f"median of {args.opens}")
    print(f"{'busy tasks x CPU per step':<28}{'iterations':>11}{'one iteration':>15}{'open':>11}"
          f"{'bound':>11}{'failed':>8}  bound: iterations x one iteration")
    for busy, work, t, n, it, failed in rows:
        print(f"{f'{busy} x {work * 1000:.0f} ms':<28}{n:>11.0f}{it * 1000:>12.2f} ms{t * 1000:>8.1f} ms"
              f"{n * it * 1000:>8.1f} ms{failed:>5}/{args.opens}")


if __name__ == "__main__":
    main()
