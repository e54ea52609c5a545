"""FedProx vs FedAvg on Synthetic(1,1) with heterogeneous local work (Li et al., MLSys 2020,
Figure 1's setting, scaled down to run in about a minute).

    .venv/bin/python -m fognode.tools.bench.fl [--devices 30] [--per-round 10] [--rounds 30]
                                                [--epochs 20] [--stragglers 0.9] [--mu 1.0]

In-process simulation with the real `synthetic` task (multinomial logistic regression, torch
SGD, batch 10, lr 0.01) and the real strategies (`fedavg`, `fedprox`): each round the same
`per-round` devices are selected for every method (seeded); a `stragglers` share of them can
only do a random number of local epochs in [1, epochs) this round (system heterogeneity).
As in the paper:

- FedAvg drops the stragglers (devices that did not finish `epochs` epochs),
- FedProx mu=0 keeps their partial work,
- FedProx mu>0 keeps partial work and adds the proximal term.

The figure is the global model's training loss over all devices' training data after each
round; the paper's qualitative result is that FedProx (mu > 0) ends lower than FedAvg. The
bound printed is FedAvg's own final loss in the same run.

Round time on loopback daemons (selection / transfer / training / aggregation) is not measured
here: the daemon does not start the fl role yet (see the fl report).
"""
from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

from fognode.protocols.fl.strategies.base import ClientUpdate, make_strategy
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
    a = ap.parse_args(argv)
    torch.set_num_threads(1)   # tiny models: one intra-op thread is faster than two

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


if __name__ == "__main__":
    main()
