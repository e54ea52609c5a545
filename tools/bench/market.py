"""Market benchmark: demands matched per second against an order book of 10k offers.

    .venv/bin/python -m fognode.tools.bench.market [--offers 10000] [--demands 200]
                                                   [--linear-demands 20] [--seed 0] [--jobs]

`--jobs` adds the rows of `market_jobs.py` (a WASM job end to end on loopback, split into
negotiation, escrow, transfer, execution and settlement, and a burst of 200 tasks over 4
providers, each against local wasmtime in the same run).

The book: `offers` signed offers (5 per provider, 80 % compute.wasm, the rest storage and
fog.hosting, 8 regions, random cores, memory and prices), each admitted through
`OrderBook.receive` (msgpack decode, field validation, Ed25519 verification, insertion): the
admission rate is the first row. The demands: `demands` signed compute.wasm demands with
filters drawn from realistic templates (cores, memory, region wildcards, price caps, uptime,
disjunctions, negations), random usage, budgets and replication 1-3; reputation and latency
are injected per provider as in the role.

Measured in the same run on the same book and demands: the column matcher
(`matching.Matcher`: the filter evaluated on a numpy column snapshot, candidates scored in
bulk) against the bound, the per-offer linear scan (`matching.match_linear`, the reference
implementation, on the first `linear-demands` demands since it is slow). Both return the same
ranked lists (checked here). The snapshot rebuild has its own row.

Churn rows: before each demand one offer is replaced (a new sequence, as republishing does),
demands 10 ms apart on the simulated clock. With `snapshot_age` = 1 s (the default of
`[protocols.market] match_snapshot_age`) the matcher rebuilds at most once a second and drops
rows that left the book; with 0 it rebuilds before every demand (on `linear-demands` demands).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import random
import time

from nacl.signing import SigningKey

from fognode.protocols.market.matching import Matcher, Weights, match_linear
from fognode.protocols.market.messages import Demand, Offer, sign_demand, sign_offer
from fognode.protocols.market.orderbook import OrderBook
from fognode.tools.bench import market_jobs

NOW = 1_800_000_000
REGIONS = ["eu-west", "eu-north", "eu-south", "us-east", "us-west", "ap-south", "ap-east", "sa-east"]
TEMPLATES = [
    "(&(cores>={c})(region={r}*))",
    "(&(cores>={c})(memory_mib>={m})(price.fuel<={p}))",
    "(&(region={r}*)(uptime>=99))",
    "(|(region=eu-*)(region=us-*))",
    "(&(cores>={c})(!(region=ap-*))(price.cpu_s<={p}))",
    "(&(memory_mib>={m})(|(price.fuel<={p})(uptime>=99.9)))",
    "",
]


def _key(name: str) -> SigningKey:
    return SigningKey(hashlib.sha256(name.encode()).digest())


def make_offers(n: int, rng: random.Random) -> list[Offer]:
    out = []
    providers = max(1, n // 5)
    keys = [_key(f"bench-provider-{i}") for i in range(providers)]
    for i in range(n):
        service = rng.choices(["compute.wasm", "storage", "fog.hosting"], [8, 1, 1])[0]
        prices = {"fuel": rng.randint(1, 40), "cpu_s": rng.randint(1, 10)}
        if service != "compute.wasm":
            prices = {"gb_h": rng.randint(1, 50)}
        out.append(sign_offer(keys[i % providers], id=f"o{i // providers}", seq=1, service=service,
                              cores=rng.choice([1, 2, 4, 8, 16, 32]),
                              memory_mib=rng.choice([512, 1024, 2048, 4096, 8192, 16384]),
                              disk_mib=rng.randint(1_000, 1_000_000), region=rng.choice(REGIONS),
                              prices=prices, uptime_bp=rng.choice([9000, 9500, 9900, 9990]),
                              issued=NOW, valid_until=NOW + 3600))
    return out


def make_demands(n: int, rng: random.Random) -> list[Demand]:
    customer = _key("bench-customer")
    out = []
    for i in range(n):
        flt = rng.choice(TEMPLATES).format(c=rng.choice([1, 2, 4, 8]), m=rng.choice([1024, 4096]),
                                           p=rng.randint(5, 40), r=rng.choice(REGIONS)[:3])
        repl = rng.randint(1, 3)
        out.append(sign_demand(customer, id=f"d{i}", service="compute.wasm", constraints=flt,
                               usage={"fuel": rng.randint(10, 1000), "cpu_s": rng.randint(0, 60)},
                               budget=rng.randint(5_000, 60_000) * repl, replication=repl,
                               issued=NOW, deadline=NOW + 600))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--offers", type=int, default=10_000)
    ap.add_argument("--demands", type=int, default=200)
    ap.add_argument("--linear-demands", type=int, default=20)
    ap.add_argument("--limit", type=int, default=10, help="ranked providers kept per demand")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", action="store_true",
                    help="then the job rows: a WASM job end to end and a burst on a loopback devnet "
                         "(market_jobs.py, with its defaults)")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    offers = make_offers(a.offers, rng)
    demands = make_demands(a.demands, rng)
    rep = {o.peer: rng.random() for o in offers}
    lat = {o.peer: rng.choice([None, 5.0, 40.0, 200.0]) for o in offers}
    kw = dict(reputation=rep.__getitem__, latency=lat.__getitem__, weights=Weights(),
              home_region="eu-west")

    book = OrderBook(max_offers=a.offers, max_per_provider=16)
    gc.collect()
    t0 = time.perf_counter()
    for o in offers:
        if book.receive(o.peer, o.encode(), NOW + 1):
            raise SystemExit("an offer was refused by the book")
    admit_s = time.perf_counter() - t0

    matcher = Matcher(book, **kw)
    t0 = time.perf_counter()
    matcher.columns("compute.wasm")
    rebuild_s = time.perf_counter() - t0

    gc.collect()
    results = []
    t0 = time.perf_counter()
    for d in demands:
        results.append(matcher.match(d, NOW + 1, limit=a.limit))
    fast_s = time.perf_counter() - t0

    nlin = min(a.linear_demands, len(demands))
    gc.collect()
    t0 = time.perf_counter()
    for d, want in zip(demands[:nlin], results):
        got = match_linear(book, d, NOW + 1, limit=a.limit, **kw)
        if [(m.offer.key, m.cost, m.score) for m in got] != \
                [(m.offer.key, m.cost, m.score) for m in want]:
            raise SystemExit(f"the matchers disagree on demand {d.id}")
    lin_s = time.perf_counter() - t0

    def churn(age: float, demands_: list[Demand]) -> float:
        """Seconds to match `demands_` with one offer replaced before each."""
        churn_book = OrderBook(max_offers=a.offers, max_per_provider=16)
        for o in offers:
            churn_book.add(o, NOW)
        replacements = [dataclasses.replace(o, seq=2 + i) for i, o in
                        enumerate(rng.sample(offers, len(demands_)))]
        m = Matcher(churn_book, snapshot_age=age, **kw)
        m.columns("compute.wasm", NOW)
        gc.collect()
        t0 = time.perf_counter()
        for i, (d, o) in enumerate(zip(demands_, replacements)):
            churn_book.add(o, NOW + 1)     # unsigned copy: the book trusts its decoder
            m.match(d, NOW + 1 + 0.01 * (i + 1), limit=a.limit)
        return time.perf_counter() - t0

    churn_s = churn(1.0, demands)
    churn0_s = churn(0.0, demands[:nlin]) if nlin else float("nan")
    matched = sum(1 for r in results if r)
    fast_rate = len(demands) / fast_s
    lin_rate = nlin / lin_s if nlin else float("nan")
    print(f"Market matching: {len(book)} offers in the book ({book.providers()} providers, "
          f"{len(REGIONS)} regions), {len(demands)} demands ({matched} matched, the best "
          f"{a.limit} providers of each ranked)")
    print(f"{'':<44} {'rate':>14}  {'per item':>10}  {'vs bound':>8}")
    print(f"{'order book admission (decode+verify+insert)':<44} {len(offers) / admit_s:>8.1f} /s  "
          f"{admit_s / len(offers) * 1e6:>7.1f} us  {'':>8}")
    print(f"{'column snapshot rebuild (after a change)':<44} {'':>14}  "
          f"{rebuild_s * 1e3:>7.1f} ms  {'':>8}")
    print(f"{'demands matched, column matcher':<44} {fast_rate:>8.1f} /s  "
          f"{fast_s / len(demands) * 1e3:>7.2f} ms  {fast_rate / lin_rate:>7.1f}x")
    print(f"{'demands matched, linear scan (bound)':<44} {lin_rate:>8.1f} /s  "
          f"{lin_s / max(1, nlin) * 1e3:>7.2f} ms  {1.0:>7.1f}x")
    for label, secs, count in (("churn, snapshot <= 1 s old", churn_s, len(demands)),
                               ("churn, rebuilt every time", churn0_s, nlin)):
        rate = count / secs if count else float("nan")
        print(f"{'demands matched, ' + label:<44} {rate:>8.1f} /s  "
              f"{secs / max(1, count) * 1e3:>7.2f} ms  {rate / lin_rate:>7.1f}x")
    print(f"(same ranked results from both on the {nlin} demands the linear scan ran)")
    if a.jobs:
        market_jobs.main([])


if __name__ == "__main__":
    main()
