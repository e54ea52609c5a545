"""Market benchmark, jobs: a small WASM job end to end on loopback, and a burst, each against
the same WASM run locally with wasmtime in the same run.

    .venv/bin/python -m fognode.tools.bench.market_jobs [--rounds 50000] [--tasks 200]
                                                        [--burst-rounds 20000] [--providers 4]
    (also: python -m fognode.tools.bench.market --jobs)

A devnet of 1 + `providers` real daemons on 127.0.0.1 (`fognode.tools.devnet.Devnet`, job
processes at nice 0, debit notes every second); each provider offers compute.wasm at 0.5 token
per million fuel. Rows:

- local: `wasm_engine.execute` of work(rounds) in this process (compile + instantiate + run,
  fuel metered), the best of 3;
- end to end (after one warm-up job on every provider: the first streams between the nodes):
  `market.request` on the customer's socket, request to verified result, split as
  the customer measured it: negotiation (demand matched, agreement signed by both), escrow
  (job stream opened, payee statement, escrow order certified, provider told), transfer (the
  module sent, hash-checked on arrival), execution (task sent to result back, including the
  provider's child process start), debit notes (end, the final debit request and the
  customer's co-signed note); then settlement: until the provider's payout against that note
  is certified and applied (polled on the provider). The escrow refund waits for the
  agreement's deadline by design and is not timed here;
- burst: `market.burst` of `tasks` tasks work(burst_rounds + i) over `providers` providers,
  request to all results, against the same tasks run one after the other in this process (one
  local core); and the CPU seconds the burst cost: the job processes (the daemons' reaped
  children, read once the providers' job processes are gone) against the local run's CPU,
  and the daemons themselves (everything they do meanwhile, background work included). Job
  CPU barely depends on what else the machine runs, unlike wall time. Tasks that did not end
  `ok` are listed by why, with the providers found dead or outvoted.
The machine's load is printed: on a shared 2-core machine these are upper bounds.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import wasmtime

from fognode.protocols.harvest.wasm_engine import execute
from fognode.tools.bench.harvest import xorshift_func
from fognode.tools.devnet import Devnet, DevnetNode, wait_until

WORK_WAT = f"(module {xorshift_func('work')})"   # the harvest benchmark's kernel, exported as `work`
SETTINGS = ["--set", "protocols.harvest.market_nice=0", "--set", "protocols.market.debit_interval=1"]


def local_run(module: bytes, n: int, fuel: int) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = execute(module, "work", args=(n,), fuel=fuel, memory_bytes=65536, max_output=64)
    return time.perf_counter() - t0, out


def cpu_seconds(nodes: list[DevnetNode]) -> tuple[float, float]:
    """CPU seconds the daemons used so far, and their reaped children (the job processes)."""
    own = jobs = 0.0
    for n in nodes:
        if n.proc is not None:
            t = psutil.Process(n.proc.pid).cpu_times()
            own += t.user + t.system
            jobs += t.children_user + t.children_system
    return own, jobs


def jobs_gone(nodes: list[DevnetNode]) -> bool:
    """No daemon has a child process left (their job processes were reaped)."""
    return all(n.proc is None or not psutil.Process(n.proc.pid).children() for n in nodes)


def row(name: str, seconds: float, note: str = "") -> None:
    print(f"{name:<34} {seconds * 1000:>10.1f} ms  {note}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=50_000)
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--burst-rounds", type=int, default=20_000)
    ap.add_argument("--providers", type=int, default=4)
    args = ap.parse_args(argv)
    module = bytes(wasmtime.wat2wasm(WORK_WAT))
    fuel = 26 * args.rounds + 10_000          # about 26 fuel per round
    root = Path(tempfile.mkdtemp(prefix="fn-bench-market-", dir="/tmp"))
    wat = root / "work.wat"
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with Devnet(root / "net", 1 + args.providers, extra_args=SETTINGS) as net:
        net.create()
        net.start_all(timeout=180)
        wat.write_text(WORK_WAT)
        c, providers = net.nodes[0], net.nodes[1:]
        for p in providers:
            p.rpc("market.offer", {"price": "0.5", "cores": 1, "memory_mib": 256})
        wait_until(lambda: len(c.rpc("market.offers")) == len(providers) or None, timeout=60,
                   what="every offer in the customer's book")
        # a warm-up job (first streams between the nodes, the providers' first job process)
        c.rpc("market.request", {"module": str(wat), "export": "work", "args": [1], "fuel": 10_000,
                                 "budget": "4", "seconds": 120, "replication": len(providers)},
              timeout=300)
        best = min(local_run(module, args.rounds, fuel)[0] for _ in range(3))
        _, want = local_run(module, args.rounds, fuel)
        print(f"-- one job: work({args.rounds}), {want.fuel_consumed} fuel")
        row("local wasmtime (compile+run)", best)
        t0 = time.perf_counter()
        r = c.rpc("market.request", {"module": str(wat), "export": "work", "args": [args.rounds],
                                     "fuel": fuel, "budget": "5", "seconds": 120}, timeout=300)
        total = time.perf_counter() - t0
        assert r["status"] == "ok" and r["results"] == list(want.results), r
        provider = next(p for p in providers if p.peer_id in r["providers"])
        cid = r["contracts"][0]
        due = c.rpc("market.contract", [cid])["due"]
        wait_until(lambda: provider.rpc("market.contract", [cid])["paid"] == due or None,
                   timeout=120, what="the provider's payout", interval=0.02)
        settled = time.perf_counter() - t0
        row("end to end (request -> result)", total, f"{total / best:.0f}x local")
        for k, v in r["seconds"].items():
            row(f"  {k}", v)
        row("  settlement (payout applied)", settled - total)
        burst_fuel = 26 * (args.burst_rounds + args.tasks) + 10_000
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(args.tasks):
            local_run(module, args.burst_rounds + i, burst_fuel)
        local, local_cpu = time.perf_counter() - t0, time.process_time() - c0
        per = -(-args.tasks // args.providers) * burst_fuel
        budget = Decimal(per) / 10**6 * Decimal("0.5") * args.providers + 1
        print(f"-- burst: {args.tasks} tasks work({args.burst_rounds}+i) over {args.providers} providers")
        row("one local core", local)
        wait_until(lambda: jobs_gone(net.nodes) or None, timeout=60, what="the job processes gone")
        cpu0 = cpu_seconds(net.nodes)
        t0 = time.perf_counter()
        b = c.rpc("market.burst", {"module": str(wat), "export": "work", "count": args.tasks,
                                   "first": args.burst_rounds, "providers": args.providers,
                                   "fuel": burst_fuel, "budget": str(budget), "seconds": 300},
                  timeout=600)
        wall = time.perf_counter() - t0
        ok = sum(1 for t in b["tasks"] if t["status"] == "ok")
        row(f"market.burst ({ok}/{args.tasks} ok)", wall, f"{wall / local:.1f}x one local core")
        for k, v in b["seconds"].items():
            row(f"  {k}", v)
        wait_until(lambda: jobs_gone(net.nodes) or None, timeout=60, what="the job processes gone")
        own, jobs = (b - a for a, b in zip(cpu0, cpu_seconds(net.nodes)))
        row("CPU, one local core", local_cpu)
        row("CPU, the job processes", jobs, f"{jobs / local_cpu:.1f}x local, "
            f"{jobs / max(1, ok) * 1000:.1f} ms per task ok")
        row("CPU, the daemons", own, f"{own / max(1, ok) * 1000:.1f} ms per task ok")
        for cid in b["contracts"]:
            view = c.rpc("market.contract", [cid])
            if view["peer"] in b["dead"] or view["peer"] in b["liars"]:
                print(f"  provider {view['peer'][-8:]} {view['state']} after {view['tasks']} "
                      f"task(s): {view['detail'][:100]}")
        bad: dict[str, int] = {}
        for t in b["tasks"]:
            if t["status"] != "ok":
                why = f'{t["status"]}: {t.get("error") or t.get("message", "")}'[:120]
                bad[why] = bad.get(why, 0) + 1
        for why, n in bad.items():
            print(f"  {n} task(s) {why}")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
