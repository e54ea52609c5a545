"""FL benchmark: FedProx vs FedAvg on Synthetic(1,1) with heterogeneous local work (Li et al.,
MLSys 2020, Figure 1's setting, scaled down), and the round time of one session on N daemon
processes, split by phase.

    .venv/bin/python -m fognode.tools.bench.fl [--part all|fedprox|rounds] [--nodes 10]
        [--round-time-rounds 3] [--in-process] [--star] [--no-warmup] [--keep] [--devices 30] [--per-round 10] [--rounds 30]
        [--epochs 20] [--stragglers 0.9] [--mu 1.0]

Part `fedprox`: in-process simulation with the real `synthetic` task (multinomial logistic
regression, torch SGD, batch 10, lr 0.01) and the real strategies (`fedavg`, `fedprox`): each
round the same `per-round` devices are selected for every method (seeded); a `stragglers`
share of them can only do a random number of local epochs in [1, epochs) this round (system
heterogeneity). As in the paper:

- FedAvg drops the stragglers (devices that did not finish `epochs` epochs),
- FedProx mu=0 keeps their partial work,
- FedProx mu>0 keeps partial work and adds the proximal term.

The figure is the global model's training loss over all devices' training data after each
round; the paper's qualitative result is that FedProx (mu > 0) ends lower than FedAvg. The
bound printed is FedAvg's own final loss in the same run.

Part `rounds`: `--nodes` real `fognode run` processes on 127.0.0.1 run one session of
`--round-time-rounds` rounds of `synthetic_mlp` (~145k parameters); the table splits the mean
round into plan gossip, model fetch, local training, update transfer, aggregation and the
round's duration at the coordinator, each from the daemons' own metrics and `fl.status`, next
to bounds measured in the same run (tools/bench/fl_rounds.py says how). With `--in-process`,
then the same session with N `fl` roles on N libp2p hosts inside this one process (the
earlier form of this benchmark; one interpreter runs every host, each role trains in its own
task process), as a second table.
"""
from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

from fognode.protocols.fl.strategies.base import ClientUpdate
from fognode.protocols.fl.strategies.registry import make_strategy
from fognode.protocols.fl.tasks import LocalData, TrainConfig, load_task


def run(method: str, mu: float, datas: list[LocalData], schedule: list[list[tuple[int, int]]],
        epochs: int, lr: float, task_params: dict[str, float]) -> list[float]:
    task = load_task("synthetic", task_params)
    strategy = make_strategy("fedavg") if method == "fedavg" else make_strategy("fedprox", {"mu": mu})
    params = task.initial_params(0)
    x_all = np.concatenate([d.x_train for d in datas])
    y_all = np.concatenate([d.y_train for d in datas])
    losses = [task.evaluate(params, x_all, y_all).loss]
    for rnd, chosen in enumerate(schedule):
        updates = []
        for dev, local_epochs in chosen:
            if method == "fedavg" and local_epochs < epochs:
                continue   # FedAvg drops stragglers
            cfg = TrainConfig(epochs=local_epochs, lr=lr, batch_size=10, mu=strategy.proximal_mu)
            res = task.train(params, datas[dev], cfg, seed=rnd * 1000 + dev)
            updates.append(ClientUpdate(f"d{dev}", res.params - params, res.num_samples))
        if updates:
            params = strategy.aggregate(params, updates).params
        losses.append(task.evaluate(params, x_all, y_all).loss)
    return losses


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=30)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--stragglers", type=float, default=0.9)
    ap.add_argument("--mu", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--max-samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--part", choices=["all", "fedprox", "rounds"], default="all")
    ap.add_argument("--nodes", "--round-time", dest="nodes", type=int, default=10,
                    help="participants (daemon processes) of the round-time run (0: skip it)")
    ap.add_argument("--round-time-rounds", type=int, default=3)
    ap.add_argument("--in-process", action="store_true",
                    help="also run the same session on N hosts in this one process (second table)")
    ap.add_argument("--keep", action="store_true", help="keep the daemons' data dirs (logs)")
    ap.add_argument("--timeline", metavar="FILE",
                    help="write every node's fl.status of the session (with its round timeline) to FILE "
                         "(tools/bench/fl_timeline.py prints it)")
    ap.add_argument("--scrape", choices=["ends", "rounds"], default="ends",
                    help="scrape the daemons' /metrics only around the session and after round 1 (default), "
                         "or also after every later round (per-round columns; each scrape costs the daemons CPU)")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the 1-round warm-up session before the measured one")
    ap.add_argument("--star", action="store_true",
                    help="daemons connect only to node 0 and dial the aggregator on demand "
                         "(default: every daemon connected to every other first)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)   # tiny models: one intra-op thread is faster than two
    if a.part in ("all", "fedprox"):
        fedprox_vs_fedavg(a)
    if a.part in ("all", "rounds") and a.nodes > 0:
        from fognode.tools.bench.fl_rounds import run_processes
        from fognode.tools.bench.fl_rounds_table import print_table

        if a.nodes < 2:
            ap.error("--nodes must be at least 2")
        t0 = time.perf_counter()
        res = run_processes(a.nodes, a.round_time_rounds, keep=a.keep, mesh=not a.star,
                            warmup=not a.no_warmup, timeline=a.timeline, scrape_mode=a.scrape)
        print_table(res)
        print(f"(processes part in {time.perf_counter() - t0:.0f} s)")
        if a.in_process:
            import trio

            trio.run(round_time, a.nodes, a.round_time_rounds)
        if not res.state.startswith("completed"):
            raise SystemExit(f"the session on {a.nodes} processes did not complete: {res.state}")


def fedprox_vs_fedavg(a: argparse.Namespace) -> None:
    task_params = {"alpha": 1.0, "beta": 1.0, "max_samples": float(a.max_samples)}
    task = load_task("synthetic", task_params)
    datas = [task.local_data(a.seed, k) for k in range(a.devices)]
    rng = random.Random(a.seed)
    schedule = []
    for _ in range(a.rounds):
        chosen = rng.sample(range(a.devices), a.per_round)
        schedule.append([(d, rng.randrange(1, a.epochs) if rng.random() < a.stragglers else a.epochs)
                         for d in chosen])
    print(f"Synthetic(1,1): {a.devices} devices ({sum(d.num_train for d in datas)} training samples), "
          f"{a.per_round} per round, E={a.epochs}, {a.stragglers:.0%} stragglers, lr={a.lr}")
    t0 = time.perf_counter()
    curves = {
        "FedAvg": run("fedavg", 0.0, datas, schedule, a.epochs, a.lr, task_params),
        "FedProx mu=0": run("fedprox", 0.0, datas, schedule, a.epochs, a.lr, task_params),
        f"FedProx mu={a.mu:g}": run("fedprox", a.mu, datas, schedule, a.epochs, a.lr, task_params),
    }
    elapsed = time.perf_counter() - t0
    names = list(curves)
    print(f"{'round':>5} " + " ".join(f"{n:>14}" for n in names))
    for r in range(a.rounds + 1):
        print(f"{r:>5} " + " ".join(f"{curves[n][r]:>14.4f}" for n in names))
    prox = curves[names[2]][-1]
    avg = curves["FedAvg"][-1]
    print()
    print(f"{'figure':<44} {'measured':>10} {'bound':>10}  result")
    print(f"{'final training loss, FedProx mu=' + format(a.mu, 'g'):<44} {prox:>10.4f} {avg:>10.4f}  "
          f"{'lower than FedAvg (as in the paper)' if prox < avg else 'NOT lower than FedAvg'}")
    print(f"{'mean loss over the last 5 rounds, FedProx':<44} {np.mean(curves[names[2]][-5:]):>10.4f} "
          f"{np.mean(curves['FedAvg'][-5:]):>10.4f}")
    print(f"(3 methods x {a.rounds} rounds in {elapsed:.1f} s)")


async def round_time(n: int, rounds: int) -> None:
    """The one-process comparison: n `fl` roles on n libp2p hosts in this process."""
    import os
    import tempfile
    from pathlib import Path

    import trio
    from nacl.signing import SigningKey
    from prometheus_client import CollectorRegistry

    from fognode.node.events import EventBus
    from fognode.node.host import OverlayConfig, open_overlay
    from fognode.node.role import NodeContext
    from fognode.protocols.fl.events import TrainingRoundStarted
    from fognode.protocols.fl.protocol import FlConfig, FlRole

    root = Path(tempfile.mkdtemp(prefix="fl-bench-"))
    starts: dict[int, dict[str, float]] = {}   # round -> peer -> local time it started there

    async def node(i: int, boot: list[str], task_status: trio.TaskStatus[FlRole]) -> None:
        reg = CollectorRegistry()
        bus = EventBus(reg)
        key = SigningKey(os.urandom(32))
        async with open_overlay(OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=boot,
                                              peers_low=n), key, bus, reg) as ov:
            d = root / f"n{i}"
            d.mkdir()
            ctx = NodeContext(peer_id=ov.peer_id, identity=key, overlay=ov, events=bus, metrics=reg,
                              datadir=d, genesis={}, region="eu")
            role = FlRole(ctx, FlConfig(data_seed=3, data_index=i, tick_interval=0.05,
                                        republish_interval=1.0))
            sub = bus.subscribe("bench", [TrainingRoundStarted])
            async with trio.open_nursery() as nursery:
                await nursery.start(role.run)

                async def watch() -> None:
                    async for ev in sub:
                        assert isinstance(ev, TrainingRoundStarted)
                        starts.setdefault(ev.round, {}).setdefault(ov.peer_id, trio.current_time())
                nursery.start_soon(watch)
                task_status.started(role)
                await trio.sleep_forever()

    def hist(roles: list[FlRole], name: str, labels: dict[str, str] | None = None) -> float:
        tot = cnt = 0.0
        for r in roles:
            tot += r.ctx.metrics.get_sample_value(name + "_sum", labels or {}) or 0.0
            cnt += r.ctx.metrics.get_sample_value(name + "_count", labels or {}) or 0.0
        return tot / cnt if cnt else float("nan")

    async with trio.open_nursery() as nursery:
        roles: list[FlRole] = []
        for i in range(n):
            boot = [roles[0].ctx.overlay.listen_addrs()[0]] if roles else []
            roles.append(await nursery.start(node, i, boot))
        with trio.fail_after(60):
            while not all(len([p for p in r.ctx.overlay.peers() if p.connected]) >= 1 for r in roles):
                await trio.sleep(0.05)
        await trio.sleep(2.0)   # let the gossip mesh form
        out = await roles[0].start(task="synthetic_mlp", rounds=rounds, min_participants=n,
                                   participants=n, deadline=120.0, local_epochs=1, lr=0.05,
                                   optin_seconds=5.0,
                                   task_params={"hidden": 2048, "max_samples": 200})
        sid = bytes.fromhex(out["session_id"])
        core = roles[0].core
        assert core is not None
        with trio.fail_after(600):
            while core.status(sid)["state"] == "running":
                await trio.sleep(0.1)
        st = core.status(sid)
        if st["state"] != "completed":
            print("session", st["state"], st["reason"], st.get("current"))
            for r in roles:
                if r.core is not None:
                    print(" node", r.ctx.peer_id[-6:], "ignored:", list(r.core.ignored.values()),
                          "sessions:", [x.state.value for x in r.core.sessions.values()])
        nursery.cancel_scope.cancel()
    coord = roles[0].ctx.peer_id
    spread = [max(v.values()) - v[coord] for r, v in starts.items() if coord in v and len(v) > 1]
    durations = [h["duration"] for h in st["history"]]
    train = hist(roles, "fognode_fl_training_seconds")
    agg = hist(roles, "fognode_fl_aggregation_seconds")
    upd = hist(roles, "fognode_fl_transfer_seconds", {"stream": "update"})
    mod = hist(roles, "fognode_fl_transfer_seconds", {"stream": "model"})
    print()
    print(f"round time, {n} participants on {n} libp2p hosts in one process, "
          f"{out['parameters']} parameters, {st['state']}, {len(durations)} rounds")
    print(f"{'phase (mean per round)':<44} {'seconds':>10}")
    print(f"{'plan dissemination (gossip, to the last)':<44} {np.mean(spread) if spread else float('nan'):>10.3f}")
    print(f"{'local training (per participant)':<44} {train:>10.3f}")
    print(f"{'update transfer (per participant)':<44} {upd:>10.3f}")
    print(f"{'model fetch (per node that fetched)':<44} {mod:>10.3f}")
    print(f"{'aggregation':<44} {agg:>10.3f}")
    print(f"{'figure':<44} {'measured':>10} {'bound':>10}")
    print(f"{'round duration at the coordinator':<44} {np.mean(durations):>10.3f} {train + agg:>10.3f}"
          f"  (bound: one training + aggregation; the rest is transfer, gossip, CPU sharing of "
          f"{n} trainings on this machine's cores)")


if __name__ == "__main__":
    main()
