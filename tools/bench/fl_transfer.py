"""What one FL model transfer costs in CPU at each end, against the same bytes through the
stream stack alone and through a bare socket with the crypto.

    .venv/bin/python -m fognode.tools.bench.fl_transfer [--transfers 200] [--runs 3]
        [--profile DIR] [--no-bounds]

Two `fognode run` daemons (tools/devnet.py) run one round of `synthetic_mlp` with the FL
bench's parameters (tools/bench/fl_rounds.py: 145,418 parameters, 0.58 MB float32), so that
node 0 holds the session's final model as a real round leaves it. A libp2p host in this
process (node/host.py's overlay, as a peer daemon's) then fetches that model from node 0
`--transfers` times per run and way, after 10 untimed fetches:
- "session": on one transfer session (`/fognode/fl/xfer/1.0.0`), a "model" request each, as
  a participant fetches its base model in rounds 2+ (transfer/sessions.py);
- "stream": on a model stream opened per fetch (`/fognode/fl/model/1.0.0`), as a node without
  a session does, and as `bench.fl`'s filed fetch bound measures it;
- "refused": a request for a model node 0 does not hold on a model stream opened for it (the
  open and one small exchange: the "stream" row less the tensor).
The three requests are `bench.fl`'s own (tools/bench/fl_fetch.py `request_kinds`), received as
FL receives them (ModelResponse.decode, transfer/models.py `read_tensors`: the hashing decoder;
the params' header hash must be the model hash). The CPU of the serving daemon (with its task
process; its idle CPU over the same wall time, measured before, is subtracted) and of this
process (`time.process_time`, the host's trio thread and everything else) are divided by the
fetches; medians of `--runs` runs (min-max).

The bounds, measured in the same run (tools/bench/stream_bulk.py, the same bytes in one
1 MiB-chunk frame per fetch on one reused stream, two processes): "stack" is node/host.py's
overlay, "bare + crypto" a bare TCP socket plus the ChaCha20-Poly1305 sealing/opening of the
same bytes. FL's own codec work on the same tensor is timed in this process (best of 5:
the decoder, its BLAKE2b alone, and the encode a participant does for its update).
`--profile DIR` records the serving daemon and this process with py-spy
(`record -f raw`, 1000 Hz, not --idle) over the session-way fetches of the last run
(DIR/serve.txt, DIR/fetch.txt)."""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from fognode.tools.bench.fl_fetch import request_kinds, tree_cpu
from fognode.tools.bench.fl_rounds import DATA_SEED, TASK, TASK_PARAMS
from fognode.tools.devnet import Devnet, wait_until

PYSPY = os.environ.get("PYSPY", "/tmp/pyspy/bin/py-spy")
WARMUP = 10
IDLE_SAMPLE = 2.0       # seconds over which the serving daemon's idle CPU rate is measured


def start_model(root: Path) -> tuple[Devnet, bytes, bytes, int]:
    """Two daemons, one round of TASK: (the devnet, session id, final model hash, size)."""
    net = Devnet(root, 2, extra_args=[
        "--set", "overlay.peers_low=1", "--set", "protocols.fl.tick_interval=0.05",
        "--set", f"protocols.fl.data_seed={DATA_SEED}",
        "--set", "protocols.fl.task_process_at_start=true"])
    net.create()
    for node in net.nodes:
        node.args = ["--set", f"protocols.fl.data_index={node.index}"]
    net.start_all(timeout=90)
    coord = net.nodes[0]
    wait_until(lambda: len(coord.rpc("node.peers")) >= 1, timeout=120, interval=0.25,
               what="node 1 to connect to node 0")
    out = coord.rpc("fl.start", {
        "task": TASK, "rounds": 1, "min_participants": 2, "participants": 2, "deadline": 20.0,
        "local_epochs": 1, "lr": 0.05, "batch_size": 10, "optin_seconds": 5.0,
        "task_params": TASK_PARAMS}, timeout=60)
    sid = out["session_id"]
    done = wait_until(lambda: (lambda st: st if st["state"] != "running" else None)(
        coord.rpc("fl.status", [sid, True])), timeout=240, interval=0.25, what="the session")
    if done["state"] != "completed":
        raise RuntimeError(f"the session ended {done['state']}: {done.get('reason')}")
    return net, bytes.fromhex(sid), bytes.fromhex(done["model_hash"]), int(out["parameters"])


async def fetches(addr: str, peer: str, sid: bytes, model_hash: bytes, size: int, pid: int,
                  n: int, runs: int, profile: Path | None) -> dict[str, list[tuple[float, float, float]]]:
    """{way: [(serving CPU s, fetching CPU s, wall s) per fetch, one per run]}."""
    from nacl.signing import SigningKey
    from prometheus_client import CollectorRegistry

    from fognode.node.events import EventBus
    from fognode.node.host import OverlayConfig, open_overlay
    from fognode.protocols.fl.transfer.streams import XFER_STREAM

    reg = CollectorRegistry()
    cfg = OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], peers_low=1)
    out: dict[str, list[tuple[float, float, float]]] = {"session": [], "stream": [], "refused": []}
    async with open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(reg), reg) as ov:
        await ov.connect(addr)
        await trio.sleep(0.5)       # identify and the gossip streams settle
        session = await ov.open_stream(peer, XFER_STREAM)
        ways = request_kinds(ov, peer, sid, model_hash, size, session)
        for way in ways.values():
            for _ in range(WARMUP):
                await way()
        for k in range(runs):
            c0 = tree_cpu([pid])
            await trio.sleep(IDLE_SAMPLE)
            idle_rate = (tree_cpu([pid]) - c0) / IDLE_SAMPLE
            for name, way in ways.items():
                spies = _spy(profile, pid) if profile and k == runs - 1 and name == "session" else []
                c0, h0, w0 = tree_cpu([pid]), time.process_time(), time.perf_counter()
                for _ in range(n):
                    await way()
                wall = time.perf_counter() - w0
                serve = tree_cpu([pid]) - c0 - idle_rate * wall
                here = time.process_time() - h0
                for sp in spies:
                    sp.send_signal(signal.SIGINT)
                for sp in spies:
                    sp.wait(timeout=60)
                out[name].append((serve / n, here / n, wall / n))
        await session.close()
    return out


def _spy(profile: Path, pid: int) -> list[subprocess.Popen[bytes]]:
    profile.mkdir(parents=True, exist_ok=True)
    spies = [subprocess.Popen([PYSPY, "record", "-r", "1000", "-f", "raw", "-p", str(p), "-o",
                               str(profile / f"{what}.txt")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
             for what, p in (("serve", pid), ("fetch", os.getpid()))]
    time.sleep(1.0)     # py-spy attached (blocking the loop here is fine: nothing timed runs)
    return spies


def bounds(n: int, size: int) -> dict[str, tuple[float, float]]:
    """{"stack"/"bare + crypto": (send CPU s, receive CPU s) per transfer of `size` bytes},
    from tools/bench/stream_bulk.py's runs (the median of its two directions)."""
    from fognode.tools.bench import stream_bulk as sb

    args = argparse.Namespace(transfers=n, size=size, chunk=1 << 20, warmup=5, one_way=False)
    crypto = sb._crypto(n * size)
    out = {}
    for stack in ("fognode", "bare"):
        r = sb._one_run(stack, args)
        send = statistics.median(r[f"{w} send"] for w in ("to listener", "to dialer")) / n
        recv = statistics.median(r[f"{w} recv"] for w in ("to listener", "to dialer")) / n
        if stack == "bare":
            send, recv = send + crypto["encrypt"] / n, recv + crypto["decrypt"] / n
        out["stack" if stack == "fognode" else "bare + crypto"] = (send, recv)
    return out


def codec(size: int, reps: int = 50) -> dict[str, float]:
    """CPU seconds, in this process, of FL's own work on one tensor of `size` float32 values:
    the receiver's decoder (BLAKE2b, copy, finite check), the BLAKE2b alone, and a sender's
    `encode_tensor` (finite check, copy, BLAKE2b); best of 5 batches of `reps`."""
    import hashlib

    import numpy as np

    from fognode.protocols.fl.transfer.tensors import TensorDecoder, encode_tensor

    arr = np.random.default_rng(1).standard_normal(size).astype(np.float32)
    th, chunks = encode_tensor(arr)
    frames = [bytes(c) for c in chunks]

    def decode() -> None:
        dec = TensorDecoder(th)
        for f in frames:
            dec.feed(f)
        dec.finish()

    work = {"decode": decode, "hash": lambda: hashlib.blake2b(frames[0], digest_size=32).digest(),
            "encode": lambda: encode_tensor(arr)}
    out = {}
    for name, fn in work.items():
        best = float("inf")
        for _ in range(5):
            t = time.process_time()
            for _ in range(reps):
                fn()
            best = min(best, (time.process_time() - t) / reps)
        out[name] = best
    return out


def _ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:.2f} ({min(xs) * 1e3:.2f}-{max(xs) * 1e3:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--transfers", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profile", type=Path, help="py-spy both ends into this folder")
    ap.add_argument("--no-bounds", action="store_true", help="skip the stream_bulk bounds")
    args = ap.parse_args()
    load = open("/proc/loadavg").read().split()[0]
    root = Path(tempfile.mkdtemp(prefix="fx-", dir="/tmp"))
    net, sid, model_hash, size = start_model(root)
    try:
        node = net.nodes[0]
        assert node.proc is not None
        got = trio.run(fetches, node.addr, node.peer_id, sid, model_hash, size, node.proc.pid,
                       args.transfers, args.runs, args.profile)
    finally:
        net.stop_all()
    nbytes = size * 4
    print(f"one FL model fetch ({size:,} parameters, {nbytes / 1e6:.2f} MB float32) from a "
          f"`fognode run` daemon to a libp2p host, {args.transfers} fetches x {args.runs} runs, "
          f"median (min-max); load {load}")
    print(f"{'ms per transfer':<44}{'serving CPU':>20}{'receiving CPU':>20}{'wall':>20}")
    for way, label in (("session", "model fetch on a transfer session"),
                       ("stream", "model fetch on a stream opened per fetch"),
                       ("refused", "a refused request on a stream opened for it")):
        rows = got[way]
        print(f"{label:<44}{_ms([r[0] for r in rows]):>20}{_ms([r[1] for r in rows]):>20}"
              f"{_ms([r[2] for r in rows]):>20}")
    c = codec(size)
    print(f"{'  of it, the decoder (BLAKE2b, copy, finite)':<44}{'-':>20}{c['decode'] * 1e3:>20.2f}{'-':>20}")
    print(f"{'  of it, the BLAKE2b alone':<44}{'-':>20}{c['hash'] * 1e3:>20.2f}{'-':>20}")
    print(f"{'an update encode (finite, copy, BLAKE2b)':<44}{c['encode'] * 1e3:>20.2f}{'-':>20}{'-':>20}")
    if not args.no_bounds:
        b = bounds(args.transfers, nbytes)
        for name, label in (("stack", "bound: same bytes, our stream stack"),
                            ("bare + crypto", "bound: same bytes, bare TCP + crypto")):
            print(f"{label:<44}{b[name][0] * 1e3:>20.2f}{b[name][1] * 1e3:>20.2f}{'-':>20}")
    print(f"  the serving CPU is the daemon's and its task process's, less their idle CPU; the "
          f"receiving CPU is this whole process's; bounds: tools/bench/stream_bulk.py "
          f"(one reused stream, two processes)")


if __name__ == "__main__":
    main()
