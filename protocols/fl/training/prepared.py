"""A task made ready on this node for one session: what identifies it (`TaskKey`), its
parameter layout and round-0 model, and, when it was loaded in this process, the task object
and this node's local data (`LocalTask`).

The daemon loads and trains tasks in its task process (process.py), so its sessions hold
no `LocalTask`; the in-memory harness and the benchmarks load them here with `prepare_task`
and train with `train_round`, the same function the task process runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from fognode.protocols.fl.session.rounds import TrainOutcome
from fognode.protocols.fl.tasks import LocalData, ParamLayout, Task, TrainConfig, load_task
from fognode.protocols.fl.transfer.tensors import params_hash


@dataclass(frozen=True)
class TaskKey:
    """Everything that determines a prepared task: loading it twice from one key gives the
    same layout, round-0 model and data (so a restarted task process rebuilds it)."""

    name: str
    params: tuple[tuple[str, float], ...]
    init_seed: int
    data_seed: int
    data_index: int

    @classmethod
    def of(cls, name: str, params: Mapping[str, float], init_seed: int, *, data_seed: int,
           data_index: int) -> "TaskKey":
        return cls(name, tuple(sorted((str(k), float(v)) for k, v in params.items())), init_seed,
                   data_seed, data_index)


@dataclass(frozen=True)
class LocalTask:
    """A task loaded in this process, with this node's data."""

    task: Task
    data: LocalData


@dataclass(frozen=True)
class PreparedTask:
    key: TaskKey
    layout: ParamLayout
    initial_params: np.ndarray = field(repr=False, compare=False)
    initial_hash: bytes
    local: LocalTask | None = field(default=None, repr=False, compare=False)

    @property
    def layout_hash(self) -> bytes:
        return self.layout.digest()


def init_seed_of(nonce: bytes) -> int:
    """The torch seed of a session's round-0 model (from the announcement nonce)."""
    return int.from_bytes(nonce[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def load_local(key: TaskKey) -> tuple[LocalTask, ParamLayout, np.ndarray]:
    """Load and instantiate the task of `key` (TaskError if not installed or params invalid),
    its round-0 model and this node's data. CPU-bound, imports torch."""
    task = load_task(key.name, dict(key.params))
    layout = task.layout()
    p0 = task.initial_params(key.init_seed)
    return LocalTask(task, task.local_data(key.data_seed, key.data_index)), layout, p0


def prepare_task(name: str, params: Mapping[str, float], init_seed: int, *, data_seed: int,
                 data_index: int) -> PreparedTask:
    """`load_local` in this process (the harness and the benchmarks; the daemon uses its task
    process)."""
    key = TaskKey.of(name, params, init_seed, data_seed=data_seed, data_index=data_index)
    local, layout, p0 = load_local(key)
    return PreparedTask(key, layout, p0, params_hash(p0), local)


def train_round(local: LocalTask, base: np.ndarray, cfg: TrainConfig, seed: int) -> TrainOutcome:
    """One round's local work: the base model's loss on the local training data and accuracy
    on the local test data, then training from it (`Task.local_round`). CPU-bound, imports torch."""
    base_train, base_test, result = local.task.local_round(base, local.data, cfg, seed=seed)
    return TrainOutcome(result, base_train.loss, base_test.accuracy)
