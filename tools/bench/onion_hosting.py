"""Hosted data's coding cost (issue 14 item 5): what `onion.deploy` and `onion.access` spend on
the content itself, per privacy level, without the network; and, with `--devnet LEVEL`, one
deploy, loss and access at that level on real daemons.

    .venv/bin/python -m fognode.tools.bench.onion_hosting [--mb 1 16] [--repeat 3]
    .venv/bin/python -m fognode.tools.bench.onion_hosting --devnet 2 [--mb 1] [--timeout 1500]

For each size and level: `split` (XSalsa20-Poly1305 sealing, then zfec k-of-n encoding) and
`join` from k shards that are not the first k (hash checks of k shards, zfec decoding, opening),
best of `--repeat`, in MB/s of content; and the bytes stored in all (n shards) against the
content. The network part at level 1 is the devnet test tests/onion/test_hosting_devnet.py.

`--devnet LEVEL` (levels 2 and 3 need more daemons than a lean test can start: 5 hosts, and
4-hop paths at level 3): a devnet of n + 4 `fognode run` processes on 127.0.0.1 (n = the
level's hosts): node 0 the owner, nodes 1..n hosts (fog.hosting offers), node n+1 the
accessor, two more relays. Only the owner, the accessor and the two relays are validators (a
genesis written for this run), so the ledger keeps its quorum when hosts die. The owner
deploys `--mb` MB of random bytes at LEVEL; the n - k hosts holding the last shards are
SIGKILLed; once the survivors' hosting services are republished, the accessor fetches the data
through circuits of the level's hops. Checked and printed: the content byte-identical, the
access fee paid exactly once by the accessor and received by the owner, k shards used,
`ledger.verify` on every surviving node, and how long each phase took. Every wait is bounded
(the whole run by `--timeout` seconds); the exit status is 0 only if every check passed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from fognode.ledger.address import decode_address
from fognode.ledger.genesis import DEV_FUNDING, DEV_STAKE
from fognode.ledger.genesis import dev_genesis as ledger_dev_genesis
from fognode.ledger.wallet import default_wallet_address
from fognode.node.datadir import load_identity, write_genesis
from fognode.protocols.onion.hosting.levels import LEVELS, privacy_level
from fognode.protocols.onion.hosting.shards import join, split
from fognode.tools.devnet import Devnet, DevnetNode, wait_until


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


FEE = "0.5"


def _micro(text: str) -> int:
    return int(Decimal(text) * 1_000_000)


def _balance(n: DevnetNode, address: str) -> int:
    return _micro(n.rpc("wallet.balance", {"address": address})["balance"])


def _validators_only(net: Devnet, validators: list[int]) -> None:
    """Rewrite the devnet's genesis so that only `validators` (node indexes) stake; every wallet
    keeps its funding and every node stays pre-trusted."""
    old = json.loads((net.nodes[0].datadir / "genesis.json").read_text())
    keys = [bytes(load_identity(net.nodes[i].datadir).verify_key) for i in validators]
    wallets = [decode_address(default_wallet_address(n.datadir) or "") for n in net.nodes]
    genesis = {**old, "ledger": ledger_dev_genesis(old["chain_id"], [(k, DEV_STAKE) for k in keys],
                                                    {w: DEV_FUNDING for w in wallets})}
    for n in net.nodes:
        write_genesis(n.datadir, genesis)


def run_devnet(level: int, mb: int, timeout: float) -> dict[str, Any]:
    """One deploy, loss of n - k hosts and access at `level` on real daemons (module doc)."""
    lvl = privacy_level(level)
    end = time.monotonic() + timeout

    def left() -> float:
        return max(1.0, end - time.monotonic())
    root = Path(tempfile.mkdtemp(prefix="fn-hosted-", dir="/tmp"))
    n = lvl.n + 4
    owner_i, acc_i = 0, lvl.n + 1
    net = Devnet(root / "net", n, extra_args=["--set", "protocols.onion.hosting_interval=300"])
    net.create()
    _validators_only(net, [owner_i, acc_i, lvl.n + 2, lvl.n + 3])
    for node in net.nodes[1:lvl.n + 1]:
        node.args += ["--set", "protocols.onion.hosting_quota_mib=64",
                      "--set", f"protocols.onion.hosting_price={1_000_000 * node.index}"]
    t0 = time.monotonic()
    phases: dict[str, float] = {}
    out: dict[str, Any] = {"level": lvl.to_json(), "nodes": n, "mb": mb, "load_start": os.getloadavg()[0]}
    try:
        net.start_all(timeout=min(300, left()))
        owner, accessor = net.nodes[owner_i], net.nodes[acc_i]
        hosts = net.nodes[1:lvl.n + 1]

        missing: dict[str, Any] = {}

        def ready() -> bool | None:
            missing.clear()
            known = {x.index: x.rpc("onion.stats")["relays_known"] for x in (owner, accessor)}
            if min(known.values()) < n - 2:
                missing["relays known (owner, accessor)"] = known
            offers = len(owner.rpc("market.offers", {"filter": "(service=fog.hosting)"}))
            if offers < lvl.n:
                missing["fog.hosting offers"] = offers
            unpublished = [h.index for h in hosts if not any(s["name"] == "fog-hosting" and s["published"]
                                                             for s in h.rpc("onion.services"))]
            if unpublished:
                missing["hosts whose service is not published"] = unpublished
            return not missing or None
        try:
            wait_until(ready, timeout=left(), what="relays, fog.hosting offers and the hosts' services", interval=2)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; still missing: {missing}") from None
        phases["ready"] = time.monotonic() - t0
        data = os.urandom(mb * 1_000_000)
        src = root / "data.bin"
        src.write_bytes(data)
        dep = owner.rpc("onion.deploy", {"file": str(src), "budget": "50", "privacy_level": level, "fee": FEE,
                                         "hours": 1}, timeout=left())
        phases["deploy"] = dep["seconds"]
        by_address = {h.rpc("onion.stats")["hosting"]["address"]: h for h in hosts}
        holders = [by_address[a] for a in dep["hosts"]]
        victims = holders[lvl.k:]
        for v in victims:
            net.kill(v.index)
        out["killed"] = [v.index for v in victims]
        dead = {v.peer_id for v in victims}
        alive = [x for x in net.nodes if x not in victims]
        survivors = [h for h in holders if h not in victims]
        wait_until(lambda: all(x.rpc("onion.stats")["relays_known"] <= n - len(victims) for x in alive) or None,
                   timeout=left(), what="the killed hosts gone from the relay directories", interval=2)
        wait_until(lambda: all(s["published"] and s["intro_points"] and not dead & set(s["intro_points"])
                               for h in survivors for s in h.rpc("onion.services")
                               if s["name"] == "fog-hosting") or None,
                   timeout=left(), what="the surviving hosts' services re-established", interval=2)
        phases["loss noticed"] = time.monotonic() - t0
        w_acc, w_own = accessor.rpc("wallet.address")["address"], owner.rpc("wallet.address")["address"]
        acc_before, own_before = _balance(accessor, w_acc), _balance(owner, w_own)
        target = root / "out.bin"
        got = accessor.rpc("onion.access", {"address": dep["address"], "out": str(target)}, timeout=left())
        phases["access"] = got["seconds"]
        fee = _micro(FEE)
        order_fee = int(json.loads((owner.datadir / "genesis.json").read_text())["ledger"]["fee"])
        checks = {
            "byte-identical": target.read_bytes() == data,
            "k shards used": len(got["shards_used"]) == lvl.k,
            "fee paid once": _micro(got["fee_paid"]) == fee,
            "accessor paid exactly the fee and one order fee":
                acc_before - _balance(accessor, w_acc) == fee + order_fee,
        }
        try:
            wait_until(lambda: _balance(owner, w_own) == own_before + fee or None, timeout=min(120, left()),
                       what="the fee at the owner", interval=1)
            checks["owner received the fee"] = True
        except TimeoutError:
            checks["owner received the fee"] = False
        checks["ledger.verify on the survivors"] = all(x.rpc("ledger.verify")["ok"] for x in alive)
        out.update(checks=checks, phases=phases, address=dep["address"], hosting_cost=dep["hosting_cost"],
                   load_end=os.getloadavg()[0])
    finally:
        net.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--devnet", type=int, choices=sorted(LEVELS), metavar="LEVEL",
                    help="one deploy, loss and access at LEVEL on real daemons instead (module doc)")
    ap.add_argument("--timeout", type=float, default=1500.0, help="seconds for the whole --devnet run")
    args = ap.parse_args()
    if args.devnet is not None:
        r = run_devnet(args.devnet, args.mb[0], args.timeout)
        lv = r["level"]
        print(f"hosted data at level {lv['level']} ({lv['k']} of {lv['n']}, {lv['hops']} hops) on {r['nodes']} "
              f"daemons, {r['mb']} MB, load {r['load_start']:.1f} -> {r['load_end']:.1f}; killed hosts "
              f"{r['killed']}")
        print("phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items()))
        for name, ok in r["checks"].items():
            print(f"  {'ok ' if ok else 'FAILED'} {name}")
        raise SystemExit(0 if all(r["checks"].values()) else 1)
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| content | level | k of n | split (seal + encode) | join (verify + decode + open) | stored |")
    print("|---|---|---|---|---|---|")
    for r in run(args.mb, args.repeat):
        print(f"| {r['mb']:.0f} MB | {r['level']:.0f} | {r['k']:.0f} of {r['n']:.0f} | {r['split_mb_s']:.0f} MB/s "
              f"| {r['join_mb_s']:.0f} MB/s | {r['stored_x']:.2f}x |")


if __name__ == "__main__":
    main()
