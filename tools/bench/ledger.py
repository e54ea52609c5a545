"""Ledger benchmark: replica apply rate from a certificate backlog vs the Ed25519 bound.

    .venv/bin/python -m fognode.tools.bench.ledger [--certs 20000] [--profile]

Measured in one run, side by side:
1. the raw PyNaCl Ed25519 verification rate (VerifyKey.verify, and libsodium through
   nacl.bindings.crypto_sign_open, which the ledger uses);
2. certificates applied per second by a replica on a real LevelDB store from a backlog of N
   certificates (4 validators, 3-of-4 quorum): sync-response bytes -> msgpack decode ->
   validating decoders -> quorum checks -> signature checks -> apply -> one synced write batch
   per sync batch (256 certificates), exactly the catch-up path of the role;
3. the bound implied by verification: rate / (1 sender + 3 votes) certificates per second, and
   the ratio. Also with verify_sender=False (sound under the f-of-3f+1 assumption: an honest
   validator checked the sender before voting), whose bound is rate / 3;
4. (--profile) where the time goes, by cProfile.
The end-to-end figure through 4 daemon processes is not measured here.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import tempfile
import time
from pathlib import Path

from nacl.bindings import crypto_sign_open
from nacl.signing import SigningKey

from fognode.ledger.actions import Commit
from fognode.ledger.address import encode_address
from fognode.ledger.genesis import Genesis
from fognode.ledger.messages import Certificate, SignedOrder, TransferOrder, Vote, decode_certificate
from fognode.ledger.pending import PendingPool
from fognode.ledger.replica import Replica
from fognode.ledger.store import LedgerStore
from fognode.node.wire import pack, unpack

CHAIN = "fog-bench"
SYNC_BATCH = 256


def verify_rates(n: int = 20000) -> tuple[float, float]:
    k = SigningKey(b"\x07" * 32)
    msg = pack({"v": 1, "kind": "ledger.vote", "tx": b"\x01" * 32})
    sig = k.sign(msg).signature
    vk = k.verify_key
    t = time.perf_counter()
    for _ in range(n):
        vk.verify(msg, sig)
    pynacl = n / (time.perf_counter() - t)
    pk = bytes(vk)
    sm = sig + msg
    t = time.perf_counter()
    for _ in range(n):
        crypto_sign_open(sm, pk)
    raw = n / (time.perf_counter() - t)
    return pynacl, raw


def make_backlog(n: int, users: int = 64) -> tuple[Genesis, list[bytes]]:
    """n transfers among `users` funded accounts, certified 3-of-4, as packed sync responses."""
    vals = [SigningKey(bytes([100 + i]) * 32) for i in range(4)]
    ks = [SigningKey(i.to_bytes(2, "big") * 16) for i in range(users)]
    g = Genesis.from_dict({
        "v": 1, "chain_id": CHAIN, "genesis_time": 0, "epoch_length": 3600,
        "balances": {encode_address(bytes(k.verify_key)): 10**12 for k in ks},
        "validators": [{"address": encode_address(bytes(v.verify_key)), "stake": 10**9} for v in vals],
        "emission": {"initial_epoch_budget": 0, "halving_epochs": 0, "tail_epoch_budget": 0},
        "fee": 1000, "fee_destination": "burn", "unbonding_epochs": 1, "uptime_reward_per_hour": 0,
    })
    seq = [0] * users
    wires = []
    for i in range(n):
        s = i % users
        r = (s + 1 + i // users) % users or 1
        so = SignedOrder.sign(ks[s], TransferOrder(chain=CHAIN, epoch=0, sender=bytes(ks[s].verify_key),
                                                   sequence=seq[s], fee=1000, recipient=bytes(ks[r].verify_key),
                                                   amount=1 + i % 1000, memo=""))
        seq[s] += 1
        signers = (vals[i % 4:] + vals[:i % 4])[:3]
        wires.append(Certificate.from_votes(so, [Vote.sign(v, so.tx_id) for v in signers]).to_wire())
    batches = []
    for j in range(0, n, SYNC_BATCH):
        chunk = wires[j:j + SYNC_BATCH]
        batches.append(pack({"v": 1, "certs": [[j + 1 + i, c] for i, c in enumerate(chunk)], "end": n}))
    return g, batches


def apply_backlog(g: Genesis, batches: list[bytes], path: Path, *, verify_sender: bool) -> tuple[float, int, bytes]:
    store = LedgerStore(path, g)
    replica = Replica(store.load_state(), store, PendingPool(100_000), verify_sender=verify_sender)
    applied = 0
    t = time.perf_counter()
    for data in batches:
        resp = unpack(data, max_size=64 << 20, what="sync response")
        certs = [decode_certificate(item[1]) for item in resp["certs"]]
        deltas = []
        for c in certs:
            for a in replica.receive("bench", c):
                if isinstance(a, Commit):
                    deltas.append(a.delta)
        store.commit(deltas)
        replica.committed()
        applied += len(deltas)
    elapsed = time.perf_counter() - t
    root = replica.state.root()
    assert replica.state.invariant_problems() == [], replica.state.invariant_problems()
    store.close()
    return applied / elapsed, applied, root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--certs", type=int, default=20000)
    ap.add_argument("--profile", action="store_true", help="print where the time goes (cProfile)")
    args = ap.parse_args()

    print(f"generating {args.certs} certificates (4 validators, 3-of-4 votes)...", flush=True)
    g, batches = make_backlog(args.certs)
    pynacl, raw = verify_rates()
    bound_rate = max(pynacl, raw)
    tmp = Path(tempfile.mkdtemp(prefix="fogbench-"))
    try:
        rate, applied, root1 = apply_backlog(g, batches, tmp / "a", verify_sender=True)
        rate_ns, applied_ns, root2 = apply_backlog(g, batches, tmp / "b", verify_sender=False)
        assert applied == applied_ns == args.certs and root1 == root2
        rows = [
            ("Ed25519 verify, PyNaCl VerifyKey.verify", f"{pynacl:,.0f} /s", ""),
            ("Ed25519 verify, libsodium crypto_sign_open", f"{raw:,.0f} /s", ""),
            ("bound: verify rate / 4 checks per certificate", f"{bound_rate / 4:,.0f} certs/s", ""),
            ("replica apply, LevelDB, backlog (sender + 3 votes)", f"{rate:,.0f} certs/s",
             f"{100 * rate / (bound_rate / 4):.0f}% of bound"),
            ("bound: verify rate / 3 checks (votes only)", f"{bound_rate / 3:,.0f} certs/s", ""),
            ("replica apply, verify_sender=False", f"{rate_ns:,.0f} certs/s",
             f"{100 * rate_ns / (bound_rate / 3):.0f}% of its bound"),
            ("end-to-end, 4 daemon processes", "not measured", "needs the daemon harness"),
        ]
        w = max(len(r[0]) for r in rows)
        print(f"\nledger replica benchmark: {args.certs} certificates, 4 validators, sync batches of {SYNC_BATCH}")
        for name, val, note in rows:
            print(f"  {name:<{w}}  {val:>16}  {note}")
        print(f"  state roots of both runs identical: {root1.hex()[:16]}")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            apply_backlog(g, batches[:max(1, 4000 // SYNC_BATCH)], tmp / "p", verify_sender=True)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
            print("\nwhere the time goes (cProfile, 4,000 certificates, by own time):")
            print("\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
