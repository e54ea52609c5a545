"""Aggregation throughput of every FL strategy next to its numpy bound, plus the cost of
secure aggregation.

    .venv/bin/python -m fognode.tools.bench.fl_aggregation [--bound-dim 10000000] [--bound-n 10]
        [--repeats 7] [--dim 1000000] [--sizes 10,50] [--bounds-only]

The updates are held as the aggregator holds them when a round aggregates: streamed through
the update codec into the rows of the round's update matrix, which is then sealed
(strategies/matrix.py); every strategy runs its real `aggregate` over those `ClientUpdate`s.
First the two headline ratios, for n updates of `bound-dim` float32 parameters (issue 11):
FedAvg against one `np.tensordot(w, stack, 1)` of the weights with the same (n, d) matrix
(target: <= 1.5x), and Krum against one float32 Gram matmul `stack @ stack.T`. The four are
timed interleaved in the same run, `repeats` times each; the table shows the best and the
median time, the ratio of the bests and the median of the per-repeat ratios (on a shared
machine the median of paired ratios is the steadier figure). Then every strategy for n in
`sizes` at `dim` parameters against the same tensordot bound (best of a few runs each).
Robust rules are expected to cost more (median and trimmed mean sort every coordinate,
Krum/Bulyan compute an O(n^2 d) Gram matrix). Secure aggregation is timed end to end in memory
(all participants and the aggregator, key agreement, Shamir sharing, masking and unmasking) for
a small round, with and without dropouts, next to the plain sum of the same vectors.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from typing import Callable

import numpy as np

from fognode.protocols.fl.privacy.dp import DPConfig, DPStrategy
from fognode.protocols.fl.secagg.core import Completed, SecAggConfig
from fognode.protocols.fl.strategies.base import ClientUpdate
from fognode.protocols.fl.strategies.matrix import UpdateMatrix, sealed_updates, stacked_rows
from fognode.protocols.fl.strategies.registry import make_strategy
from fognode.protocols.fl.transfer.tensors import TensorDecoder, encode_tensor
from fognode.tools.bench.secagg_local import run_secagg_locally


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def once_ms(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def random_updates(n: int, dim: int, seed: int) -> tuple[ClientUpdate, ...]:
    """n updates as the aggregator holds them when its round aggregates: each streamed through
    the update codec (encode_tensor, then a TensorDecoder writing into the row its admission
    leased of the round's UpdateMatrix), committed, and the matrix sealed; the deltas are the
    consecutive rows of the sealed matrix (strategies/matrix.py `sealed_updates`)."""
    rng = np.random.default_rng(seed)
    matrix = UpdateMatrix(n, dim)
    held: dict[str, ClientUpdate] = {}
    for i in range(n):
        peer = f"peer{i}"
        header, chunks = encode_tensor(rng.standard_normal(dim, dtype=np.float32) * 0.01)
        dec = TensorDecoder(header, peer=peer, sink=matrix.lease(peer))
        for c in chunks:
            dec.feed(bytes(c))
        row = matrix.commit(peer, dec.finish())
        held[peer] = ClientUpdate(peer, row, 10 + i, loss=1.0 + 0.1 * i)
    return sealed_updates(matrix, held)


def bench_bounds(dim: int, n: int, repeats: int) -> dict[str, list[float]]:
    """Per repeat: tensordot bound, FedAvg, float32 Gram matmul, Krum (interleaved), all over
    the same sealed update matrix (the bounds read its (n, d) view, no copy)."""
    updates = random_updates(n, dim, 0)
    stack = stacked_rows([u.delta for u in updates])
    assert stack is not None, "the sealed updates are not one matrix"
    w = np.array([u.num_samples for u in updates], dtype=np.float64)
    w32 = (w / w.sum()).astype(np.float32)
    g = np.zeros(dim, dtype=np.float32)
    fedavg = make_strategy("fedavg", {})
    krum = make_strategy("krum", {"f": max(1, (n - 3) // 2)})
    runs: dict[str, list[float]] = {"tensordot": [], "fedavg": [], "gram": [], "krum": []}
    for _ in range(repeats):
        runs["tensordot"].append(once_ms(lambda: np.tensordot(w32, stack, 1)))
        runs["fedavg"].append(once_ms(lambda: fedavg.aggregate(g, updates)))
        runs["gram"].append(once_ms(lambda: stack @ stack.T))
        runs["krum"].append(once_ms(lambda: krum.aggregate(g, updates)))
    return runs


def strategy_specs(n: int) -> list[tuple[str, str, dict[str, object]]]:
    f_krum = max(1, (n - 3) // 4)        # a Byzantine budget every rule here accepts
    return [
        ("fedavg", "fedavg", {}),
        ("fedprox", "fedprox", {"mu": 0.01}),
        ("fedavgm", "fedavgm", {}),
        ("fedavg+clip", "fedavg", {"clip_norm": 100.0}),
        ("fedavg+dp", "dp", {}),
        ("fedadam", "fedadam", {}),
        ("fedyogi", "fedyogi", {}),
        ("fedadagrad", "fedadagrad", {}),
        ("qfedavg", "qfedavg", {}),
        ("median", "median", {}),
        ("trimmed_mean(0.1)", "trimmed_mean", {"beta": 0.1}),
        (f"krum(f={f_krum})", "krum", {"f": f_krum}),
        (f"multikrum(f={f_krum})", "multikrum", {"f": f_krum}),
        (f"bulyan(f={f_krum})", "bulyan", {"f": f_krum}),
    ]


def bench_strategies(dim: int, sizes: list[int]) -> list[tuple[str, int, float, float]]:
    rows = []
    g = np.zeros(dim, dtype=np.float32)
    for n in sizes:
        updates = random_updates(n, dim, n)
        stack = stacked_rows([u.delta for u in updates])
        w = np.full(n, 1.0 / n, dtype=np.float32)
        ref = best_ms(lambda: np.tensordot(w, stack, 1), 3)
        del stack
        rows.append(("np.tensordot (bound)", n, ref, 1.0))
        for label, name, params in strategy_specs(n):
            if name == "dp":
                strat = DPStrategy(make_strategy("fedavg", {}), DPConfig(1.0, 1.0))
            else:
                strat = make_strategy(name, params)
            heavy = name in ("median", "trimmed_mean", "bulyan")
            ms = best_ms(lambda: strat.aggregate(g, updates), 2 if heavy else 3)
            rows.append((label, n, ms, ms / ref))
        del updates
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
    ap.add_argument("--bound-dim", type=int, default=10_000_000)
    ap.add_argument("--bound-n", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--sizes", default="10,50")
    ap.add_argument("--secagg-clients", type=int, default=10)
    ap.add_argument("--secagg-dim", type=int, default=100_000)
    ap.add_argument("--bounds-only", action="store_true",
                    help="only the two headline ratios (FedAvg vs tensordot, Krum vs Gram)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.bound_n} float32 updates of {args.bound_dim:,} parameters in one sealed update "
          f"matrix ({args.bound_n * args.bound_dim * 4 / 2**20:,.0f} MiB), {args.repeats} "
          f"interleaved repeats; load average {load}")
    runs = bench_bounds(args.bound_dim, args.bound_n, args.repeats)
    print(f"{'run':<34} {'best ms':>9} {'median ms':>10} {'best/best':>10} {'median ratio':>13}")
    fedavg_ratio = 0.0
    for label, key, ref in (("np.tensordot(w, stack, 1) (bound)", "tensordot", None),
                            ("fedavg", "fedavg", "tensordot"),
                            ("stack @ stack.T, float32 (bound)", "gram", None),
                            ("krum", "krum", "gram")):
        t = runs[key]
        if ref is None:
            print(f"{label:<34} {min(t):>9.1f} {statistics.median(t):>10.1f}")
            continue
        paired = statistics.median(a / b for a, b in zip(t, runs[ref]))
        print(f"{label:<34} {min(t):>9.1f} {statistics.median(t):>10.1f} "
              f"{min(t) / min(runs[ref]):>10.2f} {paired:>13.2f}")
        if key == "fedavg":
            fedavg_ratio = paired
    print(f"FedAvg within 1.5x of the tensordot bound (median paired ratio): "
          f"{'yes' if fedavg_ratio <= 1.5 else 'NO'}")
    if args.bounds_only:
        return
    print()
    print(f"aggregation of n float32 updates of {args.dim:,} parameters (best of runs)")
    print(f"{'strategy':<22} {'n':>4} {'ms':>10} {'x tensordot':>12}")
    for label, n, ms, ratio in bench_strategies(args.dim, sizes):
        print(f"{label:<22} {n:>4} {ms:>10.1f} {ratio:>12.2f}")
    print()
    print(f"secure aggregation, {args.secagg_clients} clients x {args.secagg_dim:,} parameters "
          f"(all participants and the aggregator in one process)")
    print(f"{'run':<30} {'ms':>10} {'x plain sum':>12}")
    for label, ms, ratio in bench_secagg(args.secagg_clients, args.secagg_dim):
        print(f"{label:<30} {ms:>10.1f} {ratio:>12.1f}")


if __name__ == "__main__":
    main()
