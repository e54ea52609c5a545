"""Round time of one FL session on N `fognode run` processes on loopback, split by phase.

    .venv/bin/python -m fognode.tools.bench.fl --part rounds [--nodes 10] [--round-time-rounds 3]
        [--star] [--no-warmup] [--in-process] [--keep]

N real daemons (own data dirs, one shared dev genesis, node i bootstraps to node 0, TCP on
127.0.0.1; see tools/devnet.py). TOPOLOGY: by default `overlay.peers_low=N-1` and the bench
waits until every daemon is connected to every other; with `--star`, peers_low=1: every node
keeps only its bootstrap connection to node 0 and a participant dials the round's aggregator
on demand (address from its peerstore or a DHT look-up). WARM-UP: first a 1-round session of
the small `synthetic` task, bounded at 240 s, so that each daemon's first torch use (its task
process imports torch: about 1.5 s of CPU each, 10 at once on 2 cores) and the first streams
between the daemons are not inside the measured session (`--no-warmup` skips it). Each daemon
starts its task process, and so imports torch, when its FL role starts
(`protocols.fl.task_process_at_start`): 10 first torch imports at once took 51-67 s at load 22,
past the 15 s opt-in window, and round 1 of the warm-up used up its retries waiting for opt-ins. A session
that does not complete still gets its table (a column for the unfinished round, the failed
sends by reason from the daemons' logs) and the command exits with status 1. The daemons' data
dirs and logs are kept (as with `--keep`) and their path printed when either session did not
complete or needed more than one try for its round 1, when a round took over STALLED_ROUND
seconds (session 30 saw 5-7 s rounds in 3 of about 40 runs, cause unknown), and when the run raised. The "stream open"
rows time every FL transfer stream the daemons opened (transfer sessions, per-transfer streams).

Node 0 starts the session through its RPC socket (`fl.start`, task `synthetic_mlp` with a 2048-unit
hidden layer: 145,418 parameters, 0.58 MB per float32 tensor, as in the one-process run) and trains too, so the N processes are the N participants of a round
(`participants = N`, `min_participants = N - 2` so one slow update does not void a round;
opt-in lasts 15 s so that round 1 already selects all N; a starter that does not train would
add a process that only gossips and serves models). Deadline 20 s per aggregator slot, two
fallbacks, three retries.

Every figure comes from the daemons' own measurements: the deltas of their Prometheus
histograms (`/metrics`, scraped on every node before the session, when round 1 is recorded and
after the session; with `--scrape rounds` also each time the coordinator records a later round,
so each round has its own column: fognode_fl_training_seconds,
fognode_fl_transfer_seconds{stream}, fognode_fl_aggregation_seconds) and `fl.status`
(the coordinator's rounds with `started_at` and `duration`; each participant's rounds with
`plan_at`, the wall-clock time it saw the round's plan; all processes share one clock).

The CPU seconds of every daemon and its task process (psutil) are read at the same moments.
The table, its second critical-path bound, which counts the shared cores, and the CPU floor
of those cores (no schedule can be faster) are in tools/bench/fl_rounds_table.py. The bounds are measured in the same run, after the session,
with the daemons idle: the same
local trainings (every node's data, evaluate + train, the work a daemon does per round) one
after the other in this process; FedAvg of N updates of the same size in this process; the
same model bytes fetched over one libp2p stream from the coordinator daemon by a libp2p host
in this process, with the CPU seconds that fetch costs the daemon and this process, and one
request/response round trip on that stream protocol (the floor of one gossip hop), all timed
once the host's connections have settled (the other daemons dial it when it joins), and the
same fetch on an open transfer session (tools/bench/fl_fetch.py); the same bytes over a plain
TCP socket on loopback.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from fognode.tools.bench.fl_fetch import FetchBounds, stream_bounds, tree_cpu
from fognode.tools.bench.metrics_scrape import Mean, Sample, counter, hist, scrape
from fognode.tools.devnet import Devnet, DevnetNode, free_port, wait_until

TASK = "synthetic_mlp"
TASK_PARAMS = {"hidden": 2048.0, "max_samples": 200.0}
LOCAL_EPOCHS = 1
LR = 0.05
BATCH = 10
DATA_SEED = 3
DEADLINE = 20.0        # seconds per aggregator slot; a stalled slot passes to the fallback
STALLED_ROUND = 2.0    # seconds: a round longer than this keeps the daemons' logs (rounds take ~0.3 s)
WARMUP_TIMEOUT = 240.0  # bound on the warm-up session (60 s was too short at load 42)
IDLE_LAG = 5.0         # seconds of idle daemons over which their event-loop lag is the bound
OPTIN = 15.0           # seconds of opt-in: long enough for all N daemons to load the task, so
                       # round 1 selects all N (it would start with min_participants otherwise)
@dataclass(frozen=True)
class Bounds:
    train: list[float]        # seconds of each node's local training, alone in this process
    first_train: float        # seconds of the first training in this process (first-use costs)
    fedavg: float             # seconds, FedAvg of N updates in this process
    fetch: float              # median seconds, one model fetch over one libp2p stream
    fetch_cpu: tuple[float, float]   # CPU seconds of one such fetch: (sending daemon, receiver here)
    rtt: float                # median seconds, one request/response on an open connection
    session: float            # median seconds, one model fetch on an open transfer session
    session_cpu: tuple[float, float]  # CPU seconds of one such fetch, as fetch_cpu
    settled: str              # the fetching host's connections before the timing (fl_fetch.settle)
    tcp: float                # median seconds, the same bytes over plain TCP on loopback
    idle_lag: float           # mean event-loop lag of the daemons, idle, for IDLE_LAG seconds


@dataclass(frozen=True)
class RoundsResult:
    nodes: int
    parameters: int
    state: str
    setup: float                           # fl.start answered -> round 1 planned (s)
    history: list[dict[str, Any]]          # the coordinator's rounds
    plan_delays: dict[int, list[float]]    # round -> participants' plan_at - started_at
    phases: dict[str, list[Mean]]          # phase -> one Mean per recorded round (and one for
                                           # the unfinished round when the session did not complete)
    bytes_per_round: float
    bounds: Bounds
    problems: dict[str, int]               # update sends that failed, by reason
    mesh: bool
    warmup: str                            # how the warm-up session went
    cpu: list[float]                       # CPU seconds of the daemons and their task processes,
                                           # per recorded round (same columns as `phases`)
    idle_cpu: float                        # CPU seconds per second of the same daemons idle
    cores: int                             # CPUs this process (and the daemons) may run on
    gossip: dict[str, list[float]]         # topic -> gossip messages delivered to the nodes' roles,
                                           # per recorded round (same columns as `phases`)
    steady: dict[str, Mean]                # phase -> rounds 2+ together (round 1 recorded -> last round)
    steady_gossip: dict[str, float]        # topic -> messages per round, rounds 2+
    scrape: str                            # "ends" or "rounds" (SCRAPE_MODES)


# When the bench scrapes every daemon's /metrics during the session. One scrape costs a daemon
# about 4 ms of CPU (800 samples; helper "xfer", session 27), so a scrape of 10 daemons after each
# round put some 40 ms of CPU into the next round, about a tenth of a round's CPU: "ends" (the
# default) scrapes only before the session, when round 1 is recorded and after it (the rounds-2+
# column is the delta between the last two, which is what the per-round deltas summed to); "rounds"
# also scrapes after each later round, for per-round columns, and disturbs what it measures.
SCRAPE_MODES = ("ends", "rounds")

PHASES = {   # phase -> (histogram, labels, which nodes: "all", "participants" (not node 0), "coordinator")
    "model fetch, participant <- coordinator": ("fognode_fl_transfer_seconds", {"stream": "model"}, "participants"),
    "local training (evaluate + 1 epoch)": ("fognode_fl_training_seconds", {}, "all"),
    "update transfer, participant -> aggregator": ("fognode_fl_transfer_seconds", {"stream": "update"}, "all"),
    "aggregation (fedavg)": ("fognode_fl_aggregation_seconds", {}, "all"),
    "new model fetch, coordinator <- aggregator": ("fognode_fl_transfer_seconds", {"stream": "model"}, "coordinator"),
    "event-loop lag, mean of 0.25 s probes": ("fognode_node_event_loop_lag_seconds", {}, "all"),
    **{f"stream open: {what}": ("fognode_fl_stream_open_seconds", {"stream": k}, "all") for k, what in (
        ("xfer", "transfer session"), ("update", "update stream"), ("model", "model stream"))},
}


# -- bounds, measured in this process ------------------------------------------------------

def local_training(nodes: int) -> tuple[float, list[float]]:
    """Each node's round work (evaluate on train and test, one epoch), one after the other,
    after one first call (returned separately: torch's first-use costs)."""
    import torch

    from fognode.protocols.fl.training.prepared import prepare_task, train_round
    from fognode.protocols.fl.tasks import TrainConfig

    torch.set_num_threads(1)     # as the daemons (protocols.fl.torch_threads = 1)
    cfg = TrainConfig(epochs=LOCAL_EPOCHS, lr=LR, batch_size=BATCH)
    prepared = [prepare_task(TASK, TASK_PARAMS, 0, data_seed=DATA_SEED, data_index=k) for k in range(nodes)]

    def work(k: int) -> float:
        p = prepared[k]
        assert p.local is not None
        t = time.perf_counter()
        train_round(p.local, p.initial_params, cfg, k)
        return time.perf_counter() - t

    first = work(0)              # torch's first-use costs (each daemon pays them in round 1)
    return first, [work(k) for k in range(nodes)]


def fedavg_seconds(n: int, size: int) -> float:
    """The aggregator's step (FedAvg of n sample-weighted updates), median of 5."""
    from fognode.protocols.fl.strategies.base import ClientUpdate
    from fognode.protocols.fl.strategies.registry import make_strategy

    rng = np.random.default_rng(0)
    base = rng.standard_normal(size).astype(np.float32)
    ups = [ClientUpdate(f"p{i}", rng.standard_normal(size).astype(np.float32), 100 + i) for i in range(n)]
    times = []
    for _ in range(5):
        strategy = make_strategy("fedavg")
        t = time.perf_counter()
        strategy.aggregate(base, ups)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def tcp_seconds(nbytes: int, repeats: int = 5) -> float:
    """`nbytes` over a plain TCP connection on 127.0.0.1 (send all, read all), median."""
    payload = os.urandom(nbytes)
    times = []
    with socket.create_server(("127.0.0.1", 0)) as srv:
        for _ in range(repeats):
            got = bytearray()

            def reader() -> None:
                conn, _ = srv.accept()
                with conn:
                    while len(got) < nbytes:
                        chunk = conn.recv(1 << 20)
                        if not chunk:
                            break
                        got.extend(chunk)
                    conn.sendall(b"k")

            th = threading.Thread(target=reader)
            th.start()
            t = time.perf_counter()
            with socket.create_connection(srv.getsockname()) as c:
                c.sendall(payload)
                c.recv(1)
            times.append(time.perf_counter() - t)
            th.join()
            assert len(got) == nbytes
    return statistics.median(times)



# -- the run -------------------------------------------------------------------------------

def _undelivered(net: Devnet) -> dict[str, int]:
    """The daemons' own log lines about update sends that failed, counted by reason."""
    import re

    out: dict[str, int] = {}
    pat = re.compile(r"not delivered: (.*)$")
    for n in net.nodes:
        try:
            text = n.log_path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            m = pat.search(line)
            if m:
                reason = re.sub(r"12D3KooW\w+", "<peer>", m.group(1))
                out[reason] = out.get(reason, 0) + 1
    return out


class _Terminated(Exception):
    pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(f"signal {signum}")


def run_processes(nodes: int, rounds: int, *, keep: bool = False, mesh: bool = True,
                  warmup: bool = True, timeout: float = 120.0, timeline: str | None = None,
                  scrape_mode: str = "ends") -> RoundsResult:
    """Start `nodes` daemons, run one session from node 0, measure, stop every process
    (also on error, Ctrl-C or SIGTERM). Raises RuntimeError/TimeoutError with the cause.
    `timeline`: a file to write every node's final `fl.status` of the session to (JSON, node
    order; its "marks" are the node's round timeline, read by tools/bench/fl_timeline.py).
    `scrape_mode`: one of SCRAPE_MODES."""
    if scrape_mode not in SCRAPE_MODES:
        raise ValueError(f"scrape mode must be one of {SCRAPE_MODES}, got {scrape_mode!r}")
    import trio

    root = Path(tempfile.mkdtemp(prefix="fb-", dir="/tmp"))     # short: unix socket paths
    # TOPOLOGY (module docstring): a star around node 0, or with `mesh` a full mesh
    net = Devnet(root, nodes, extra_args=[
        "--set", f"overlay.peers_low={nodes - 1 if mesh else 1}",
        "--set", "protocols.fl.tick_interval=0.05", "--set", "protocols.fl.republish_interval=1.0",
        "--set", f"protocols.fl.data_seed={DATA_SEED}", "--set", "protocols.fl.task_process_at_start=true"])
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    keep_logs = True    # until both sessions completed, round 1 in one try, no stalled round: else the logs stay
    try:
        print(f"starting {nodes} daemons in {root} ...", file=sys.stderr, flush=True)
        net.create()
        ports = []
        for node in net.nodes:
            ports.append(free_port())
            node.args = ["--metrics-port", str(ports[-1]), "--set", f"protocols.fl.data_index={node.index}"]
        net.start_all(timeout=90)
        coord = net.nodes[0]
        wait_until(lambda: len(coord.rpc("node.peers")) >= nodes - 1, timeout=120, interval=0.25,
                   what=f"the {nodes - 1} other daemons to connect to node 0")
        if mesh:
            wait_until(lambda: all(len(n.rpc("node.peers")) >= nodes - 1 for n in net.nodes), timeout=180,
                       interval=0.5, what="every daemon to be connected to every other")
        warm = "skipped"
        if warmup:
            print("warm-up session (1 round of `synthetic`) ...", file=sys.stderr, flush=True)
            w = coord.rpc("fl.start", {
                "task": "synthetic", "rounds": 1, "min_participants": max(2, nodes - 2), "participants": nodes,
                "deadline": DEADLINE, "local_epochs": 1, "lr": LR, "batch_size": BATCH, "optin_seconds": OPTIN,
                "task_params": {"max_samples": 100.0}}, timeout=60)
            try:
                ws = wait_until(lambda: (lambda st: st if st["state"] != "running" else None)(
                    coord.rpc("fl.status", [w["session_id"], True])), timeout=WARMUP_TIMEOUT, interval=0.25,
                    what="the warm-up session")
                warm = f"{ws['state']}" + (f" in {ws['history'][0]['duration']:.1f} s, {ws['history'][0]['tries']} "
                                           f"tries" if ws["history"] else "")
                for why in (ws["history"][0]["failures"] if ws["history"] else [ws.get("reason", "")]):
                    print(f"  warm-up round 1: {why}", file=sys.stderr)   # the failed tries
            except TimeoutError:
                coord.rpc("fl.stop", [w["session_id"]])
                warm = f"stopped unfinished after {WARMUP_TIMEOUT:.0f} s"
        pids = [n.proc.pid for n in net.nodes if n.proc is not None]
        before = [scrape(p) for p in ports]
        cpus = [tree_cpu(pids)]   # CPU used so far, again each time a round is recorded
        t_start = time.time()
        out = coord.rpc("fl.start", {
            "task": TASK, "rounds": rounds, "min_participants": max(2, nodes - 2), "participants": nodes,
            "deadline": DEADLINE, "local_epochs": LOCAL_EPOCHS, "lr": LR, "batch_size": BATCH,
            "optin_seconds": OPTIN, "task_params": TASK_PARAMS}, timeout=60)
        sid = out["session_id"]
        print(f"session {sid[:16]}: {nodes} participants, {rounds} rounds of {TASK} "
              f"({out['parameters']:,} parameters)", file=sys.stderr, flush=True)
        # metrics of every node, then again when round 1 is recorded (and, scraping "rounds",
        # when each later one is); None: a round recorded without a scrape
        snaps: list[list[dict[Sample, float]] | None] = [before]
        end = time.monotonic() + timeout
        while True:
            done = coord.rpc("fl.status", [sid, True])
            while len(snaps) <= len(done["history"]):
                snaps.append([scrape(p) for p in ports] if len(snaps) == 1 or scrape_mode == "rounds" else None)
                cpus.append(tree_cpu(pids))
            if done["state"] != "running":
                break
            if time.monotonic() > end:
                done["state"] = f"still running after {timeout:.0f} s"
                break
            time.sleep(0.25)     # poll interval of fl.status
        after = [scrape(p) for p in ports]
        if done["state"] != "completed":
            cpus.append(tree_cpu(pids))      # what the unfinished round used
        elif snaps[-1] is None:
            snaps[-1] = after                # the session ended with its last round recorded
        history = done["history"]
        start_of = {h["round"]: h["started_at"] for h in history}
        delays: dict[int, list[float]] = {r: [] for r in start_of}
        statuses = [done]
        for n in net.nodes[1:]:
            statuses.append(n.rpc("fl.status", [sid, True]))
            for e in statuses[-1]["history"]:
                if e["round"] in start_of and "plan_at" in e:
                    delays[e["round"]].append(e["plan_at"] - start_of[e["round"]])
        if timeline:
            Path(timeline).write_text(json.dumps(
                [dict(st, peer_id=n.peer_id) for st, n in zip(statuses, net.nodes)]))
        nan = float("nan")
        phases: dict[str, list[Mean]] = {}
        steady: dict[str, Mean] = {}
        last = snaps[len(history)] if len(history) > 1 else None   # round 2+: snaps[1] -> last
        for name, (metric_name, labels, who) in PHASES.items():
            pick = slice(1, None) if who == "participants" else slice(0, 1) if who == "coordinator" else slice(None)

            def delta(a: list[dict[Sample, float]] | None, b: list[dict[Sample, float]] | None) -> Mean:
                return Mean(nan, 0) if a is None or b is None else hist(a[pick], b[pick], metric_name, labels)

            phases[name] = [delta(snaps[k - 1], snaps[k]) for k in range(1, len(history) + 1)]
            if done["state"] != "completed":    # what the unfinished round measured
                phases[name].append(delta(snaps[len(history)], after))
            steady[name] = delta(snaps[1], last) if len(history) > 1 else phases[name][0] if history else Mean(nan, 0)
        gossip: dict[str, list[float]] = {}
        steady_gossip: dict[str, float] = {}
        for name, sample_labels in sorted(after[0]):
            if name == "fognode_node_gossip_messages_in_total":
                topic = dict(sample_labels)["topic"]
                gossip[topic] = [nan if a is None or b is None else counter(a, b, name, dict(sample_labels))
                                 for a, b in zip(snaps, snaps[1:] + [after])]
                gossip[topic] = gossip[topic][:len(phases["aggregation (fedavg)"])]
                steady_gossip[topic] = (counter(snaps[1], last, name, dict(sample_labels)) / (len(history) - 1)
                                        if last is not None and snaps[1] is not None else nan)
        size = int(out["parameters"])
        sent = counter(before, after, "fognode_fl_bytes_sent_total", {"stream": "update"}) \
            + counter(before, after, "fognode_fl_bytes_sent_total", {"stream": "model"})
        print("measuring the bounds with the daemons idle ...", file=sys.stderr, flush=True)
        cpu_idle0 = tree_cpu(pids)
        time.sleep(IDLE_LAG)     # the daemons' event-loop lag and CPU when idle, over IDLE_LAG seconds
        idle_cpu = (tree_cpu(pids) - cpu_idle0) / IDLE_LAG
        idle = [scrape(p) for p in ports]
        idle_lag = hist(after, idle, "fognode_node_event_loop_lag_seconds").mean
        nan2 = (nan, nan)     # if they time out, the session still gets its table
        fb = FetchBounds(rtt=nan, fetch=nan, fetch_cpu=nan2, session=nan, session_cpu=nan2, settled="timed out")
        with contextlib.suppress(trio.TooSlowError):
            fb = trio.run(stream_bounds, coord.addr, coord.peer_id, bytes.fromhex(sid),
                          bytes.fromhex(done["model_hash"]), size, pids[0])
        for why in history[0]["failures"] if history else [done.get("reason", "")]:
            print(f"  round 1: {why}", file=sys.stderr)        # the failed tries
        warm_bad = warm != "skipped" and not (warm.startswith("completed") and warm.endswith(" 1 tries"))
        keep_logs = done["state"] != "completed" or not history or history[0]["tries"] > 1 or warm_bad
        stalled = [h["round"] for h in history if h.get("duration", 0.0) > STALLED_ROUND]
        if stalled:     # kept for its logs: the rare multi-second rounds are not explained yet
            print(f"  rounds over {STALLED_ROUND:g} s: {stalled}", file=sys.stderr)
            keep_logs = True
        first, trains = local_training(nodes)
        bounds = Bounds(train=trains, first_train=first, fedavg=fedavg_seconds(nodes, size), fetch=fb.fetch,
                        fetch_cpu=fb.fetch_cpu, rtt=fb.rtt, session=fb.session, session_cpu=fb.session_cpu,
                        settled=fb.settled, tcp=tcp_seconds(size * 4), idle_lag=idle_lag)
        return RoundsResult(nodes=nodes, parameters=size,
            state=done["state"] + (f" ({done['reason']})" if done.get("reason") else ""),
            setup=history[0]["started_at"] - t_start if history else float("nan"),
            history=history, plan_delays=delays, phases=phases,
            bytes_per_round=sent / max(len(history), 1), bounds=bounds, problems=_undelivered(net),
            mesh=mesh, warmup=warm, cpu=[b - a for a, b in zip(cpus, cpus[1:])], idle_cpu=idle_cpu,
            cores=len(os.sched_getaffinity(0)), gossip=gossip, steady=steady, steady_gossip=steady_gossip,
            scrape=scrape_mode)
    except BaseException:
        for n in net.nodes:
            if n.proc is not None and n.proc.poll() is not None and n.proc.returncode != 0:
                print(f"node {n.index} exited with {n.proc.returncode}:\n{net.log_tail(n.index)}", file=sys.stderr)
        if net.nodes:
            print(f"coordinator log tail:\n{net.log_tail(0, 15)}", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, _on_sigterm)   # a second SIGTERM must not skip the cleanup
        try:
            net.stop_all(timeout=10)
        finally:
            signal.signal(signal.SIGTERM, old)
            if keep or keep_logs:
                print(f"the daemons' data dirs and logs are kept in {root} (node*/daemon.log)",
                      file=sys.stderr, flush=True)
            else:
                import shutil

                shutil.rmtree(root, ignore_errors=True)
