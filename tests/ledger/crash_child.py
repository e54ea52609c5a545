"""Child process for the crash tests: apply the deterministic certificate stream to a LevelDB
replica, printing the count as it goes.

    python -m tests.ledger.crash_child <store dir> <n certificates> [--group]

Default: one synced write batch per certificate, the count printed after each. `--group`: the
ledger's group-commit writer (ledger/writer.py), 16 tasks applying in stream order, each
printing "<count> <fsyncs so far>" once its certificate's group is durable (what the service
would acknowledge).
"""
from __future__ import annotations

import sys
from pathlib import Path

import trio

from fognode.ledger.actions import Commit
from fognode.ledger.messages import Certificate
from fognode.ledger.replica import Replica
from fognode.ledger.store import LedgerStore
from fognode.ledger.writer import GroupWriter

from .certstream import make_stream, stream_genesis


def main() -> None:
    path, n = Path(sys.argv[1]), int(sys.argv[2])
    certs = make_stream(n)
    store = LedgerStore(path, stream_genesis())
    r = Replica(store.load_state(), store)
    if "--group" in sys.argv[3:]:
        trio.run(_grouped, store, r, certs)
        return
    for c in certs:
        deltas = [a.delta for a in r.receive("stream", c) if isinstance(a, Commit)]
        store.commit(deltas)
        r.committed()
        print(r.state.applied, flush=True)
    print("done", flush=True)


async def _grouped(store: LedgerStore, r: Replica, certs: list[Certificate]) -> None:
    writer = GroupWriter(store)
    feed = iter(certs)

    async def worker() -> None:
        for c in feed:            # shared: the stream is applied in order
            deltas = [a.delta for a in r.receive("stream", c) if isinstance(a, Commit)]
            group = writer.submit("certificates", lambda wb, d=deltas: store.commit_into(wb, d), len(deltas))
            count = deltas[-1].index
            await group.wait()
            print(count, writer.syncs, flush=True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        async with trio.open_nursery() as workers:
            for _ in range(16):
                workers.start_soon(worker)
        nursery.cancel_scope.cancel()
    print("done", flush=True)


if __name__ == "__main__":
    main()
