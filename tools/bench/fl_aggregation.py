"""Aggregation throughput of every FL strategy next to a plain numpy mean, plus the cost of
secure aggregation.

    .venv/bin/python -m fognode.tools.bench.fl_aggregation [--dim 1000000] [--sizes 10,50]

For each n, n random float32 updates of `dim` parameters are built once; the bound is
`np.mean(np.stack(updates), axis=0)` over the same arrays, timed in the same run (best of a few
runs each). FedAvg's target is a ratio <= 2. Robust rules are expected to cost more (median
and trimmed mean partition every coordinate, Krum/Bulyan do an O(n^2 d) Gram matrix).
Secure aggregation is timed end to end in memory (all participants and the aggregator, key
agreement, Shamir sharing, masking and unmasking) for a small round, with and without dropouts,
next to the plain sum of the same vectors.
"""
from __future__ import annotations

import argparse
import gc
import time
from typing import Callable

import numpy as np

from fognode.protocols.fl.privacy.dp import DPConfig, DPStrategy
from fognode.protocols.fl.secagg.core import Completed, SecAggConfig
from fognode.protocols.fl.strategies.base import ClientUpdate, make_strategy
from fognode.tools.bench.secagg_local import run_secagg_locally


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def strategy_specs(n: int) -> list[tuple[str, str, dict[str, object]]]:
    f_krum = max(1, (n - 3) // 4)        # a Byzantine budget every rule here accepts
    return [
        ("fedavg", "fedavg", {}),
        ("fedprox", "fedprox", {"mu": 0.01}),
        ("fedavg+clip", "fedavg", {"clip_norm": 100.0}),
        ("fedavg+dp", "dp", {}),
        ("fedadam", "fedadam", {}),
        ("fedyogi", "fedyogi", {}),
        ("fedadagrad", "fedadagrad", {}),
        ("median", "median", {}),
        ("trimmed_mean(0.1)", "trimmed_mean", {"beta": 0.1}),
        (f"krum(f={f_krum})", "krum", {"f": f_krum}),
        (f"multikrum(f={f_krum})", "multikrum", {"f": f_krum}),
        (f"bulyan(f={f_krum})", "bulyan", {"f": f_krum}),
    ]


def bench_strategies(dim: int, sizes: list[int]) -> list[tuple[str, int, float, float]]:
    rows = []
    rng = np.random.default_rng(0)
    g = np.zeros(dim, dtype=np.float32)
    for n in sizes:
        deltas = [rng.standard_normal(dim, dtype=np.float32) * 0.01 for _ in range(n)]
        updates = [ClientUpdate(f"peer{i}", d, 10 + i) for i, d in enumerate(deltas)]
        ref = best_ms(lambda: np.mean(np.stack(deltas), axis=0), 3)
        rows.append(("numpy mean (bound)", n, ref, 1.0))
        for label, name, params in strategy_specs(n):
            if name == "dp":
                strat = DPStrategy(make_strategy("fedavg", {}), DPConfig(1.0, 1.0))
            else:
                strat = make_strategy(name, params)
            heavy = name in ("median", "trimmed_mean", "bulyan")
            ms = best_ms(lambda: strat.aggregate(g, updates), 2 if heavy else 3)
            rows.append((label, n, ms, ms / ref))
        del deltas, updates
        gc.collect()
    return rows


def bench_secagg(clients: int, dim: int) -> list[tuple[str, float, float]]:
    rng = np.random.default_rng(1)
    peers = tuple(f"peer{i:02d}" for i in range(clients))
    xs = {p: rng.standard_normal(dim) for p in peers}
    plain = best_ms(lambda: np.sum(np.stack(list(xs.values())), axis=0), 3)
    t = clients // 2 + 1
    cfg = SecAggConfig(bytes(32), peers, dim, threshold=t)
    rows = [("plain sum (bound)", plain, 1.0)]
    for label, drop in (("secagg, 0 dropouts", ()), (f"secagg, {clients - t} dropouts", peers[:clients - t])):
        out: list[object] = []
        ms = best_ms(lambda: out.append(run_secagg_locally(cfg, xs, drop_before_masking=drop)), 1)
        acts = out[-1]
        assert isinstance(acts, list) and isinstance(acts[0], Completed), acts
        rows.append((label, ms, ms / plain))
    k = 4
    cfg_plus = SecAggConfig(bytes(32), peers, dim, threshold=3, neighbours=k)
    ms = best_ms(lambda: run_secagg_locally(cfg_plus, xs), 1)
    rows.append((f"secagg+ (k={k}), 0 dropouts", ms, ms / plain))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--sizes", default="10,50")
    ap.add_argument("--secagg-clients", type=int, default=10)
    ap.add_argument("--secagg-dim", type=int, default=100_000)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    print(f"aggregation of n float32 updates of {args.dim:,} parameters (best of runs)")
    print(f"{'strategy':<22} {'n':>4} {'ms':>10} {'x numpy mean':>13}")
    fedavg_ok = True
    for label, n, ms, ratio in bench_strategies(args.dim, sizes):
        print(f"{label:<22} {n:>4} {ms:>10.1f} {ratio:>13.2f}")
        if label == "fedavg" and ratio > 2.0:
            fedavg_ok = False
    print(f"FedAvg within 2x of the numpy mean: {'yes' if fedavg_ok else 'NO'}")
    print()
    print(f"secure aggregation, {args.secagg_clients} clients x {args.secagg_dim:,} parameters "
          f"(all participants and the aggregator in one process)")
    print(f"{'run':<30} {'ms':>10} {'x plain sum':>12}")
    for label, ms, ratio in bench_secagg(args.secagg_clients, args.secagg_dim):
        print(f"{label:<30} {ms:>10.1f} {ratio:>12.1f}")


if __name__ == "__main__":
    main()
