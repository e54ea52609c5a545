"""The transfer bounds of `bench.fl --part rounds` (tools/bench/fl_rounds.py): a libp2p host in
the benchmark's process fetches a daemon's model, once its overlay has settled, and times it.

`stream_bounds` connects a host (node/host.py's overlay, as a peer daemon's) to the daemon,
waits until the host's connections have settled (`settle`), makes WARMUP untimed requests of
each kind, then times REPEATS of each, one kind after the other:
- "refused" (the bound's rtt): a request for a model nobody holds on a model stream opened for it (the open and
  one small exchange; the floor of one gossip hop);
- "stream" (the bound's fetch): the daemon's model on a model stream opened per fetch (`/fognode/fl/model/1.0.0`,
  the filed bound's "same bytes over one libp2p stream");
- "session": the same model on one open transfer session (`/fognode/fl/xfer/1.0.0`, a "model"
  request each), as a participant fetches in rounds 2+ (protocols/fl/transfer/sessions.py),
  and as updates and the aggregator's push go.
Each fetch is received as FL receives it (`fetch_model`: ModelResponse.decode, then
transfer/models.py `read_tensors`, whose decoder checks the params against their header's
hash, which must be the model hash; no second hash). The CPU of one fetch is measured at both
ends over the REPEATS fetches of a kind: the serving daemon with its task process
(`tree_cpu`, from the kernel's nanosecond counters, less the daemon's idle CPU over the same
wall time, measured just before) and this whole process (`time.process_time`: the host's
trio thread and every other thread, which idle use next to nothing).

Why the settle (helper fetchb, session 28). A host that connects to one daemon of a full mesh
joins the overlay: within seconds the other daemons dial it (Noise handshakes, identify,
pubsub and DHT streams), and until then those dials ran inside the timed fetches. In a
10-daemon mesh the host's connections went 1 -> 9 -> 10 during its 5 timed fetches, which took
11-26 ms wall and 8-19 ms of this process's CPU each, against 2.2-4 ms and 2.1-2.3 ms once the
connections had been steady for 2 s (load 2-4; the filed "one model fetch costs" line said
13-42 ms in the quiet runs of stop 27). The serving daemon's CPU was read from psutil's 10 ms
clock ticks over 5 fetches, a resolution of 2 ms per fetch.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import trio

from fognode.protocols.harvest.procstat import process_cpu_s

REPEATS = 20      # timed requests of each kind (median)
WARMUP = 5        # untimed requests of each kind first (the session's window grows)
QUIET = 2.0       # seconds the host's connection count must stay unchanged to be settled
SETTLE_LIMIT = 30.0   # seconds at most spent waiting for that
IDLE_SAMPLE = 1.0     # seconds over which the serving daemon's idle CPU rate is measured
TIMEOUT = 180.0       # seconds for all of it (60 s was too short at load 44)


@dataclass(frozen=True)
class FetchBounds:
    rtt: float                        # median seconds, a refused request on a stream opened for it
    fetch: float                      # median seconds, one model fetch on a stream opened for it
    fetch_cpu: tuple[float, float]    # CPU seconds of such a fetch: (serving daemon, this process)
    session: float                    # median seconds, one model fetch on an open transfer session
    session_cpu: tuple[float, float]  # CPU seconds of such a fetch: (serving daemon, this process)
    settled: str                      # how the host's connections settled before the timing


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by the processes `pids` and their children (a
    daemon's task process), each read from its kernel CPU-time clock in nanoseconds
    (protocols/harvest/procstat.py `process_cpu_s`; psutil's user + system time counts 10 ms
    clock ticks); a process gone meanwhile counts 0: use it over short spans."""
    total = 0.0
    for pid in pids:
        try:
            procs = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
        except psutil.Error:
            continue
        total += sum(process_cpu_s(p) for p in procs)
    return total


async def settle(ov: Any, quiet: float = QUIET, limit: float = SETTLE_LIMIT) -> str:
    """Wait until the host's connection count has not changed for `quiet` seconds (at most
    `limit` seconds in all); says what it saw."""
    t0 = time.monotonic()
    seen, since = ov.peer_count(), t0
    while time.monotonic() - since < quiet and time.monotonic() - t0 < limit:
        await trio.sleep(0.1)
        if ov.peer_count() != seen:
            seen, since = ov.peer_count(), time.monotonic()
    took = time.monotonic() - t0
    state = "steady" if time.monotonic() - since >= quiet else f"still changing after {limit:.0f} s"
    return f"{seen} connections, {state} for {quiet:.0f} s after {took:.1f} s"


async def fetch_model(st: Any, sid: bytes, model_hash: bytes, size: int, peer: str) -> bool:
    """Ask `st` for the model (session `sid`, `model_hash`, `size` float32 params) and read it as
    FL does (transfer/models.py `read_tensors`). False when the peer does not hold it."""
    from fognode.protocols.fl.messages import ModelRequest, ModelResponse
    from fognode.protocols.fl.transfer.models import read_tensors
    from fognode.protocols.fl.transfer.streams import MAX_CONTROL_FRAME

    await st.send(ModelRequest(sid, model_hash).to_wire())
    resp = ModelResponse.decode(await st.recv(max_size=MAX_CONTROL_FRAME), params_shape=(size,),
                                max_bytes=1 << 30, peer=peer)
    if not resp.ok:
        return False
    # as receive_model: the decoder checks the params against their header's hash, which
    # must be the model hash (no second hash)
    if resp.tensors[0][1].hash != model_hash:
        raise RuntimeError(f"{peer} served another model than the one asked for")
    await read_tensors(st, resp, peer)
    return True


def request_kinds(ov: Any, peer: str, sid: bytes, model_hash: bytes, size: int,
                  session: Any) -> dict[str, Callable[[], Awaitable[None]]]:
    """The three timed requests of the module docstring, from the overlay `ov` to `peer`:
    "refused" (a model nobody holds, on a model stream opened for it), "stream" (the model
    `model_hash` on a model stream opened for it) and "session" (the same on the open transfer
    session `session`). Each raises RuntimeError when the peer answers otherwise."""
    from fognode.protocols.fl.messages import XferRequest
    from fognode.protocols.fl.transfer.streams import MODEL_STREAM

    ids = iter(range(1 << 30))

    async def on_stream(h: bytes) -> bool:
        st = await ov.open_stream(peer, MODEL_STREAM)
        try:
            return await fetch_model(st, sid, h, size, peer)
        finally:
            await st.close()

    async def refused() -> None:
        if await on_stream(b"\0" * 32):
            raise RuntimeError(f"{peer} served a model nobody holds")

    async def stream() -> None:
        if not await on_stream(model_hash):
            raise RuntimeError(f"{peer} did not serve the session's final model")

    async def on_session() -> None:
        await session.send(XferRequest(next(ids), "model").to_wire())
        if not await fetch_model(session, sid, model_hash, size, peer):
            raise RuntimeError(f"{peer} did not serve the session's final model")

    return {"refused": refused, "stream": stream, "session": on_session}


async def stream_bounds(addr: str, peer: str, sid: bytes, model_hash: bytes, size: int, pid: int,
                        repeats: int = REPEATS) -> FetchBounds:
    """The bounds (module docstring) between a libp2p host in this process and the daemon
    `pid` listening at `addr`, which holds the model `model_hash` of session `sid`. Raises
    trio.TooSlowError after TIMEOUT seconds."""
    from nacl.signing import SigningKey
    from prometheus_client import CollectorRegistry

    from fognode.node.events import EventBus
    from fognode.node.host import OverlayConfig, open_overlay

    reg = CollectorRegistry()
    cfg = OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], peers_low=1)
    with trio.fail_after(TIMEOUT):
        return await _measure(open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(reg), reg),
                              addr, peer, sid, model_hash, size, pid, repeats)


async def _measure(overlay: Any, addr: str, peer: str, sid: bytes, model_hash: bytes, size: int,
                   pid: int, repeats: int) -> FetchBounds:
    from fognode.protocols.fl.transfer.streams import XFER_STREAM

    async with overlay as ov:
        await ov.connect(addr)
        settled = await settle(ov)
        session = await ov.open_stream(peer, XFER_STREAM)
        kinds = request_kinds(ov, peer, sid, model_hash, size, session)
        for ask in kinds.values():
            for _ in range(WARMUP):
                await ask()
        c0 = tree_cpu([pid])
        await trio.sleep(IDLE_SAMPLE)
        idle_rate = (tree_cpu([pid]) - c0) / IDLE_SAMPLE
        wall: dict[str, float] = {}
        cpu: dict[str, tuple[float, float]] = {}
        for name, ask in kinds.items():
            times = []
            c0, h0, w0 = tree_cpu([pid]), time.process_time(), time.perf_counter()
            for _ in range(repeats):
                t = time.perf_counter()
                await ask()
                times.append(time.perf_counter() - t)
            serve = tree_cpu([pid]) - c0 - idle_rate * (time.perf_counter() - w0)
            cpu[name] = (max(serve, 0.0) / repeats, (time.process_time() - h0) / repeats)
            wall[name] = statistics.median(times)
        await session.close()
    return FetchBounds(rtt=wall["refused"], fetch=wall["stream"], fetch_cpu=cpu["stream"],
                       session=wall["session"], session_cpu=cpu["session"], settled=settled)
