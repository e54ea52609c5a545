"""FL tasks installed on this node, found through the entry-point group `fognode.fl_tasks`.

Tasks are local code, never code from the network: a session names a task, and a node that
does not have it (or has not enabled it) does not opt in. Importing this package does not
import torch; loading a task class does not either (tasks import torch inside their methods).
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Mapping

from fognode.protocols.fl.task_names import ENTRY_POINT_GROUP, installed_tasks
from fognode.protocols.fl.tasks.base import (
    EvalResult,
    LocalData,
    ParamLayout,
    Task,
    TaskError,
    TensorSpec,
    TrainConfig,
    TrainResult,
)

__all__ = [
    "ENTRY_POINT_GROUP", "EvalResult", "LocalData", "ParamLayout", "Task", "TaskError",
    "TensorSpec", "TrainConfig", "TrainResult", "installed_tasks", "load_task", "task_class",
]


def task_class(name: str) -> type[Task]:
    """The task class registered under `name`; TaskError when none is installed."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Task)):
                raise TaskError(f"entry point {ENTRY_POINT_GROUP}:{name} ({ep.value}) is not a Task class")
            return cls
    raise TaskError(f"no FL task named {name!r} is installed (installed: {installed_tasks()})")


def load_task(name: str, params: Mapping[str, float] | None = None) -> Task:
    """An instance of task `name` configured with `params` (TaskError if unknown/invalid)."""
    return task_class(name)(**dict(params or {}))
