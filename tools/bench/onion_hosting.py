"""Hosted data's coding cost (issue 14 item 5): what `onion.deploy` and `onion.access` spend on
the content itself, per privacy level, without the network.

    .venv/bin/python -m fognode.tools.bench.onion_hosting [--mb 1 16] [--repeat 3]

For each size and level: `split` (XSalsa20-Poly1305 sealing, then zfec k-of-n encoding) and
`join` from k shards that are not the first k (hash checks of k shards, zfec decoding, opening),
best of `--repeat`, in MB/s of content; and the bytes stored in all (n shards) against the
content. The network part (escrows, uploads, rendezvous circuits) is measured by the devnet
test tests/onion/test_hosting_devnet.py (its durations are in its log).
"""
from __future__ import annotations

import argparse
import os
import time

from fognode.protocols.onion.hosting.levels import LEVELS
from fognode.protocols.onion.hosting.shards import join, split


def run(sizes_mb: list[int], repeat: int) -> list[dict[str, float]]:
    rows = []
    for mb in sizes_mb:
        data = os.urandom(mb * 1_000_000)
        for lvl in LEVELS.values():
            best_split = best_join = float("inf")
            for _ in range(repeat):
                t = time.perf_counter()
                s = split(data, lvl.k, lvl.n)
                best_split = min(best_split, time.perf_counter() - t)
                pick = {i: s.shards[i] for i in range(lvl.n - lvl.k, lvl.n)}     # the last k: decoding needed
                t = time.perf_counter()
                out = join(pick, s.hashes, key=s.key, k=lvl.k, size=s.size)
                best_join = min(best_join, time.perf_counter() - t)
                assert out == data
            rows.append({"mb": mb, "level": lvl.level, "k": lvl.k, "n": lvl.n,
                         "split_mb_s": mb / best_split, "join_mb_s": mb / best_join,
                         "stored_x": sum(len(x) for x in s.shards) / len(data)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| content | level | k of n | split (seal + encode) | join (verify + decode + open) | stored |")
    print("|---|---|---|---|---|---|")
    for r in run(args.mb, args.repeat):
        print(f"| {r['mb']:.0f} MB | {r['level']:.0f} | {r['k']:.0f} of {r['n']:.0f} | {r['split_mb_s']:.0f} MB/s "
              f"| {r['join_mb_s']:.0f} MB/s | {r['stored_x']:.2f}x |")


if __name__ == "__main__":
    main()
