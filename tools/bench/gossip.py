"""Gossip delivery benchmark: our Overlay vs plain py-libp2p GossipSub, separate processes.

    .venv/bin/python -m fognode.tools.bench.gossip            # 10 and 25 nodes
    .venv/bin/python -m fognode.tools.bench.gossip --nodes 10 # one size

For each size and setup, N node processes (sys.executable, tools/bench/gossip_node.py) start on
127.0.0.1, each bootstrapped to up to 3 earlier nodes; the parent drives them over stdin/stdout
lines. Phases:
- latency: one node publishes `--lat-msgs` 256-byte messages `--lat-gap-ms` apart; for each message the
  latency to the LAST receiver (publish -> handler call, CLOCK_MONOTONIC shared by processes);
  p50/p99 over messages, and how many reached every receiver;
- throughput: the same node publishes `--tput-msgs` messages as fast as `publish()` returns;
  sustained msgs/s = messages that reached every receiver / (last delivery - first publish).
  Our overlay queues such a burst at once and sends it in batches of up to 64 messages per
  libp2p message (node/gossip_outbox.py), paced at gossip_max_rate (500/s): 40 messages leave
  as one batch, so the figure is then 40 / the time that batch takes to reach the last node;
  `--tput-msgs 200` or more measures the paced, sustained regime.
Printed with each figure: the bound (the machine's signature work: cores / (nodes x 2 Ed25519
verifications), the verification timed in the same run), the figure as a percentage of it, the
CPU time per message per node over the throughput phase (all node processes, less their idle
rate), and the overlay's drops, refusals and losses. `--diag` prints to stderr how the
throughput phase's wait ended (complete, or given up after 3 s with no new delivery) and, when
short, every node's connections, mesh and gossip counters then and 15 s later (do the messages
come late? did the publisher's `publishes_total` move?). `--timeline` prints, per throughput
message, its publish time and first and last delivery, and how many receivers pulled it.
"plain" is py-libp2p GossipSub with only what it needs to run at all (Noise, Yamux,
max_connections_per_peer=1, spam protection off, 1 s heartbeat), reading the subscription
directly: no envelope, no sequence numbers or pulls, no pacing, no connection manager.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil

from fognode.tools.bench.gossip_node import MSG_SIZE, TOPIC


# ---------------------------------------------------------------------------------------------
# parent

@dataclass
class Child:
    proc: subprocess.Popen[str]
    addr: str = ""
    pulled_seen: float = 0.0

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, word: str, timeout: float = 90.0) -> list[str]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"node exited (rc {self.proc.poll()}) before {word}")
            parts = line.split(" ", 1)
            if parts[0] == word:
                return parts[1].strip().split(" ") if len(parts) > 1 and word != "DUMP" \
                    else [parts[1] if len(parts) > 1 else ""]
        raise RuntimeError(f"timed out waiting for {word}")


def _spawn(mode: str, bootstrap: list[str], peers_low: int, peers_high: int) -> Child:
    cmd = [sys.executable, "-m", "fognode.tools.bench.gossip_node", mode, str(peers_low),
           str(peers_high), *bootstrap]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, bufsize=1)
    return Child(p)


@dataclass
class Result:
    nodes: int
    setup: str
    p50_ms: float
    p99_ms: float
    lat_complete: str
    msgs_per_s: float
    tput_complete: str
    pulled: int
    conns: float
    mesh: float
    timeline: list[str]
    cpu_ms: float        # CPU ms per message per node over the throughput phase (all nodes)
    drops: str           # the overlay's drops, refusals and losses by reason, all nodes


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _settle(children: list[Child], publisher: int, want: int, quiet: float = 3.0,
            limit: float = 60.0) -> str:
    """Wait until every receiver holds `want` messages, or nothing arrived for `quiet` s;
    returns how it ended (for --diag)."""
    last_total, last_change, t0 = -1, time.monotonic(), time.monotonic()
    counts: list[int] = []
    while time.monotonic() - t0 < limit:
        counts = _counts(children)
        del counts[publisher]
        if min(counts) >= want:
            return f"complete after {time.monotonic() - t0:.2f} s"
        if sum(counts) != last_total:
            last_total, last_change = sum(counts), time.monotonic()
        elif time.monotonic() - last_change > quiet:
            return (f"gave up after {time.monotonic() - t0:.2f} s ({quiet:.0f} s of no "
                    f"arrivals), receivers' counts {counts}")
        time.sleep(0.25)
    return f"limit {limit:.0f} s reached, receivers' counts {counts}"


def _counts(children: list[Child]) -> list[int]:
    """Each node's deliveries since its last DUMP."""
    for c in children:
        c.send("COUNT")
    return [int(c.expect("COUNT")[0]) for c in children]


def _diag(children: list[Child], what: str) -> None:
    """--diag: every node's connections, mesh, pulls and gossip counters, to stderr."""
    for c in children:
        c.send("PEERS")
    peers = [c.expect("PEERS") for c in children]
    for c in children:
        c.send("METRICS")
    mets = [c.expect("METRICS")[0] for c in children]
    for c in children:
        c.send("GSTATE")
    routers = [c.expect("GSTATE")[0] for c in children]
    for k, (p, m) in enumerate(zip(peers, mets)):
        prunes = json.loads(routers[k]).get("prunes", {})
        print(f"DIAG {what} node {k}: conns {p[0]} topic {p[1]} mesh {p[3]} pulled {p[2]} {m} "
              f"prunes {json.dumps(prunes).replace(' ', '')}", file=sys.stderr, flush=True)
        if int(p[3]) < min(4, int(p[0])):      # a mesh short of D_low: the router's view
            print(f"DIAG {what} node {k} router: {routers[k]}", file=sys.stderr, flush=True)


def _dump(children: list[Child], publisher: int) -> dict[int, list[tuple[float, float, bool]]]:
    """message id -> (sent, received, pulled) at each receiver (publisher excluded); `pulled`
    when the node's pull counter moved with this delivery (the overlay's only)."""
    for c in children:
        c.send("DUMP")
    per_msg: dict[int, list[tuple[float, float, bool]]] = {}
    for k, c in enumerate(children):
        rows = json.loads(c.expect("DUMP")[0])
        last = c.pulled_seen
        for i, t_send, t_recv, pulled in sorted(rows, key=lambda r: r[2]):
            if k != publisher:
                per_msg.setdefault(i, []).append((t_send, t_recv, pulled > last))
            last = max(last, pulled)
        c.pulled_seen = last
    return per_msg


def _timeline(per_msg: dict[int, list[tuple[float, float, bool]]], t_first: float,
              receivers: int) -> list[str]:
    """One line per message of the throughput phase: publish, first and last delivery (ms
    after the first publish), how many receivers got it and how many of those pulled it."""
    out = [f"{'msg':>4} {'publish':>8} {'first':>8} {'last':>8} {'got':>5} {'pulled':>6}"]
    for i in sorted(per_msg):
        v = per_msg[i]
        out.append(f"{i:>4} {(v[0][0] - t_first) * 1e3:>8.1f} "
                   f"{(min(r for _, r, _ in v) - t_first) * 1e3:>8.1f} "
                   f"{(max(r for _, r, _ in v) - t_first) * 1e3:>8.1f} "
                   f"{len(v):>2}/{receivers:<2} {sum(p for _, _, p in v):>6}")
    return out


def run_one(n: int, mode: str, lat_msgs: int, lat_gap_ms: int, tput_msgs: int,
            peers_low: int, warmup: float = 3.0, plain_dials: int = 3,
            peers_high: int = 10, idle: float = 3.0, diag: bool = False) -> Result:
    rnd = random.Random(n)
    children: list[Child] = []
    try:
        first = _spawn(mode, [], peers_low, peers_high)
        first.addr = first.expect("READY")[0]
        children.append(first)
        while len(children) < n:                     # waves of 1, 2, 4, 6, 6, ... in parallel
            ready = [c.addr for c in children]
            dials = 3 if mode == "ours" else plain_dials
            wave = [_spawn(mode, rnd.sample(ready, min(dials, len(ready))), peers_low, peers_high)
                    for _ in range(min(len(ready), 6, n - len(children)))]
            for c in wave:
                c.addr = c.expect("READY")[0]
            children.extend(wave)
        want_mesh = min(3, n - 1)
        for c in children:
            c.send(f"MESH {want_mesh}")
        for c in children:
            c.expect("MESHOK")
        time.sleep(warmup)      # let connection managers and meshes settle (both setups)
        pub = 1
        receivers = n - 1
        # latency: spaced out so the network is not saturated
        children[pub].send(f"PUB {lat_msgs} {lat_gap_ms}")
        children[pub].expect("PUBDONE", timeout=300)
        _settle(children, pub, lat_msgs)
        per_msg = _dump(children, pub)
        full = [max(r for _, r, _ in v) - v[0][0] for v in per_msg.values() if len(v) >= receivers]
        full = [x * 1000 for x in full]
        lat = (_pct(full, 0.5), _pct(full, 0.99), f"{len(full)}/{lat_msgs}")
        # throughput: back to back
        procs = [psutil.Process(c.proc.pid) for c in children]
        cpu0, w0 = sum(_cpu(p) for p in procs), time.monotonic()
        time.sleep(idle)                # the nodes' own background work, to subtract
        cpu1, w1 = sum(_cpu(p) for p in procs), time.monotonic()
        if diag:
            _diag(children, "before throughput")
        children[pub].send(f"PUB {tput_msgs} 0")
        t_first = float(children[pub].expect("PUBDONE", timeout=300)[0])
        ended = _settle(children, pub, tput_msgs)
        if diag:
            print(f"DIAG {n} nodes, publisher {pub}: throughput settle {ended}",
                  file=sys.stderr, flush=True)
            if not ended.startswith("complete"):
                _diag(children, "after settle")
                t_late = time.monotonic()
                while time.monotonic() - t_late < 15:       # do the messages come later?
                    time.sleep(1.0)
                    print(f"DIAG +{time.monotonic() - t_late:.0f} s counts "
                          f"{_counts(children)}", file=sys.stderr, flush=True)
                _diag(children, "15 s later")
        busy = (sum(_cpu(p) for p in procs) - cpu1
                - (cpu1 - cpu0) / (w1 - w0) * (time.monotonic() - w1))
        cpu_ms = busy * 1000 / (tput_msgs * n)
        per_msg = _dump(children, pub)
        timeline = _timeline(per_msg, t_first, receivers)
        complete = [max(r for _, r, _ in v) for v in per_msg.values() if len(v) >= receivers]
        rate = len(complete) / (max(complete) - t_first) if complete else 0.0
        for c in children:
            c.send("PEERS")
        peers = [c.expect("PEERS") for c in children]
        if diag:
            print(f"DIAG {n} nodes at the end: conns {[int(p[0]) for p in peers]} mesh "
                  f"{[int(p[3]) for p in peers]}", file=sys.stderr, flush=True)
        pulled = sum(int(p[2]) for p in peers)
        drops: dict[str, float] = {}
        if mode == "ours":
            for c in children:
                c.send("DROPS")
            for c in children:
                for k, v in json.loads(c.expect("DROPS")[0]).items():
                    drops[k] = drops.get(k, 0.0) + v
        conns = statistics.mean(int(p[0]) for p in peers)
        mesh = statistics.mean(int(p[3]) for p in peers)
        setup = f"overlay {peers_low}-{peers_high}" if mode == "ours" else "plain gossipsub"
        return Result(n, setup, lat[0],
                      lat[1], lat[2], rate, f"{len(complete)}/{tput_msgs}", pulled, conns, mesh, timeline, cpu_ms,
                      ", ".join(f"{k} {v:.0f}" for k, v in sorted(drops.items())))
    finally:
        for c in children:
            try:
                c.send("QUIT")
            except (BrokenPipeError, OSError):
                pass
        for c in children:
            try:
                c.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                c.proc.kill()


def _verify_us(n: int = 20, repeat: int = 300) -> float:
    """Microseconds per Ed25519 verification of a signed 256-byte message: the best of
    `repeat` short timings, so that on a loaded machine some of them run uncontended (the
    machine's cost, not the load's)."""
    import timeit

    from nacl.signing import SigningKey
    key = SigningKey(os.urandom(32))
    signed = key.sign(os.urandom(MSG_SIZE))
    vk = key.verify_key
    return min(timeit.repeat(lambda: vk.verify(signed), number=n, repeat=repeat)) / n * 1e6


def _envelope_cost(n: int = 2000) -> tuple[float, float]:
    """Microseconds to seal and to open+verify one 256-byte gossip envelope."""
    import timeit

    from nacl.signing import SigningKey

    from fognode.node.gossip import KIND_MESSAGE, open_envelope, seal
    key = SigningKey(os.urandom(32))
    data = os.urandom(MSG_SIZE)
    env = seal(key, KIND_MESSAGE, 1, TOPIC, 1, data)
    t_seal = timeit.timeit(lambda: seal(key, KIND_MESSAGE, 1, TOPIC, 1, data), number=n)
    t_open = timeit.timeit(lambda: open_envelope(env.raw, max_size=1 << 20), number=n)
    return t_seal / n * 1e6, t_open / n * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, action="append",
                    help="network size (repeatable; default 10 and 25)")
    ap.add_argument("--lat-msgs", type=int, default=20)
    ap.add_argument("--lat-gap-ms", type=int, default=300)
    ap.add_argument("--tput-msgs", type=int, default=40)
    ap.add_argument("--peers-low", type=int, default=3,
                    help="overlay peers_low (3 = about the plain setup's topology; the "
                         "node.toml default 8 makes a 10-node net a full mesh)")
    ap.add_argument("--peers-high", type=int, default=10,
                    help="overlay peers_high: trims what DHT lookups leave open (node.toml: 32)")
    ap.add_argument("--plain-dials", type=int, default=6,
                    help="peers each plain node dials (the overlay dials 3 and finds more "
                         "through the DHT; 6 gives about the same number of connections)")
    ap.add_argument("--timeline", action="store_true",
                    help="also print each throughput message's publish, first and last "
                         "delivery times and how many receivers pulled it")
    ap.add_argument("--diag", action="store_true",
                    help="print to stderr how the throughput phase's wait ended and, when "
                         "it ended short, every node's connections, mesh and gossip counters "
                         "then and 15 s later, with the delivery counts in between")
    ap.add_argument("--setups", choices=("both", "ours", "plain"), default="both",
                    help="which setups to run (default both: plain is the reference)")
    args = ap.parse_args(argv)
    sizes = args.nodes or [10, 25]
    results: list[Result] = []
    t0 = time.monotonic()
    for n in sizes:
        for mode in ("ours", "plain") if args.setups == "both" else (args.setups,):
            results.append(run_one(n, mode, args.lat_msgs, args.lat_gap_ms, args.tput_msgs,
                                   args.peers_low, plain_dials=args.plain_dials,
                                   peers_high=args.peers_high, diag=args.diag))
            r = results[-1]
            print(f"  ... {n} nodes, {r.setup}: done at {time.monotonic() - t0:.0f} s",
                  file=sys.stderr, flush=True)
    seal_us, open_us = _envelope_cost()
    verify_us = _verify_us()
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    print(f"gossip to the last receiver, {MSG_SIZE}-byte messages, one process per node "
          f"(loopback, {cores} cores, load average {load:.1f} at the end)")
    print(f"{'nodes':>5}  {'setup':<16} {'p50 ms':>8} {'p99 ms':>8} {'all got':>9} "
          f"{'msgs/s':>8} {'all got':>9} {'bound':>6} {'% bnd':>6} {'cpu ms':>6} "
          f"{'pulled':>7} {'peers':>6} {'mesh':>5}")
    for r in results:
        bound = cores / (r.nodes * 2 * verify_us * 1e-6)
        print(f"{r.nodes:>5}  {r.setup:<16} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} "
              f"{r.lat_complete:>9} {r.msgs_per_s:>8.1f} {r.tput_complete:>9} {bound:>6.0f} "
              f"{100 * r.msgs_per_s / bound:>6.1f} {r.cpu_ms:>6.2f} {r.pulled:>7} "
              f"{r.conns:>6.1f} {r.mesh:>5.1f}")
    for r in results:
        if r.drops:
            print(f"{r.nodes} nodes, {r.setup}: drops, refusals and losses (all nodes, both "
                  f"phases): {r.drops}")
    for r in results if args.timeline else []:
        print(f"\nthroughput timeline, {r.nodes} nodes, {r.setup} (ms after the first publish)")
        print("\n".join(r.timeline))
    print(f"our per-message CPU: seal+sign {seal_us:.0f} us at the publisher, decode+verify "
          f"{open_us:.0f} us per receiver; one Ed25519 verification {verify_us:.0f} us (best of 300 x 20)")
    print(f"bound = the signature work's ceiling: {cores} cores / (nodes x 2 verifications x "
          f"{verify_us:.0f} us) msgs/s; '% bnd' = msgs/s against it; 'cpu ms' = CPU time of "
          "all node processes during the throughput phase, less their idle rate measured for 3 s "
          "before it, per message per node")
    print(f"latency: {args.lat_gap_ms} ms apart; msgs/s: published back to back, counted when every receiver "
          "had it; 'all got' = messages that reached every receiver; 'pulled' = deliveries "
          "the overlay fetched over the pull stream after gossip lost them. Plain GossipSub is "
          "the bound measured in the same run. peers/mesh: average connections and GossipSub mesh "
          "size per node.")


if __name__ == "__main__":
    main()
