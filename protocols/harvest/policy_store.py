"""The operator's harvest policy overrides and pause, persisted in the data dir.

`harvest.set_policy` changes some knobs at run time; those changes (the overrides of node.toml's
policy, as BOINC's global_prefs_override.xml overrides the project's preferences) and the
operator's `harvest.pause` (as BOINC keeps its run mode "never" across restarts) are kept in
`<datadir>/harvest/policy.json`, mode 0600:

    {"version": 1, "overrides": {"min_battery_pct": 40.0, "window": "22:00-06:00"}, "paused": false}

Written atomically (node.datadir.write_atomic: tmp + fsync + rename + directory fsync), so a
crash leaves the old file or the new one; no overrides and no pause: no file. Read at start: a
missing file is no overrides, not paused; a file that is not exactly that shape (not JSON,
another version, an unknown knob, a wrong type) is refused with a PolicyStoreError naming the
path and what is wrong. It is never silently reset (BOINC deletes a prefs file it cannot parse
and falls back to defaults): the operator fixes it or deletes it. Only the overrides are
stored, so an edit of node.toml still applies to every knob the operator did not set at run time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fognode.node.datadir import write_atomic
from fognode.protocols.harvest.errors import PolicyError, PolicyStoreError
from fognode.protocols.harvest.policy import HarvestPolicy, apply_changes, check_changes

VERSION = 1
FILENAME = "policy.json"
MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class StoredPolicy:
    """What the operator set at run time: knob overrides of node.toml's policy, and the pause."""

    overrides: Mapping[str, Any] = field(default_factory=dict)
    paused: bool = False


class PolicyStore:
    """Reads and writes the one policy file. Blocking file IO: call it from a worker thread
    (or accept a few milliseconds on the event loop for this rare, small write)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def in_datadir(cls, datadir: Path) -> PolicyStore:
        """The store at `<datadir>/harvest/policy.json`."""
        return cls(datadir / "harvest" / FILENAME)

    def load(self) -> StoredPolicy:
        """What is persisted (no file: nothing overridden, not paused). Raises PolicyStoreError."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return StoredPolicy()
        except OSError as e:
            raise PolicyStoreError(f"cannot read the harvest policy: {e.strerror or e}", path=str(self.path)) from None
        if len(raw) > MAX_BYTES:
            raise PolicyStoreError(f"corrupt harvest policy: larger than {MAX_BYTES} bytes", path=str(self.path))
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PolicyStoreError(f"corrupt harvest policy (not JSON: {e}); fix it, or delete it to drop the "
                                   f"harvest.set_policy overrides", path=str(self.path)) from None
        if not isinstance(doc, dict) or set(doc) != {"version", "overrides", "paused"}:
            raise PolicyStoreError("corrupt harvest policy: want an object with exactly \"version\", "
                                   "\"overrides\" and \"paused\"", path=str(self.path))
        if doc["version"] != VERSION:
            raise PolicyStoreError(f"harvest policy version {doc['version']!r} is not {VERSION} (written by "
                                   f"another fognode version?)", path=str(self.path))
        if not isinstance(doc["paused"], bool):
            raise PolicyStoreError(f"corrupt harvest policy: paused must be true or false, got {doc['paused']!r}",
                                   path=str(self.path))
        try:
            overrides = check_changes(doc["overrides"])
        except PolicyError as e:
            raise PolicyStoreError(f"corrupt harvest policy: overrides.{e.field}: {e.reason}",
                                   path=str(self.path)) from None
        return StoredPolicy(overrides, doc["paused"])

    def save(self, stored: StoredPolicy) -> None:
        """Persist `stored` atomically (nothing overridden and not paused removes the file).
        Raises PolicyStoreError if the disk refuses; the file on disk is then the previous one."""
        clean = check_changes(stored.overrides)
        try:
            if not clean and not stored.paused:
                self.path.unlink(missing_ok=True)
                return
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            data = json.dumps({"version": VERSION, "overrides": clean, "paused": stored.paused},
                              indent=1, sort_keys=True).encode()
            write_atomic(self.path, data + b"\n", 0o600)
        except OSError as e:
            raise PolicyStoreError(f"cannot save the harvest policy: {e.strerror or e}", path=str(self.path)) from None

    def load_policy(self, base: HarvestPolicy) -> tuple[HarvestPolicy, StoredPolicy]:
        """At start: node.toml's `base` with the persisted overrides on top, and the pause. A
        stored override that node.toml's other knobs now make invalid is a PolicyStoreError
        naming the knob."""
        stored = self.load()
        try:
            policy = base.merge(stored.overrides)
        except PolicyError as e:
            raise PolicyStoreError(f"the stored override of {e.field} no longer fits node.toml's policy: "
                                   f"{e.reason}; change it with harvest.set_policy or delete the file",
                                   path=str(self.path)) from None
        kept = {k: v for k, v in stored.overrides.items() if getattr(base, k) != v}
        return policy, StoredPolicy(kept, stored.paused)

    def update(self, base: HarvestPolicy, stored: StoredPolicy,
               changes: Mapping[str, Any]) -> tuple[HarvestPolicy, StoredPolicy]:
        """`harvest.set_policy`: validate `changes` (null drops an override), persist the new
        overrides, and return (new policy, what is now stored). Raises PolicyError (a bad knob)
        or PolicyStoreError (not saved); either way nothing changed, on disk or for the caller."""
        policy, overrides = apply_changes(base, stored.overrides, changes)
        new = StoredPolicy(overrides, stored.paused)
        self.save(new)
        return policy, new

    def set_paused(self, stored: StoredPolicy, paused: bool) -> StoredPolicy:
        """`harvest.pause` / `harvest.resume`: persist the pause; PolicyStoreError if not saved."""
        new = StoredPolicy(stored.overrides, paused)
        self.save(new)
        return new
