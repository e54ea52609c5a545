"""Ended sessions on disk: what `fl.status`, `fl.sessions` and `fl.export` know of a session
after the node that held it restarted (issue 15 item 14).

One JSON file per ended session, `<datadir>/fl/sessions/<session id>.json`, written atomically
(node/datadir.py `write_atomic`) when the session ends: its final `fl.status`, plus what an
export needs to rebuild the task's model layout (task parameters and initial seed). The newest
`keep` are kept; older files are removed when a new one is written. A file that cannot be read
or parsed is skipped at load with a WARNING naming it (a damaged file loses that one entry, not
the others). A failed write is logged as an ERROR naming the path: the session itself ended
and its model is saved; only its record after a restart is lost.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from fognode.node.datadir import write_atomic

log = logging.getLogger("fognode.fl")

_NAME = re.compile(r"[0-9a-f]{64}\.json")


class SessionArchive:
    def __init__(self, root: Path, keep: int = 200) -> None:
        self.root = root
        self.keep = keep
        self.entries: dict[str, dict[str, Any]] = {}

    def load(self) -> None:
        """Read every archived session (blocking file IO: a few small files, at start)."""
        self.entries.clear()
        if not self.root.is_dir():
            return
        for p in sorted(self.root.iterdir()):
            if not _NAME.fullmatch(p.name):
                continue
            try:
                entry = json.loads(p.read_text())
                if not isinstance(entry, dict) or entry.get("session_id") != p.name[:-5]:
                    raise ValueError("not a session record of this name")
            except (OSError, ValueError) as e:
                log.warning("fl: skipping the archived session %s: %s", p, e)
                continue
            self.entries[p.name[:-5]] = entry

    def save(self, status: dict[str, Any]) -> None:
        """Archive an ended session's status (its `session_id` names the file)."""
        sid = str(status["session_id"])
        path = self.root / f"{sid}.json"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(status, sort_keys=True).encode(), mode=0o600)
        except OSError as e:
            log.error("fl: could not archive session %s at %s: %s", sid[:16], path, e.strerror or e)
            return
        self.entries[sid] = status
        self._prune()

    def _prune(self) -> None:
        if len(self.entries) <= self.keep:
            return
        by_age = sorted(self.entries, key=lambda k: float(self.entries[k].get("ended") or 0.0))
        for sid in by_age[:len(self.entries) - self.keep]:
            del self.entries[sid]
            try:
                os.unlink(self.root / f"{sid}.json")
            except OSError as e:
                log.warning("fl: could not remove the archived session %s: %s", sid[:16], e)
