"""Onion circuits on real daemons: build time, bulk throughput, time to first byte.

    .venv/bin/python -m fognode.tools.bench.onion [--nodes 5] [--builds 20] [--mb 16] [--set KEY=VALUE]

A devnet of `--nodes` `fognode run` processes on 127.0.0.1 (the last one hosts a Python
http.server as a `.fog` service, node 0 is the client with a SOCKS port), then, in one run:
- circuit build time (onion.build on node 0, protocols.onion.hops hops; each circuit closed after) p50 / p99,
  against 3 sequential stream round trips (a libp2p stream opened from this process to
  node 1 and one request/answer on it: the registry's direct ping), since a 3-hop build is
  three sequential handshakes over streams;
- bulk throughput: `--mb` MB fetched with curl through node 0's SOCKS port from the service
  (the client's circuit of `hops` relays to a rendezvous relay joined to the service's circuit
  of `hops` relays: 2 x hops - 1 relays between the two ends, 5 with the default 3 hops, 3
  with `--set protocols.onion.hops=2`), against one raw stream between the same two daemons
  (`onion.link_test`: node 0 writes the same number of bytes of padding cells to the service's
  node over its onion link, timed until the service's node has read them all); the best of
  `--rounds` of each, interleaved, after `--warmup` raw transfers (the best raw figure of all
  is the one shown and used as the bound) and one untimed bulk transfer: a fresh Yamux
  stream's window starts at 256 KiB and grows as its window updates come back (before
  node/p2pfix_yamux.py's MIN_TUNING_RTT the raw stream stayed at 28-40 MB/s in some runs on a
  quiet machine and reached 150-250 MB/s in others);
- time to first byte through the SOCKS port: cold (descriptor fetch, introduction,
  rendezvous) and warm (the joined circuit reused);
- CPU milliseconds per MB (user + system, psutil) of every daemon during each bulk and raw
  transfer (the median over the rounds): the summed cost of a byte along the path, and the
  busiest daemon's. Unlike MB/s these hardly move with the machine's load. A circuit's bytes
  cross `links` onion links (6 on the default rendezvous path: client -> 2 relays -> the
  rendezvous relay -> 2 relays -> service, some of them on the same daemon), each costing what
  the raw stream costs, so on one machine whose cores all the daemons share, `raw MB/s / links`
  bounds what any circuit implementation over these links can reach: shown as "link bound".
- link bytes per link write during each transfer (onion.stats): what a link frame carries.
Verdicts: "circuit / link bound" against the restated target (at least BOUND_TARGET %, with
PASS/FAIL), and "circuit / one raw stream" against issue 14's target as filed (RAW_TARGET %
of one raw stream, out of reach when every daemon shares one machine's cores). The best
round of each counts; a loaded machine slows the single raw stream far more than the
circuit, so the ratio means something only on a quiet machine; compare loaded runs by CPU.
The machine's load is printed with the table: on a shared 2-core machine every figure moves.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import trio

from fognode.node.errors import RpcError
from fognode.tools.devnet import Devnet, free_port, wait_until


BOUND_TARGET = 50      # % of the link bound (raw MB/s / link crossings), the restated target
RAW_TARGET = 50        # % of one raw stream, issue 14's target as filed (out of reach on one machine)


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


async def _stream_rtts(addr: str, peer: str, n: int) -> list[float]:
    from fognode.protocols.registry import direct
    from fognode.tools.bench.attacks import hostile_peer
    out = []
    async with hostile_peer(addr) as hp:
        await trio.sleep(1.0)
        for _ in range(n):
            t = time.perf_counter()
            if await direct.ping(hp.overlay, peer, 10.0):
                out.append(time.perf_counter() - t)
    return out


def _raw_stream(sender: Any, receiver: Any, mb: int) -> float:
    """MB/s of one raw onion-link stream from `sender` to `receiver` (both daemons): from the
    onion.link_test call until the receiver's link_bytes_in has grown by what was sent."""
    before = receiver.rpc("onion.stats")["link_bytes_in"]
    t = time.perf_counter()
    sent = sender.rpc("onion.link_test", {"peer": receiver.peer_id, "mb": mb}, timeout=300)["bytes"]
    wait_until(lambda: receiver.rpc("onion.stats")["link_bytes_in"] >= before + sent or None, timeout=120,
               what="the receiver to read the link test", interval=0.01)
    return sent / (time.perf_counter() - t) / 1e6


def _cpu(nodes: list[Any]) -> list[float]:
    """CPU seconds (user + system) each daemon has used so far."""
    out = []
    for n in nodes:
        t = psutil.Process(n.proc.pid).cpu_times()
        out.append(t.user + t.system)
    return out


def _writes(nodes: list[Any]) -> tuple[int, int]:
    """(link bytes written, link writes) summed over the daemons so far."""
    stats = [n.rpc("onion.stats") for n in nodes]
    return sum(s["link_bytes_out"] for s in stats), sum(s["link_writes"] for s in stats)


def _cpu_per_mb(nodes: list[Any], mb: float, run: Any) -> tuple[Any, list[float], float]:
    """(run(), CPU ms per MB of each daemon during it, link bytes per link write during it)."""
    w0, before = _writes(nodes), _cpu(nodes)
    result = run()
    cpu = [1000 * (b - a) / mb for a, b in zip(before, _cpu(nodes))]
    w1 = _writes(nodes)
    return result, cpu, (w1[0] - w0[0]) / max(1, w1[1] - w0[1])


def _curl(port: int, url: str) -> dict[str, float]:
    fmt = "%{time_starttransfer} %{time_total} %{size_download} %{speed_download}"
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", fmt, "--max-time", "300", "--socks5-hostname",
                        f"127.0.0.1:{port}", url], capture_output=True, text=True, timeout=320)
    if r.returncode != 0:
        raise RuntimeError(f"curl failed ({r.returncode}): {r.stderr.strip()}")
    ttfb, total, size, speed = (float(x) for x in r.stdout.split())
    return {"ttfb": ttfb, "total": total, "size": size, "speed": speed}


def run(nodes: int, builds: int, mb: int, sets: list[str] | None = None, rounds: int = 3,
        warmup: int = 4) -> dict[str, Any]:
    if shutil.which("curl") is None:
        raise SystemExit("this benchmark needs curl")
    root = Path(tempfile.mkdtemp(prefix="fn-onion-bench-", dir="/tmp"))
    www = root / "www"
    www.mkdir()
    (www / "big.bin").write_bytes(os.urandom(mb * 1_000_000))
    (www / "small.txt").write_bytes(b"hello fog\n")
    hp = free_port()
    http = subprocess.Popen([sys.executable, "-m", "http.server", str(hp), "--bind", "127.0.0.1", "--directory",
                             str(www)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    net = Devnet(root / "net", nodes, extra_args=[a for kv in sets or [] for a in ("--set", kv)])
    net.create()
    socks = free_port()
    net.nodes[0].args += ["--set", f"protocols.onion.socks_port={socks}"]
    out: dict[str, Any] = {"nodes": nodes}
    try:
        net.start_all(timeout=180)
        client, service = net.nodes[0], net.nodes[-1]
        wait_until(lambda: all(n.rpc("onion.stats")["relays_known"] >= nodes - 1 for n in (client, service)) or None,
                   timeout=300, what="relays known", interval=1)
        times, failed = [], 0
        for _ in range(builds):
            try:
                c = client.rpc("onion.build", timeout=120)
            except RpcError:             # the adaptive timeout gave up (a loaded machine): counted
                failed += 1
                continue
            times.append(c["build_time"])
            client.rpc("onion.close", {"circuit": c["circuit"]})
        out["builds_failed"] = failed
        rtts = trio.run(_stream_rtts, net.nodes[1].addr, net.nodes[1].peer_id, builds)
        nan = float("nan")
        out.update(build_p50=_pct(times, 0.5) if times else nan, build_p99=_pct(times, 0.99) if times else nan,
                   rtt3=3 * statistics.median(rtts) if rtts else nan)
        svc = service.rpc("onion.add_service", {"name": "bench", "port": 80, "target": f"127.0.0.1:{hp}"})
        wait_until(lambda: service.rpc("onion.services")[0]["published"] or None, timeout=240, what="descriptor")
        base = f"http://{svc['address']}"
        cold = wait_until(lambda: _try(socks, base + "/small.txt"), timeout=180, what="first fetch", interval=2)
        warm = [_curl(socks, base + "/small.txt")["ttfb"] for _ in range(5)]
        # warm-up (its raw figures count toward the raw best, never the circuit's): a Yamux
        # stream starts with a 256 KiB window and grows it as window updates come back fast
        out["raw_warmup"] = [_raw_stream(client, service, mb) for _ in range(warmup)]
        _curl(socks, base + "/big.bin")
        bulk, raw, bulk_cpu, raw_cpu, loads, bulk_w, raw_w = [], [], [], [], [], [], []
        for _ in range(rounds):
            loads.append(os.getloadavg()[0])
            r, c, w = _cpu_per_mb(net.nodes, mb, lambda: _curl(socks, base + "/big.bin")["speed"] / 1e6)
            bulk.append(r)
            bulk_cpu.append(c)
            bulk_w.append(w)
            r, c, w = _cpu_per_mb(net.nodes, mb, lambda: _raw_stream(client, service, mb))
            raw.append(r)
            raw_cpu.append(c)
            raw_w.append(w)
        rend = [c for c in client.rpc("onion.circuits")["own"] if c["purpose"] == "rendezvous" and c["joined"]]
        hops = len(rend[0]["path"]) if rend else None
        out.update(ttfb_cold=cold["ttfb"], ttfb_warm=statistics.median(warm), circuit_mbs=max(bulk),
                   raw_mbs=max(raw + out["raw_warmup"]), bulk_all=bulk, raw_all=raw, hops=hops, loads=loads,
                   bulk_cpu=statistics.median(sum(c) for c in bulk_cpu),
                   bulk_cpu_max=statistics.median(max(c) for c in bulk_cpu),
                   raw_cpu=statistics.median(sum(c) for c in raw_cpu),
                   links=2 * hops if hops else None,
                   bulk_write=statistics.median(bulk_w), raw_write=statistics.median(raw_w))
    finally:
        http.kill()
        net.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    return out


def _try(port: int, url: str) -> dict[str, float] | None:
    try:
        return _curl(port, url)
    except RuntimeError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--builds", type=int, default=20)
    ap.add_argument("--mb", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="bulk and raw transfers, interleaved; the best is shown")
    ap.add_argument("--warmup", type=int, default=4,
                    help="raw link transfers before the rounds (the link's Yamux window grows); counted in the raw best")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a config key for every node (e.g. protocols.onion.stream_window=512)")
    a = ap.parse_args()
    r = run(a.nodes, a.builds, a.mb, a.set, a.rounds, a.warmup)
    print(f"onion on {r['nodes']} daemons, 127.0.0.1, load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'circuit build (protocols.onion.hops) p50 / p99':<44}{r['build_p50'] * 1000:>8.0f} / {r['build_p99'] * 1000:.0f} ms"
          f"  ({r['builds_failed']} of {a.builds} timed out)")
    print(f"{'3 sequential stream round trips':<44}{r['rtt3'] * 1000:>8.0f} ms")
    relays = 2 * r["hops"] - 1 if r["hops"] else "?"
    spread = lambda xs: " ".join(f"{x:.1f}" for x in xs)
    print(f"{f'bulk client -> service, {relays} relays between':<44}{r['circuit_mbs']:>8.2f} MB/s  "
          f"(rounds: {spread(r['bulk_all'])})")
    pct_raw = 100 * r["circuit_mbs"] / r["raw_mbs"]
    print(f"{'one raw link stream client -> service node':<44}{r['raw_mbs']:>8.2f} MB/s  "
          f"(rounds: {spread(r['raw_all'])})")
    print(f"{'  warm-up transfers of that stream first':<44}{'':>8}  "
          f"(MB/s: {spread(r['raw_warmup']) or 'none'}; then one bulk transfer; the best raw figure of all is the bound)")
    print(f"{'time to first byte via SOCKS: cold / warm':<44}{r['ttfb_cold'] * 1000:>8.0f} / "
          f"{r['ttfb_warm'] * 1000:.0f} ms")
    print(f"{'daemons CPU per MB: circuit / raw stream':<44}{r['bulk_cpu']:>8.0f} / {r['raw_cpu']:.0f} ms "
          f"(busiest daemon on the circuit: {r['bulk_cpu_max']:.0f} ms; loads "
          f"{' '.join(f'{x:.1f}' for x in r['loads'])})")
    print(f"{'link bytes per link write: circuit / raw':<44}{r['bulk_write'] / 1000:>8.1f} / "
          f"{r['raw_write'] / 1000:.1f} kB")
    if r["links"]:
        bound = r["raw_mbs"] / r["links"]
        pct_bound = 100 * r["circuit_mbs"] / bound
        label = f"link bound: raw / {r['links']} link crossings"
        print(f"{label:<44}{bound:>8.2f} MB/s")
        print(f"{'CPU per MB and link crossing: circuit / raw':<44}{r['bulk_cpu'] / r['links']:>8.1f} / "
              f"{r['raw_cpu']:.1f} ms")
        print(f"{'circuit / link bound':<44}{pct_bound:>8.0f} %  (target >= {BOUND_TARGET} %: "
              f"{'PASS' if pct_bound >= BOUND_TARGET else 'FAIL'})")
    print(f"{'circuit / one raw stream':<44}{pct_raw:>8.0f} %  (issue 14 as filed asks >= {RAW_TARGET} %: "
          f"{'PASS' if pct_raw >= RAW_TARGET else 'FAIL'})")


if __name__ == "__main__":
    main()
