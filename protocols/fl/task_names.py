"""The names of the FL tasks installed on this node: the entry-point group `fognode.fl_tasks`.
Light on purpose (no numpy, unlike the `tasks` package that loads them), so the role's config
can check its `tasks` list when node.toml is read."""
from __future__ import annotations

from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "fognode.fl_tasks"


def installed_tasks() -> list[str]:
    """Names of the tasks installed on this node (sorted)."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
