"""Counting a trio task's scheduler steps in a test: on a busy event loop every step waits for
every other ready task, so a hot path's steps are pinned by count (load does not change it)."""
from __future__ import annotations

import trio


class TaskSteps(trio.abc.Instrument):
    """Counts the steps of the tasks named `name` while it is entered (`with TaskSteps(...)`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name == self.name:
            self.count += 1

    def __enter__(self) -> "TaskSteps":
        trio.lowlevel.add_instrument(self)
        return self

    def __exit__(self, *exc: object) -> None:
        trio.lowlevel.remove_instrument(self)
