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
4. end to end: certified transfers per second through 4 `fognode run` processes on loopback
   (each node sends from its default wallet, one wallet.send after the other, all four nodes
   at once), and p50/p99 latency from the wallet.send call to its final answer (skip with
   --no-e2e). `--wallets K` gives every node K wallets, each sending from its own thread
   (FastPay allows one order in flight per sender; different senders pipeline). Printed next
   to it: the signature bound of the same run (5 signs + 20 verifies per transfer on all
   cores, measured right after the run, daemons stopped), the event-loop lag of the daemons during the burst
   (their `fognode_node_event_loop_lag_seconds` histograms, scraped before and after), the
   daemons' CPU time per transfer (their idle CPU rate, measured for 3 s before the burst,
   taken off) against its signature work (less sensitive to a shared, loaded machine than the
   rate; 25 % of the bound needs at most 4x the signature work with every core busy) and the
   synced writes per transfer (`fognode_ledger_store_syncs_total`, when the daemon has it) and
   the mean time of one (hand-over to the writer thread and back), the kernel's share of the
   daemons' CPU, the benchmark's own CPU per transfer (its RPC clients share the cores; not in the figure),
   and the 5 slowest transfers (which node, wallet and send, and when it started: a stall at
   the burst's start shows as first sends) with the daemons' "slow order" log lines (each
   phase of an order that took over a second, ledger/submit.py).
   Each sending wallet keeps one control-socket connection (`--rpc-per-send`: a new one per
   send, the driver before session 23). `--count-wire` counts yamux frames, stream frames and
   pubsub messages and control entries per transfer (ledger_wire.py); `--pyspy PATH` samples
   each daemon and the benchmark (py-spy `--gil`, raw; `--pyspy-all-threads`: every active
   thread) from the burst's start; a row gives the daemons' main threads' share of the burst's CPU.
   Until node/roles.py lists the ledger role, the daemons are started through a one-line
   runner that adds it;
5. (--profile) where the time goes in the replica apply, by cProfile.

    .venv/bin/python -m fognode.tools.bench.ledger --certs 2000 --wallets 4 [--count-wire]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
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
from fognode.tools.bench import ledger_wire

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


def bench_chain(users: int) -> tuple[Genesis, list[SigningKey], list[SigningKey]]:
    """A genesis with 4 equal validators and `users` funded accounts (deterministic keys):
    (genesis, validator keys, user keys)."""
    vals = [SigningKey(bytes([100 + i]) * 32) for i in range(4)]
    ks = [SigningKey(i.to_bytes(2, "big") * 16) for i in range(users)]
    g = Genesis.from_dict({
        "v": 1, "chain_id": CHAIN, "genesis_time": 0, "epoch_length": 3600,
        "balances": {encode_address(bytes(k.verify_key)): 10**12 for k in ks},
        "validators": [{"address": encode_address(bytes(v.verify_key)), "stake": 10**9} for v in vals],
        "emission": {"initial_epoch_budget": 0, "halving_epochs": 0, "tail_epoch_budget": 0},
        "fee": 1000, "fee_destination": "burn", "unbonding_epochs": 1, "uptime_reward_per_hour": 0,
    })
    return g, vals, ks


def make_backlog(n: int, users: int = 64) -> tuple[Genesis, list[bytes]]:
    """n transfers among `users` funded accounts, certified 3-of-4, as packed sync responses."""
    g, vals, ks = bench_chain(users)
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


class RawVerifier:
    """Bursts of raw libsodium checks interleaved with the apply run, so the bound is measured
    under the same machine load as the figure it bounds (this machine is shared)."""

    def __init__(self) -> None:
        k = SigningKey(b"\x07" * 32)
        msg = pack({"v": 1, "kind": "ledger.vote", "tx": b"\x01" * 32})
        self.sm = k.sign(msg).signature + msg
        self.pk = bytes(k.verify_key)
        self.count = 0
        self.seconds = 0.0

    def burst(self, n: int) -> None:
        sm, pk = self.sm, self.pk
        t = time.perf_counter()
        for _ in range(n):
            crypto_sign_open(sm, pk)
        self.seconds += time.perf_counter() - t
        self.count += n

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def apply_backlog(g: Genesis, batches: list[bytes], path: Path, *, verify_sender: bool,
                  raw: RawVerifier | None = None) -> tuple[float, int, bytes]:
    """Apply the sync batches to a fresh store; certificates/s over the apply time only."""
    store = LedgerStore(path, g)
    replica = Replica(store.load_state(), store, PendingPool(100_000), verify_sender=verify_sender)
    applied = 0
    elapsed = 0.0
    for data in batches:
        t = time.perf_counter()
        resp = unpack(data, max_size=64 << 20, what="sync response")
        certs = [decode_certificate(item[1]) for item in resp["certs"]]
        deltas = []
        for c in certs:
            for a in replica.receive("bench", c):
                if isinstance(a, Commit):
                    deltas.append(a.delta)
        store.commit(deltas)
        replica.committed()
        elapsed += time.perf_counter() - t
        applied += len(deltas)
        if raw is not None:
            raw.burst(len(certs))
    root = replica.state.root()
    assert replica.state.invariant_problems() == [], replica.state.invariant_problems()
    store.close()
    return applied / elapsed, applied, root


_RUNNER = ("import os, sys; w = os.environ.get('BENCH_LEDGER_WIRE'); "
           "w and __import__('fognode.tools.bench.ledger_wire', fromlist=['install']).install(f'{w}/wire-{os.getpid()}.json'); "
           "from fognode.node import roles; ref = 'fognode.ledger.protocol:LedgerRole'; "
           "roles.BUILTIN_ROLES = roles.BUILTIN_ROLES if ref in roles.BUILTIN_ROLES else (*roles.BUILTIN_ROLES, ref); "
           "from fognode.tools.fognode import main; sys.exit(main())")


def sign_verify_rates(seconds: float = 1.0) -> tuple[float, float]:
    """Ed25519 signs and verifies per second on one core (PyNaCl, as the daemons use it)."""
    k = SigningKey(b"\x09" * 32)
    msg = pack({"v": 1, "kind": "ledger.vote", "tx": b"\x02" * 32})
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        k.sign(msg)
        n += 1
    sign = n / (time.perf_counter() - t)
    sig, vk = k.sign(msg).signature, k.verify_key
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        vk.verify(msg, sig)
        n += 1
    return sign, n / (time.perf_counter() - t)


def scrape(port: int) -> dict[str, float]:
    """The daemon's Prometheus samples we read: loop-lag histogram and store syncs."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(("fognode_node_event_loop_lag_seconds", "fognode_ledger_store_syncs_total",
                                "fognode_ledger_orders_rejected_total", "fognode_ledger_store_write_seconds_sum",
                                "fognode_ledger_store_write_seconds_count")):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
    return out


def lag_summary(before: list[dict[str, float]], after: list[dict[str, float]]) -> dict[str, Any]:
    """Loop-lag probes during the burst, all daemons: mean, share late by > 25 / 100 ms."""
    def delta(key: str) -> float:
        return sum(a.get(key, 0.0) - b.get(key, 0.0) for a, b in zip(after, before))
    count = delta("fognode_node_event_loop_lag_seconds_count") or 1.0
    le = 'fognode_node_event_loop_lag_seconds_bucket{le="%s"}'
    refused = {k.split('reason="')[1].rstrip('"}'): delta(k) for k in after[0]
               if k.startswith("fognode_ledger_orders_rejected_total{")}
    return {"mean": delta("fognode_node_event_loop_lag_seconds_sum") / count,
            "over25": 1 - delta(le % "0.025") / count, "over100": 1 - delta(le % "0.1") / count,
            "probes": count, "syncs": delta("fognode_ledger_store_syncs_total"),
            "write_mean": delta("fognode_ledger_store_write_seconds_sum") / max(1.0, delta("fognode_ledger_store_write_seconds_count")),
            "refused": {k: v for k, v in refused.items() if v}}


def _main_thread_cpu(p: psutil.Process) -> float:
    """User+sys seconds of the process's main thread (the trio loop; the others are the ledger
    writer's and worker threads)."""
    return sum(t.user_time + t.system_time for t in p.threads() if t.id == p.pid)


def end_to_end(root: Path, sends_per_node: int, wallets: int = 1, *, rpc_per_send: bool = False,
               count_wire: bool = False, daemon_set: list[str] | None = None, pyspy: str | None = None,
               pyspy_out: Path | None = None, pyspy_seconds: float = 10.0, pyspy_gil: bool = True) -> dict[str, Any]:
    """4 daemons; every wallet of every node sends `sends_per_node` transfers to the next
    node's default wallet, each wallet from its own thread over its own control-socket
    connection (`rpc_per_send`: a new connection per send, the driver before session 23,
    which costs the daemon an accept and a connection's tasks per transfer). With `pyspy` (the path of a py-spy
    binary), each daemon and this process are sampled (`--gil` unless not `pyspy_gil`, raw) for
    `pyspy_seconds` from the burst's start into `pyspy_out`."""
    from fognode.ledger.genesis import DEV_FUNDING, DEV_STAKE, dev_genesis
    from fognode.ledger.wallet import Keystore
    from fognode.node.datadir import load_identity, write_genesis
    from fognode.node.rpc.client import RpcClient
    from fognode.tools.devnet import Devnet, DevnetNode, wait_until

    class LedgerDevnet(Devnet):
        def command(self, node: DevnetNode) -> list[str]:
            cmd = super().command(node)
            i = cmd.index("-m")
            return [*cmd[:i], "-c", _RUNNER, *cmd[i + 2:]]

        def create(self) -> None:
            super().create()
            funded = []
            for n in self.nodes:
                ks = Keystore(n.datadir)
                funded.append(ks.default() or ks.create("", "default"))
                funded.extend(ks.create("", f"w{j}") for j in range(1, wallets))
            genesis = json.loads((self.nodes[0].datadir / "genesis.json").read_text())
            ids = [bytes(load_identity(n.datadir).verify_key) for n in self.nodes]
            genesis["ledger"] = dev_genesis(genesis["chain_id"], [(k, DEV_STAKE) for k in ids],
                                            {w: DEV_FUNDING for w in funded})
            for n in self.nodes:
                write_genesis(n.datadir, genesis)

    env = {"FOGNODE_PASSPHRASE": ""}
    if count_wire:
        env["BENCH_LEDGER_WIRE"] = str(root)
    net = LedgerDevnet(root / "net", 4, env=env, metrics=True,
                       extra_args=["--set", "overlay.peers_low=3", "--set", "overlay.connmgr_interval=0.5",
                                   *[a for kv in daemon_set or [] for a in ("--set", kv)]])
    try:
        net.create()
        net.start_all(timeout=120)
        wait_until(lambda: all(len(n.rpc("node.peers")) == 3 for n in net.nodes), timeout=60, what="4 daemons connected")
        addrs = [n.rpc("wallet.address")["address"] for n in net.nodes]
        own = [[w["address"] for w in n.rpc("wallet.list")] for n in net.nodes]
        # the daemons unlock their wallets as they start (a burst of Argon2id): done before
        # the idle CPU is measured, or the idle rate taken off the burst's CPU would include it
        wait_until(lambda: all(w["unlocked"] for n in net.nodes for w in n.rpc("wallet.list")),
                   timeout=60, what="every wallet unlocked")
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()

        slowest: list[tuple[float, str]] = []      # (latency, which send: node, wallet, number, start)

        def sender(i: int, wallet: str) -> None:
            client = RpcClient(net.nodes[i].socket, timeout=60)     # one connection per wallet
            try:
                for k in range(sends_per_node):
                    t = time.perf_counter()
                    try:
                        if rpc_per_send:
                            net.nodes[i].rpc("wallet.send", [addrs[(i + 1) % 4], "0.01", "", wallet], timeout=60)
                        else:
                            client.call("wallet.send", [addrs[(i + 1) % 4], "0.01", "", wallet])
                    except Exception as e:  # counted and reported, the run goes on
                        with lock:
                            errors.append(f"node {i}: {e}")
                        client.close()
                        continue
                    with lock:
                        latencies.append(time.perf_counter() - t)
                        slowest.append((latencies[-1], f"node {i} wallet {own[i].index(wallet)} send {k} "
                                                       f"(started at +{t - t0:.2f} s)"))
            finally:
                client.close()

        threads = [threading.Thread(target=sender, args=(i, w)) for i in range(4) for w in own[i]]
        before = [scrape(n.metrics_port) for n in net.nodes]
        procs = [psutil.Process(n.proc.pid) for n in net.nodes if n.proc is not None]
        idle0, ti = sum(sum(p.cpu_times()[:2]) for p in procs), time.perf_counter()
        time.sleep(3.0)                  # the daemons' CPU when idle (heartbeats, probes, gossip)
        cpu0 = sum(sum(p.cpu_times()[:2]) for p in procs)
        sys0 = sum(p.cpu_times().system for p in procs)
        main0 = sum(_main_thread_cpu(p) for p in procs)
        idle_rate = (cpu0 - idle0) / (time.perf_counter() - ti)
        wire0 = [ledger_wire.read(f"{root}/wire-{p.pid}.json") for p in procs] if count_wire else []
        t0, driver0 = time.perf_counter(), time.process_time()
        for th in threads:
            th.start()
        spies = []
        if pyspy is not None and pyspy_out is not None:
            pyspy_out.mkdir(parents=True, exist_ok=True)
            targets = [(f"daemon{i}", p.pid) for i, p in enumerate(procs)] + [("bench", os.getpid())]
            spies = [subprocess.Popen([pyspy, "record", *(["--gil"] if pyspy_gil else []), "-r", "100", "-d", f"{pyspy_seconds:g}", "-f", "raw",
                                       "-o", str(pyspy_out / f"{name}.txt"), "-p", str(pid)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for name, pid in targets]
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - t0
        driver = time.process_time() - driver0        # this process: the RPC clients (and py-spy's waits)
        for spy in spies:
            spy.wait()
        burst_cpu = sum(sum(p.cpu_times()[:2]) for p in procs) - cpu0
        sys_share = (sum(p.cpu_times().system for p in procs) - sys0) / max(1e-9, burst_cpu)
        main_share = (sum(_main_thread_cpu(p) for p in procs) - main0) / max(1e-9, burst_cpu)
        cpu = burst_cpu - idle_rate * elapsed
        wire: dict[str, float] = {}
        if count_wire:
            time.sleep(2 * ledger_wire.WRITE_EVERY)     # the daemons' last counters
            for p, before_w in zip(procs, wire0):
                for k, v in ledger_wire.read(f"{root}/wire-{p.pid}.json").items():
                    wire[k] = wire.get(k, 0) + v - before_w.get(k, 0)
        lag = lag_summary(before, [scrape(n.metrics_port) for n in net.nodes])
        total = len(threads) * sends_per_node
        wait_until(lambda: len({n.rpc("ledger.state_root")["state_root"] for n in net.nodes}) == 1
                   and all(n.rpc("ledger.state_root")["applied"] == total for n in net.nodes),
                   timeout=60, what="all 4 replicas at the same state root")
        latencies.sort()
        slow_lines = [f"node {i}: {line.strip()}" for i, n in enumerate(net.nodes)
                      for line in n.log_path.read_text(errors="replace").splitlines() if "slow order" in line]
        net.stop_all()
        sign, verify = sign_verify_rates()     # the daemons stopped: what the machine allows now
        sig_work = 5 / sign + 20 / verify           # CPU seconds of signature work per transfer
        bound = (os.cpu_count() or 1) / sig_work
        return {"tps": len(latencies) / elapsed, "bound": bound, "lag": lag, "senders": len(threads), "wire": wire,
                "cpu": cpu / max(1, len(latencies)), "main_share": main_share, "sys_share": sys_share, "sig_work": sig_work, "driver": driver / max(1, len(latencies)),
                "p50": statistics.median(latencies) if latencies else float("nan"),
                "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
                "ok": len(latencies), "errors": errors, "slowest": sorted(slowest, reverse=True)[:5],
                "slow_lines": slow_lines}
    finally:
        net.stop_all()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--certs", type=int, default=20000)
    ap.add_argument("--profile", action="store_true", help="print where the time goes (cProfile)")
    ap.add_argument("--no-e2e", action="store_true", help="skip the 4-daemon end-to-end measurement")
    ap.add_argument("--sends", type=int, default=40, help="wallet.send calls per wallet in the end-to-end run")
    ap.add_argument("--wallets", type=int, default=1, help="wallets per node sending at once (end to end)")
    ap.add_argument("--rpc-per-send", action="store_true",
                    help="open a control-socket connection per wallet.send (the driver before session 23)")
    ap.add_argument("--set", dest="daemon_set", action="append", metavar="KEY=VALUE", default=[],
                    help="a config override for every daemon, e.g. protocols.ledger.hedge_delay=0 (repeatable)")
    ap.add_argument("--count-wire", action="store_true",
                    help="count yamux frames, stream frames and pubsub messages per transfer (ledger_wire.py; "
                         "adds its own CPU)")
    ap.add_argument("--pyspy", metavar="PATH", help="py-spy binary: sample the daemons and this process during the burst")
    ap.add_argument("--pyspy-out", metavar="DIR", type=Path, default=Path("ledger-pyspy"),
                    help="where --pyspy writes its raw profiles (default ./ledger-pyspy)")
    ap.add_argument("--pyspy-all-threads", action="store_true",
                    help="sample every active thread, not only the one holding the GIL (py-spy without --gil)")
    ap.add_argument("--pyspy-seconds", type=float, default=10.0, help="how long --pyspy samples from the burst's start")
    args = ap.parse_args()

    print(f"generating {args.certs} certificates (4 validators, 3-of-4 votes)...", flush=True)
    g, batches = make_backlog(args.certs)
    pynacl, raw = verify_rates()
    tmp = Path(tempfile.mkdtemp(prefix="fogbench-"))
    try:
        raw_a, raw_b = RawVerifier(), RawVerifier()
        rate, applied, root1 = apply_backlog(g, batches, tmp / "a", verify_sender=True, raw=raw_a)
        rate_ns, applied_ns, root2 = apply_backlog(g, batches, tmp / "b", verify_sender=False, raw=raw_b)
        assert applied == applied_ns == args.certs and root1 == root2
        bound_rate = raw_a.rate
        rows = [
            ("Ed25519 verify, PyNaCl VerifyKey.verify (alone)", f"{pynacl:,.0f} /s", ""),
            ("Ed25519 verify, libsodium crypto_sign_open (alone)", f"{raw:,.0f} /s", ""),
            ("Ed25519 verify, libsodium, interleaved with the apply", f"{raw_a.rate:,.0f} /s",
             "the bound's basis"),
            ("bound: verify rate / 4 checks per certificate", f"{bound_rate / 4:,.0f} certs/s", ""),
            ("replica apply, LevelDB, backlog (sender + 3 votes)", f"{rate:,.0f} certs/s",
             f"{100 * rate / (bound_rate / 4):.0f}% of bound"),
            ("bound: verify rate / 3 checks (votes only)", f"{raw_b.rate / 3:,.0f} certs/s", ""),
            ("replica apply, verify_sender=False", f"{rate_ns:,.0f} certs/s",
             f"{100 * rate_ns / (raw_b.rate / 3):.0f}% of its bound"),
        ]
        if args.no_e2e:
            rows.append(("end-to-end, 4 daemon processes", "not measured", "--no-e2e"))
        else:
            print("end to end through 4 daemons...", flush=True)
            e2e_root = Path(tempfile.mkdtemp(prefix="fb-", dir="/tmp"))   # short: unix socket paths
            try:
                e2e = end_to_end(e2e_root, args.sends, args.wallets, rpc_per_send=args.rpc_per_send,
                                 count_wire=args.count_wire, daemon_set=args.daemon_set, pyspy=args.pyspy,
                                 pyspy_out=args.pyspy_out, pyspy_seconds=args.pyspy_seconds,
                                 pyspy_gil=not args.pyspy_all_threads)
            finally:
                shutil.rmtree(e2e_root, ignore_errors=True)
            rows.append((f"end-to-end, 4 daemons, {e2e['senders']} wallets sending", f"{e2e['tps']:,.1f} tx/s",
                         f"{e2e['ok']} final, {len(e2e['errors'])} errors; "
                         f"{100 * e2e['tps'] / e2e['bound']:.1f}% of the bound (target 25%)"))
            rows.append(("  bound: cores / (5 signs + 20 verifies) per transfer", f"{e2e['bound']:,.0f} tx/s",
                         "measured right after the run"))
            rows.append(("  daemons' CPU per transfer (user+sys, net of idle)", f"{1000 * e2e['cpu']:,.1f} ms",
                         f"{e2e['cpu'] / e2e['sig_work']:.1f}x its signature work ({1000 * e2e['sig_work']:.2f} ms); "
                         f"25% of the bound needs <= 4x ({4000 * e2e['sig_work']:.1f} ms) with every core busy"))
            rows.append(("  the same, share spent in the kernel (system time)", f"{100 * e2e['sys_share']:.0f} %",
                         "of the burst's CPU, idle included: syscalls, wake-ups, context switches"))
            rows.append(("  the same, share of the daemons' main threads (the trio loops)",
                         f"{100 * e2e['main_share']:.0f} %", "of the burst's CPU, idle included; the rest: "
                         "writer and worker threads"))
            rows.append(("  the benchmark's own CPU per transfer (its RPC clients)", f"{1000 * e2e['driver']:,.1f} ms",
                         "not in the figure above; it shares the cores"))
            lag = e2e["lag"]
            rows.append(("  loop lag during the burst, mean (4 daemons)", f"{1000 * lag['mean']:,.1f} ms",
                         f"{100 * lag['over25']:.0f}% of probes > 25 ms, {100 * lag['over100']:.0f}% > 100 ms "
                         f"({lag['probes']:.0f} probes)"))
            if lag["syncs"]:
                rows.append(("  synced ledger writes per transfer (4 daemons)",
                             f"{lag['syncs'] / max(1, e2e['ok']):,.2f}", ""))
                rows.append(("  a synced write, from hand-over to the writer thread back, mean",
                             f"{1000 * lag['write_mean']:,.2f} ms", "fognode_ledger_store_write_seconds"))
            for reason, n_refused in sorted(lag["refused"].items()):
                rows.append((f"  orders refused by validators per transfer: {reason}",
                             f"{n_refused / max(1, e2e['ok']):,.3f}", ""))
            rows.append(("  latency wallet.send -> final, p50 / p99",
                         f"{1000 * e2e['p50']:,.0f} / {1000 * e2e['p99']:,.0f} ms", ""))
            for latency, which in e2e["slowest"]:
                rows.append(("  slowest transfers: " + which, f"{1000 * latency:,.0f} ms", ""))
            n = max(1, e2e["ok"])
            wire = e2e["wire"]
            for k, v in sorted(wire.items()):
                if not k.startswith("steps_by_task."):
                    rows.append((f"  wire per transfer (4 daemons): {k}", f"{v / n:,.2f}", ""))
            by_task = sorted(((v, k) for k, v in wire.items() if k.startswith("steps_by_task.")), reverse=True)
            for v, k in by_task[:12]:
                rows.append((f"  trio task steps per transfer: {k.partition('.')[2]}", f"{v / n:,.2f}", ""))
            for line in e2e["slow_lines"][:8]:
                print("  daemon log:", line)
            for err in e2e["errors"][:5]:
                print("  e2e error:", err)
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
