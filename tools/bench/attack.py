"""Hostile peers against a real daemon: the victim's RSS, CPU and `node.info` p99 under each
attack of `tools/bench/attacks/`, next to the same figures idle, measured in the same run.

    python -m fognode.tools.bench.attack [--seconds 20] [--only idle_streams,gap_bomb]

Starts a 3-node devnet on 127.0.0.1 (every node a validator of one genesis; node 0 is the
victim), and runs honest work the whole time: node 1 sends `--tx-rate` transfers a second to
node 2 (each one
needs the victim's or node 2's vote, so it crosses the order streams) and the certificates
gossip to every replica. First an idle window of `--seconds`, then one window per attack:
the attack module's `attack(victim_multiaddr, seconds=...)` runs in a process of its own (its
CPU is not charged to this one), while this process samples the victim. Per window:

- RSS of the victim process (max over the window), against 2x its idle RSS;
- CPU of the victim process (user + system over wall time);
- `node.info` p99 round trip over the victim's control socket, polled every 50 ms, against
  50 ms;
- honest transfers that became final per second (node 1 -> node 2), against none (they must
  keep flowing: at least half the idle rate);
- the victim's applied certificates at the end equal node 2's (gossip and sync still reach it).

The table shows each figure with its bound; the exit code is 1 when any attack misses one.
"""
from __future__ import annotations

import argparse
import json
import pkgutil
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

RSS_BOUND = 2.0          # x idle RSS
INFO_P99_BOUND_MS = 50.0
HONEST_FLOOR = 0.5       # fraction of the idle transfer rate that must keep flowing

_ATTACK_RUNNER = (
    "import json, sys, trio, importlib\n"
    "m = importlib.import_module('fognode.tools.bench.attacks.' + sys.argv[1])\n"
    "out = trio.run(lambda: m.attack(sys.argv[2], seconds=float(sys.argv[3])))\n"
    "print('RESULT ' + json.dumps(out), flush=True)\n")


def attack_names() -> list[str]:
    """Every attack module of tools/bench/attacks, sorted."""
    from fognode.tools.bench import attacks
    return sorted(m.name for m in pkgutil.iter_modules(attacks.__path__) if not m.name.startswith("_"))


@dataclass
class Window:
    """What one measurement window saw."""

    name: str
    seconds: float
    rss_max: int = 0
    cpu: float = 0.0
    info_ms: list[float] = field(default_factory=list)
    info_errors: int = 0
    final: int = 0
    send_errors: int = 0
    attack: dict[str, Any] = field(default_factory=dict)
    attack_error: str = ""

    @property
    def p99(self) -> float:
        xs = sorted(self.info_ms)
        return xs[min(len(xs) - 1, int(0.99 * len(xs)))] if xs else float("inf")

    @property
    def tx_rate(self) -> float:
        return self.final / self.seconds


class Honest:
    """Node 1 sends small transfers to node 2 at `rate` per second (one at a time), counting
    finals: an offered load, so the victim's CPU is not all honest work."""

    def __init__(self, net: Any, to: str, rate: float) -> None:
        self.net = net
        self.to = to
        self.gap = 1.0 / rate
        self.final = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            try:
                self.net.nodes[1].rpc("wallet.send", [self.to, "0.001"], timeout=30)
                self.final += 1
            except Exception:  # counted: a failed send is what the bench reports
                self.errors += 1
            due = max(due + self.gap, time.monotonic() - 1.0)
            self._stop.wait(max(0.0, due - time.monotonic()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=40)


def measure(net: Any, honest: Honest, name: str, seconds: float,
            attack: subprocess.Popen[str] | None) -> Window:
    """Sample the victim for `seconds` (or until the attack process exits, if later)."""
    victim = net.nodes[0]
    proc = psutil.Process(victim.proc.pid)
    w = Window(name, seconds)
    f0, e0 = honest.final, honest.errors
    c0 = proc.cpu_times()
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds or (attack is not None and attack.poll() is None
                                               and time.monotonic() - t0 < seconds + 60):
        w.rss_max = max(w.rss_max, proc.memory_info().rss)
        t = time.perf_counter()
        try:
            victim.rpc("node.info", timeout=10)
            w.info_ms.append(1000 * (time.perf_counter() - t))
        except Exception:  # counted: a failed node.info is a missed bound
            w.info_errors += 1
            w.info_ms.append(10_000.0)
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    c1 = proc.cpu_times()
    w.seconds = elapsed
    w.cpu = (c1.user + c1.system - c0.user - c0.system) / elapsed
    w.final, w.send_errors = honest.final - f0, honest.errors - e0
    if attack is not None:
        try:
            out, err = attack.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            attack.kill()
            out, err = attack.communicate()
            w.attack_error = "did not stop in time (killed)"
        for line in out.splitlines():
            if line.startswith("RESULT "):
                w.attack = json.loads(line[7:])
        if attack.returncode and not w.attack_error:
            w.attack_error = (err.strip().splitlines() or [f"exit {attack.returncode}"])[-1][:160]
    return w


def run(seconds: float, only: list[str], tx_rate: float) -> int:
    from fognode.tools.devnet import Devnet, wait_until

    names = only or attack_names()
    root = Path(tempfile.mkdtemp(prefix="fa-", dir="/tmp"))   # short: unix socket paths
    net = Devnet(root / "net", 3, extra_args=["--set", "overlay.peers_low=2",
                                              "--set", "overlay.connmgr_interval=0.5"])
    try:
        net.create()
        net.start_all(timeout=120)
        wait_until(lambda: all(len(n.rpc("node.peers")) == 2 for n in net.nodes), timeout=60,
                   what="3 daemons connected")
        to = net.nodes[2].rpc("wallet.address")["address"]
        honest = Honest(net, to, tx_rate)
        honest.start()
        print(f"victim {net.nodes[0].addr} (pid {net.nodes[0].proc.pid}); idle window {seconds:.0f} s",
              flush=True)
        idle = measure(net, honest, "idle", seconds, None)
        windows = []
        for name in names:
            print(f"attack {name} for {seconds:.0f} s ...", flush=True)
            proc = subprocess.Popen([sys.executable, "-c", _ATTACK_RUNNER, name, net.nodes[0].addr, str(seconds)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            windows.append(measure(net, honest, name, seconds, proc))
            if not net.nodes[0].alive():
                print(f"the victim died during {name}:\n{net.log_tail(0)}")
                break
            time.sleep(min(5.0, seconds / 4))   # let the victim settle before the next window
        honest.stop()
        try:
            wait_until(lambda: net.nodes[0].rpc("ledger.state_root")["state_root"]
                       == net.nodes[2].rpc("ledger.state_root")["state_root"], timeout=60,
                       what="the victim's replica to reach node 2's state root")
            converged = "yes"
        except TimeoutError:
            converged = "NO"
        return report(idle, windows, converged)
    finally:
        net.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def report(idle: Window, windows: list[Window], converged: str) -> int:
    mib = 1 << 20
    rows = [("window", "RSS MiB (bound)", "CPU %", "node.info p99 ms (bound)", "honest tx/s (floor)", "attack did")]
    rows.append(("idle", f"{idle.rss_max / mib:.0f}", f"{100 * idle.cpu:.0f}", f"{idle.p99:.1f} ({INFO_P99_BOUND_MS:.0f})",
                 f"{idle.tx_rate:.1f}", ""))
    failed = []
    for w in windows:
        ok_rss = w.rss_max <= RSS_BOUND * idle.rss_max
        ok_p99 = w.p99 <= INFO_P99_BOUND_MS
        ok_tx = w.tx_rate >= HONEST_FLOOR * idle.tx_rate
        ok = ok_rss and ok_p99 and ok_tx and not w.attack_error
        if not ok:
            failed.append(w.name)
        did = w.attack_error or ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                                          for k, v in w.attack.items())
        rows.append((w.name + ("" if ok else " (MISSED)"),
                     f"{w.rss_max / mib:.0f} ({RSS_BOUND * idle.rss_max / mib:.0f})",
                     f"{100 * w.cpu:.0f}", f"{w.p99:.1f} ({INFO_P99_BOUND_MS:.0f})",
                     f"{w.tx_rate:.1f} ({HONEST_FLOOR * idle.tx_rate:.1f})", did))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    print()
    for r in rows:
        print("  " + "  ".join(c.ljust(wd) for c, wd in zip(r, widths)) + "  " + r[-1])
    print(f"\n  node.info samples per window: {statistics.median([len(w.info_ms) for w in [idle, *windows]]):.0f}; "
          f"victim converged to node 2's state root after the attacks: {converged}")
    if failed or converged != "yes":
        print(f"  missed: {', '.join(failed) or 'convergence'}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each window (idle and per attack)")
    ap.add_argument("--only", default="", help=f"comma-separated attacks (default: all of {', '.join(attack_names())})")
    ap.add_argument("--tx-rate", type=float, default=5.0, help="honest transfers offered per second")
    args = ap.parse_args(argv)
    only = [a for a in args.only.split(",") if a]
    unknown = set(only) - set(attack_names())
    if unknown:
        ap.error(f"unknown attack(s): {', '.join(sorted(unknown))}; known: {', '.join(attack_names())}")
    sys.exit(run(args.seconds, only, args.tx_rate))


if __name__ == "__main__":
    main()
