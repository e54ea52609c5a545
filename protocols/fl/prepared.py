"""A task made ready on this node for one session: the task object, its parameter layout,
the round-0 model and this node's local data. Built in a worker thread (it imports torch and
generates data), by `prepare_task`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from fognode.protocols.fl.tasks import LocalData, ParamLayout, Task, load_task
from fognode.protocols.fl.tensors import params_hash


@dataclass(frozen=True)
class PreparedTask:
    task: Task = field(compare=False)
    layout: ParamLayout
    initial_params: np.ndarray = field(repr=False, compare=False)
    initial_hash: bytes
    data: LocalData = field(repr=False, compare=False)

    @property
    def layout_hash(self) -> bytes:
        return self.layout.digest()


def init_seed_of(nonce: bytes) -> int:
    """The torch seed of a session's round-0 model (from the announcement nonce)."""
    return int.from_bytes(nonce[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def prepare_task(name: str, params: Mapping[str, float], init_seed: int, *, data_seed: int,
                 data_index: int) -> PreparedTask:
    """Load and instantiate task `name` (TaskError if not installed or params invalid), build
    its round-0 model from `init_seed` and this node's data from (data_seed, data_index).
    CPU-bound and imports torch: run it in a worker thread."""
    task = load_task(name, params)
    layout = task.layout()
    p0 = task.initial_params(init_seed)
    return PreparedTask(task, layout, p0, params_hash(p0), task.local_data(data_seed, data_index))
