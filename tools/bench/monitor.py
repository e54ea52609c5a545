"""Monitoring overhead: event-loop lag and CPU of nodes with history + detectors on against off.

    python -m fognode.tools.bench.monitor [--seconds 60] [--interval 10] [--pairs 2]

Starts `pairs` x 2 real daemons in one devnet, all connected, at the same time on the same
machine: half with the monitor sampling every `--interval` seconds into its ring files with
the detectors and one alert rule on, half with history and detectors off and sampling once
an hour (the "off" baseline). After a 5 s settle it measures over `--seconds`:
- CPU seconds per wall second of each process (psutil), mean of each group,
- p99 event-loop lag over the window (from fognode_node_event_loop_lag_seconds buckets),
- the monitor's own cost: mean time of one sample (fognode_monitor_sample_seconds) divided by
  the interval, the share of one core the monitoring takes (independent of machine load).
Target (issue 17): under 2 % CPU, no p99 lag change. Run `--interval 1` for a stress figure.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from fognode.tools.devnet import Devnet, free_port


def scrape(port: int) -> dict[tuple[str, str], float]:
    """{(name, le or ''): value} of the lag histogram buckets and the monitor's sample timing."""
    out: dict[tuple[str, str], float] = {}
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(("fognode_node_event_loop_lag_seconds_bucket", "fognode_monitor_sample_seconds_sum",
                            "fognode_monitor_sample_seconds_count")):
            name, value = line.rsplit(" ", 1)
            le = name.split('le="', 1)[1].split('"', 1)[0] if 'le="' in name else ""
            out[(name.split("{", 1)[0], le)] = float(value)
    return out


def p99(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> float:
    buckets = sorted(((float(le), after[k] - before.get(k, 0.0)) for k in after
                      if k[0].endswith("_bucket") for le in [k[1]]), key=lambda x: x[0])
    total = buckets[-1][1]
    for le, c in buckets:
        if c >= 0.99 * total:
            return le
    return float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--pairs", type=int, default=2)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fn-bench-mon-", dir="/tmp"))
    n = 2 * args.pairs
    try:
        net = Devnet(root / "net", n)
        net.create()
        ports = []
        for i, node in enumerate(net.nodes):
            port = free_port()
            ports.append(port)
            sampling = i % 2 == 0
            node.args += ["--metrics-port", str(port), "--set",
                          f"protocols.monitor.sample_interval={args.interval if sampling else 3600}",
                          "--set", f"protocols.monitor.history={'true' if sampling else 'false'}",
                          "--set", f"protocols.monitor.detectors={'true' if sampling else 'false'}"]
            if sampling:
                node.args += ["--set", 'protocols.monitor.alerts=[{metric = "node.peers", op = "<", threshold = 1}]']
        net.start_all(timeout=120)
        time.sleep(5)   # settle (measurement window, not synchronisation)
        procs = [psutil.Process(node.proc.pid) for node in net.nodes if node.proc is not None]
        cpu0 = [p.cpu_times() for p in procs]
        m0 = [scrape(p) for p in ports]
        t0 = time.monotonic()
        time.sleep(args.seconds)   # the measured window
        wall = time.monotonic() - t0
        cpu1 = [p.cpu_times() for p in procs]
        m1 = [scrape(p) for p in ports]
        rows = []
        for i in range(n):
            cpu = (cpu1[i].user + cpu1[i].system - cpu0[i].user - cpu0[i].system) / wall
            s_n = m1[i].get(("fognode_monitor_sample_seconds_count", ""), 0) - \
                m0[i].get(("fognode_monitor_sample_seconds_count", ""), 0)
            s_sum = m1[i].get(("fognode_monitor_sample_seconds_sum", ""), 0) - \
                m0[i].get(("fognode_monitor_sample_seconds_sum", ""), 0)
            rows.append((i % 2 == 0, cpu, p99(m0[i], m1[i]), s_sum / s_n if s_n else 0.0, s_n))
        net.stop_all()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    on = [r for r in rows if r[0]]
    off = [r for r in rows if not r[0]]
    tick = statistics.mean(r[3] for r in on)
    print(f"{n} nodes, {args.seconds:g} s window, monitor interval {args.interval:g} s, load {psutil.getloadavg()[0]:.1f}")
    print(f"{'measure':<46} {'on':>10} {'off':>10}")
    print(f"{'process CPU, mean (% of one core)':<46} {100 * statistics.mean(r[1] for r in on):>10.2f} "
          f"{100 * statistics.mean(r[1] for r in off):>10.2f}")
    print(f"{'event-loop lag p99, worst node (s)':<46} {max(r[2] for r in on):>10.3f} {max(r[2] for r in off):>10.3f}")
    print(f"{'one sample+record+detect, mean CPU (ms)':<46} {1000 * tick:>10.3f} {'-':>10}")
    print(f"{'monitoring share of one core (tick/interval, %)':<46} {100 * tick / args.interval:>10.3f} "
          f"{'< 2':>10}")


if __name__ == "__main__":
    main()
