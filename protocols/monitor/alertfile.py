"""The alert engine's state in the data dir: `<datadir>/monitor/alerts.json`.

The role writes it (node/datadir.write_atomic: a temporary file, fsync, rename, fsync of the
directory, so a crash leaves the old state or the new one, never half) whenever the firing or
pending alerts change, every minute while any is firing or pending (so its `saved_at` says
when the node last watched them), and at stop; it reads it back at start (alerts.py `restore`).

A file that cannot be read or is not a valid state is discarded with a WARNING naming its path
and what is wrong, and the node starts without it rather than refusing to start: the alert
state is derived from the node's own metrics (a firing alert fires again once its condition
has held for its `for`), so losing it costs a repeated AlertFired and a hook run, while
refusing to start would take the node, and its monitoring, down over a file it can rebuild.
It is overwritten at the next change.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fognode.node.datadir import write_atomic
from fognode.protocols.monitor.alerts import AlertEngine

log = logging.getLogger("fognode.monitor")

FILE = "alerts.json"


def load_alert_state(path: Path, engine: AlertEngine, now: float) -> bool:
    """Restore `engine` from `path` if it holds a valid state; True if it did."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as e:
        log.warning("alert state %s cannot be read (%s); starting without it", path, e.strerror or e)
        return False
    try:
        dropped = engine.restore(json.loads(raw), now)
    except (ValueError, UnicodeDecodeError) as e:     # json.JSONDecodeError is a ValueError
        log.warning("alert state %s is not valid (%s); discarding it: firing alerts fire again once their "
                    "condition holds for their `for`", path, e)
        return False
    for d in dropped:
        log.info("alert state %s: dropped %s", path, d)
    log.info("alert state restored from %s: %d firing, %d pending", path, len(engine.firing()), len(engine.pending()))
    return True


def save_alert_state(path: Path, state: dict[str, Any]) -> None:
    """Write `state` atomically; a failure (disk full) is a WARNING, not fatal: the state is
    kept in memory and written again at the next change."""
    try:
        write_atomic(path, json.dumps(state, allow_nan=True).encode())
    except OSError as e:
        log.warning("could not save the alert state to %s: %s", path, e.strerror or e)
