"""Child process for the crash test: apply the deterministic certificate stream to a LevelDB
replica, one synced write batch per certificate, printing the count as it goes.

    python -m tests.ledger.crash_child <store dir> <n certificates>
"""
from __future__ import annotations

import sys
from pathlib import Path

from fognode.ledger.actions import Commit
from fognode.ledger.replica import Replica
from fognode.ledger.store import LedgerStore

from .certstream import make_stream, stream_genesis


def main() -> None:
    path, n = Path(sys.argv[1]), int(sys.argv[2])
    certs = make_stream(n)
    store = LedgerStore(path, stream_genesis())
    r = Replica(store.load_state(), store)
    for c in certs:
        deltas = [a.delta for a in r.receive("stream", c) if isinstance(a, Commit)]
        store.commit(deltas)
        r.committed()
        print(r.state.applied, flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
