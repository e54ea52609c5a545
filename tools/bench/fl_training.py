"""Where a daemon trains: in a worker thread of its own process, or in its task process
(protocols/fl/training/process.py). What it costs the event loop, and the training itself.

    .venv/bin/python -m fognode.tools.bench.fl_training [--rounds 10] [--hidden 2048]
        [--epochs 5] [--max-samples 1000] [--load 0]

One trio loop stands for the daemon: a probe sleeps 10 ms again and again and records how
late each wake-up is (the event-loop lag a daemon's peers feel in every stream negotiation
and gossip hop). Meanwhile the loop has `--rounds` local trainings of the `synthetic_mlp`
task (evaluate on train and test data, then `--epochs` epochs at batch 10 on up to
`--max-samples` samples: the work of one FL round, about a second here) done

- `thread`: with `trio.to_thread.run_sync(train_round, ...)`, as the daemon did before,
- `process`: with `TaskProcess.train`, as the daemon does now (one child, torch in it only),

each after a first training that is not measured (torch's first-use costs). The bound is the
same probe with nothing else running, measured in the same run. "CPU ms" is the CPU time per
training of this process (thread row) or of this process and the task process together
(process row); "faults" the task process's minor page faults per training (/proc, Linux). `--load N` runs N busy-loop
processes beside all three, as on a machine shared with other work (the GIL hand-off between
the loop and a training thread is what suffers when the process does not get a core).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import trio

PROBE = 0.010      # seconds each probe sleeps
DEVICE = 6         # data index of a large device (900 training samples with data seed 3)


@dataclass(frozen=True)
class Result:
    name: str
    train_s: list[float]
    lags: list[float]
    cpu_s: float = float("nan")       # CPU seconds per training (see the module docstring)
    faults: float = float("nan")      # the task process's minor page faults per training

    def lag(self, q: float) -> float:
        xs = sorted(self.lags)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _child_usage(pid: int | None) -> tuple[float, int]:
    """CPU seconds (user + system) and minor page faults of process `pid` so far (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan"), 0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[7])


async def _probe(lags: list[float], stop: trio.Event) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await trio.sleep(PROBE)
        lags.append(max(0.0, time.perf_counter() - t - PROBE))


def run(rounds: int, hidden: float, epochs: int, max_samples: float) -> list[Result]:
    import torch

    from fognode.protocols.fl.training.prepared import TaskKey, prepare_task, train_round
    from fognode.protocols.fl.training.process import TaskProcess
    from fognode.protocols.fl.tasks import TrainConfig

    torch.set_num_threads(1)              # as protocols.fl.torch_threads = 1
    params = {"hidden": hidden, "max_samples": max_samples}
    key = TaskKey.of("synthetic_mlp", params, 0, data_seed=3, data_index=DEVICE)
    cfg = TrainConfig(epochs=epochs, lr=0.05, batch_size=10)
    local = prepare_task("synthetic_mlp", params, 0, data_seed=3, data_index=DEVICE)
    assert local.local is not None
    lt = local.local
    out: list[Result] = []

    async def idle() -> None:
        lags: list[float] = []
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_probe, lags, stop)
            await trio.sleep(2.0)
            stop.set()
        out.append(Result("nothing else running (bound)", [], lags))

    async def in_thread() -> None:
        await trio.to_thread.run_sync(train_round, lt, local.initial_params, cfg, 0)
        lags: list[float] = []
        times: list[float] = []
        stop = trio.Event()
        cpu = time.process_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_probe, lags, stop)
            for k in range(rounds):
                t = time.perf_counter()
                await trio.to_thread.run_sync(train_round, lt, local.initial_params, cfg, k)
                times.append(time.perf_counter() - t)
            stop.set()
        out.append(Result("thread: trio.to_thread(train_round)", times, lags,
                          (time.process_time() - cpu) / rounds))

    async def in_process() -> None:
        tp = TaskProcess()
        try:
            p = await tp.prepare(key)
            await tp.train(key, p.initial_params, cfg, 0)
            lags: list[float] = []
            times: list[float] = []
            stop = trio.Event()
            cpu, (child_cpu, child_faults) = time.process_time(), _child_usage(tp.pid)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_probe, lags, stop)
                for k in range(rounds):
                    t = time.perf_counter()
                    await tp.train(key, p.initial_params, cfg, k)
                    times.append(time.perf_counter() - t)
                stop.set()
            child_cpu2, child_faults2 = _child_usage(tp.pid)
        finally:
            await tp.aclose()
        out.append(Result("process: TaskProcess.train", times, lags,
                          (time.process_time() - cpu + child_cpu2 - child_cpu) / rounds,
                          (child_faults2 - child_faults) / rounds))

    trio.run(idle)
    trio.run(in_thread)
    trio.run(in_process)
    return out


def _busy() -> None:
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--hidden", type=float, default=2048.0)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--max-samples", type=float, default=1000.0)
    ap.add_argument("--load", type=int, default=0, help="busy-loop processes running beside")
    args = ap.parse_args()
    import multiprocessing

    burners = [multiprocessing.get_context("spawn").Process(target=_busy, daemon=True)
               for _ in range(args.load)]
    for b in burners:
        b.start()
    try:
        results = run(args.rounds, args.hidden, args.epochs, args.max_samples)
    finally:
        for b in burners:
            b.kill()
            b.join(5)
    print(f"event-loop lag while training synthetic_mlp (hidden {args.hidden:.0f}, {args.epochs} epochs, "
          f"up to {args.max_samples:.0f} samples), {args.rounds} trainings, probe every "
          f"{PROBE * 1000:.0f} ms, {args.load} busy processes beside")
    print(f"{'where the training runs':<40}{'train s (median)':>17}{'lag p50 ms':>12}{'p99 ms':>9}"
          f"{'max ms':>9}{'probes':>8}{'CPU ms':>8}{'faults':>8}")
    for r in results:
        med = f"{statistics.median(r.train_s):.4f}" if r.train_s else "-"
        cpu = f"{r.cpu_s * 1000:.2f}" if r.cpu_s == r.cpu_s else "-"
        faults = f"{r.faults:.0f}" if r.faults == r.faults else "-"
        print(f"{r.name:<40}{med:>17}{r.lag(0.5) * 1000:>12.2f}{r.lag(0.99) * 1000:>9.2f}"
              f"{max(r.lags) * 1000:>9.1f}{len(r.lags):>8}{cpu:>8}{faults:>8}")


if __name__ == "__main__":
    main()
