"""Ledger write path benchmark: synced LevelDB writes on the event loop vs the group-commit
writer (ledger/writer.py), on one real store, with the event-loop lag measured meanwhile.

    .venv/bin/python -m fognode.tools.bench.ledger_writer [--certs 600] [--tasks 16]

`--tasks` tasks apply a deterministic certificate stream in order (each certificate its own
apply, as gossip and orders arrive), a probe task sleeps 1 ms again and again and records how
late it woke. Mode "on the loop": every apply is one `store.commit` (sync=True) on the event
loop, as before writer.py. Modes "group commit": every apply runs on a staging state, adds its
records to the writer's open group and waits for it; the group's callback installs the deltas
into the durable state, as service.py does. Printed per mode: certificates per second, fsyncs,
and the loop lag (mean, p99, max). Both modes must end at the same state root.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from fognode.ledger.actions import Commit
from fognode.ledger.genesis import Genesis
from fognode.ledger.messages import Certificate, SignedOrder, TransferOrder, Vote
from fognode.ledger.replica import Replica
from fognode.ledger.store import LedgerStore
from fognode.ledger.writer import GroupWriter
from fognode.tools.bench.ledger import CHAIN, bench_chain



def stream(n: int, users: int = 32) -> tuple[Genesis, list[Certificate]]:
    g, vals, ks = bench_chain(users)
    seq = [0] * users
    out = []
    for i in range(n):
        s = i % users
        so = SignedOrder.sign(ks[s], TransferOrder(chain=CHAIN, epoch=0, sender=bytes(ks[s].verify_key),
                                                   sequence=seq[s], fee=1000,
                                                   recipient=bytes(ks[(s + 1) % users].verify_key),
                                                   amount=1 + i % 1000, memo=""))
        seq[s] += 1
        out.append(Certificate.from_votes(so, [Vote.sign(v, so.tx_id) for v in vals[:3]]))
    return g, out


async def run(path: Path, g: Genesis, certs: list[Certificate], tasks: int, group: bool
              ) -> tuple[float, int, list[float], bytes]:
    store = LedgerStore(path, g)
    durable = store.load_state()
    r = Replica(durable.staging() if group else durable, store, verify_sender=False)
    writer = GroupWriter(store)
    lags: list[float] = []
    turn = [trio.Event() for _ in range(len(certs) + 1)]
    turn[0].set()
    syncs = 0

    async def probe() -> None:
        while True:
            asked = trio.current_time() + 0.001
            await trio.sleep_until(asked)
            lags.append(trio.current_time() - asked)

    async def worker(first: int) -> None:
        nonlocal syncs
        for i in range(first, len(certs), tasks):
            await turn[i].wait()
            deltas = [a.delta for a in r.receive("bench", certs[i]) if isinstance(a, Commit)]
            turn[i + 1].set()
            if group:
                grp = writer.submit("certificates", lambda wb, d=deltas: store.commit_into(wb, d), len(deltas))

                def install(d: list[Any] = deltas) -> None:
                    for x in d:
                        durable.install(x)
                    r.committed([x.cert.order.key for x in d])
                grp.on_durable(install)
                await grp.wait()
            else:
                store.commit(deltas)
                r.committed()
                syncs += 1
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        nursery.start_soon(probe)
        t = time.perf_counter()
        async with trio.open_nursery() as workers:
            for w in range(tasks):
                workers.start_soon(worker, w)
        elapsed = time.perf_counter() - t
        nursery.cancel_scope.cancel()
    root = durable.root()
    assert store.load_state().root() == root
    store.close()
    return len(certs) / elapsed, writer.syncs if group else syncs, lags, root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--certs", type=int, default=600)
    ap.add_argument("--tasks", type=int, default=16)
    args = ap.parse_args()
    g, certs = stream(args.certs)
    tmp = Path(tempfile.mkdtemp(prefix="fogbench-w-"))
    try:
        roots = set()
        print(f"{args.certs} certificates, {args.tasks} tasks applying, one real LevelDB store each")
        for i, (name, group) in enumerate((("on the loop (sync=True per apply)", False),
                                            ("group commit (writer.py)", True))):
            rate, syncs, lags, root = trio.run(run, tmp / str(i), g, certs, args.tasks, group)
            roots.add(root)
            lags.sort()
            print(f"  {name:<36} {rate:8,.0f} certs/s  {syncs:5d} fsyncs  loop lag mean "
                  f"{1000 * statistics.fmean(lags):6.2f} ms, p99 {1000 * lags[int(0.99 * (len(lags) - 1))]:6.2f} ms, "
                  f"max {1000 * lags[-1]:7.2f} ms")
        assert len(roots) == 1, "the two modes ended at different state roots"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
