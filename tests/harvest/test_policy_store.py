"""The persisted operator policy: atomic writes, reload, refusal of a corrupt file."""
from __future__ import annotations

import json
import os
import resource
import signal
from pathlib import Path

import pytest

from fognode.protocols.harvest.errors import PolicyError, PolicyStoreError
from fognode.protocols.harvest.policy import HarvestPolicy
from fognode.protocols.harvest.policy_store import PolicyStore, StoredPolicy


def test_set_policy_persists_and_reloads(tmp_path: Path) -> None:
    base = HarvestPolicy(min_battery_pct=25)
    store = PolicyStore.in_datadir(tmp_path)
    assert store.load() == StoredPolicy() and store.load_policy(base) == (base, StoredPolicy())
    policy, stored = store.update(base, StoredPolicy(), {"min_battery_pct": 40, "window": "22:00-06:00"})
    assert store.path == tmp_path / "harvest" / "policy.json"
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    assert json.loads(store.path.read_text()) == {"version": 1, "paused": False,
                                                  "overrides": {"min_battery_pct": 40.0, "window": "22:00-06:00"}}
    again = PolicyStore.in_datadir(tmp_path)                # a restart
    assert again.load_policy(base) == (policy, stored)
    # node.toml changes a knob the operator did not touch: it still applies
    p2, _ = again.load_policy(HarvestPolicy(min_battery_pct=25, max_cpu_temp_c=60))
    assert (p2.min_battery_pct, p2.max_cpu_temp_c) == (40.0, 60.0)
    # null drops an override; no overrides left and not paused: no file
    policy, stored = again.update(base, stored, {"min_battery_pct": None, "window": None})
    assert policy == base and stored == StoredPolicy() and not store.path.exists()


def test_the_operator_pause_survives_a_restart(tmp_path: Path) -> None:
    store = PolicyStore.in_datadir(tmp_path)
    stored = store.set_paused(StoredPolicy(), True)
    assert PolicyStore.in_datadir(tmp_path).load() == StoredPolicy({}, True)
    _, stored = store.update(HarvestPolicy(), stored, {"max_cpus_pct": 100})
    assert store.load() == StoredPolicy({"max_cpus_pct": 100.0}, True)
    store.set_paused(stored, False)
    assert store.load() == StoredPolicy({"max_cpus_pct": 100.0}, False)


def test_a_refused_change_writes_nothing(tmp_path: Path) -> None:
    base = HarvestPolicy()
    store = PolicyStore.in_datadir(tmp_path)
    _, stored = store.update(base, StoredPolicy(), {"max_cpus_pct": 75})
    before = store.path.read_bytes()
    with pytest.raises(PolicyError) as e:
        store.update(base, stored, {"max_cpus_pct": 80, "max_cpu_temp_c": -1})
    assert e.value.field == "max_cpu_temp_c"
    assert store.path.read_bytes() == before and stored.overrides == {"max_cpus_pct": 75.0}


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path: Path) -> None:
    store = PolicyStore.in_datadir(tmp_path)
    store.save(StoredPolicy({"min_battery_pct": 30.0}))
    # the writer renames a fully written, fsynced temp file over the old one
    store.save(StoredPolicy({"min_battery_pct": 35.0}))
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["policy.json"]
    assert store.load() == StoredPolicy({"min_battery_pct": 35.0})


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    """The disk refuses (a file-size limit: EFBIG, as a full disk gives ENOSPC): the error names
    the file, the old policy file stays whole, and no temp file is left."""
    store = PolicyStore.in_datadir(tmp_path)
    store.save(StoredPolicy({"min_battery_pct": 30.0}))
    old = store.path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, hard))
    try:
        with pytest.raises(PolicyStoreError, match=r"policy\.json: cannot save the harvest policy: File too large"):
            store.save(StoredPolicy({"min_battery_pct": 50.0, "window": "22:00-06:00"}))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert store.path.read_bytes() == old
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["policy.json"]


@pytest.mark.parametrize("content,match", [
    (b"{\"version\": 1, \"overrides\": {\"min_battery", r"corrupt harvest policy \(not JSON"),
    (b"\xff\xfe", r"corrupt harvest policy \(not JSON"),
    (b"[1, 2]", r"want an object with exactly \"version\", \"overrides\" and \"paused\""),
    (b"{\"overrides\": {}, \"paused\": false}", r"want an object with exactly"),
    (b"{\"version\": 2, \"overrides\": {}, \"paused\": false}", r"version 2 is not 1"),
    (b"{\"version\": 1, \"overrides\": {}, \"paused\": 0}", r"paused must be true or false, got 0"),
    (b"{\"version\": 1, \"overrides\": {\"min_battery_pct\": \"x\"}, \"paused\": false}",
     r"corrupt harvest policy: overrides\.min_battery_pct: must be a finite number"),
    (b"{\"version\": 1, \"overrides\": {\"nope\": 1}, \"paused\": false}",
     r"overrides\.nope: is not a harvest policy knob"),
    (b"{\"version\": 1, \"overrides\": [], \"paused\": false}", r"overrides\.policy: must be an object"),
    (b" " * (64 * 1024 + 1), r"larger than 65536 bytes"),
])
def test_a_corrupt_file_is_refused_clearly(tmp_path: Path, content: bytes, match: str) -> None:
    store = PolicyStore.in_datadir(tmp_path)
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(content)
    with pytest.raises(PolicyStoreError, match=match) as e:
        store.load()
    assert str(store.path) in str(e.value)
    assert store.path.read_bytes() == content               # never reset behind the operator's back


def test_a_stored_override_that_no_longer_fits_names_the_knob(tmp_path: Path) -> None:
    store = PolicyStore.in_datadir(tmp_path)
    store.save(StoredPolicy({"owner_busy_margin_pct": 20.0}))    # fine while owner_busy_pct is 25
    with pytest.raises(PolicyStoreError, match=r"stored override of owner_busy_margin_pct no longer fits"):
        store.load_policy(HarvestPolicy(owner_busy_pct=15, owner_busy_margin_pct=5))
