"""The harvest policy: seed defaults, validation naming the knob, partial updates keeping the old."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fognode.node.errors import ConfigError
from fognode.protocols.harvest.errors import PolicyError
from fognode.protocols.harvest.policy import KNOBS, HarvestPolicy, TimeWindow, apply_changes, parse_window


def test_seed_defaults() -> None:
    p = HarvestPolicy()
    assert (p.min_battery_pct, p.max_cpu_temp_c, p.require_charging, p.max_cpus_pct) == (20.0, 45.0, True, 50.0)
    assert p.thermal_backoff_s == 300.0
    assert set(p.to_json()) == set(KNOBS)


@pytest.mark.parametrize("field,value,match", [
    ("min_battery_pct", "20", "must be a finite number, got str '20'"),
    ("min_battery_pct", True, "must be a finite number, got bool True"),
    ("min_battery_pct", None, "must be a finite number, got NoneType"),
    ("min_battery_pct", float("nan"), "must be a finite number"),
    ("min_battery_pct", float("inf"), "must be a finite number"),
    ("min_battery_pct", -1, "must be at least 0 and at most 100, got -1"),
    ("min_battery_pct", 100.5, "at most 100"),
    ("max_cpus_pct", 0, "must be above 0"),
    ("cpu_time_pct", 101, "at most 100"),
    ("idle_max_memory_pct", -5, "must be above 0"),
    ("max_cpu_temp_c", -3, "at least 0"),
    ("max_battery_temp_c", 120, "at most 100"),
    ("thermal_backoff_s", -300, "at least 0"),
    ("min_run_s", 7200, "at most 3600"),
    ("min_suspend_s", -1, "at least 0"),
    ("idle_minutes", -1, "at least 0"),
    ("owner_busy_pct", 250, "at most 100"),
    ("battery_margin_pct", 60, "at most 50"),
    ("require_charging", "yes", "must be true or false, got str 'yes'"),
    ("require_charging", 1, "must be true or false, got int 1"),
    ("run_if_user_active", None, "must be true or false"),
    ("window", 9, "must be a string"),
    ("window", "9-17", "HH:MM-HH:MM"),
    ("window", "09:00-09:00", "write \"always\" or \"never\""),
    ("window", "00:00-24:00", "write \"always\""),
    ("window_sat", "25:00-26:00", "HH:MM-HH:MM"),
    ("window_mon", "x" * 65, "at most 64 characters"),
])
def test_bad_values_name_the_knob_and_keep_the_old_policy(field: str, value: Any, match: str) -> None:
    old = HarvestPolicy(min_battery_pct=30)
    with pytest.raises(PolicyError, match=match) as e:
        old.merge({field: value})
    assert e.value.field == field and e.value.key == f"protocols.harvest.{field}"
    assert isinstance(e.value, ConfigError)
    assert old == HarvestPolicy(min_battery_pct=30)
    if value is not None:              # for set_policy, null means "back to node.toml's value"
        with pytest.raises(PolicyError):
            apply_changes(old, {}, {field: value})


@pytest.mark.parametrize("changes,field", [
    ({"min_battery_pct": 98}, "battery_margin_pct"),                     # 98 + 5 > 100: never resumes
    ({"min_free_memory_pct": 99}, "memory_margin_pct"),
    ({"owner_busy_pct": 5}, "owner_busy_margin_pct"),                     # margin 10 >= 5: never resumes
    ({"temp_margin_c": 45}, "temp_margin_c"),
    ({"run_if_user_active": False, "idle_minutes": 10, "suspend_if_no_input_minutes": 5},
     "suspend_if_no_input_minutes"),                                      # BOINC's "don't allow computing"
])
def test_pairs_that_could_never_work_are_refused(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError) as e:
        HarvestPolicy().merge(changes)
    assert e.value.field == field


def test_unknown_knob_and_non_mapping() -> None:
    with pytest.raises(PolicyError, match="is not a harvest policy knob; known: require_charging") as e:
        HarvestPolicy().merge({"min_batery_pct": 5})
    assert e.value.field == "min_batery_pct"
    with pytest.raises(PolicyError, match="must be an object"):
        HarvestPolicy().merge([("min_battery_pct", 5)])


def test_merge_and_diff() -> None:
    old = HarvestPolicy()
    new = old.merge({"min_battery_pct": 30, "window": "22:00-06:00"})
    assert new.min_battery_pct == 30.0 and type(new.min_battery_pct) is float
    assert old.diff(new) == {"min_battery_pct": (20.0, 30.0), "window": ("", "22:00-06:00")}
    assert old == HarvestPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        old.min_battery_pct = 1


def test_apply_changes_tracks_overrides_and_null_restores_the_config_value() -> None:
    base = HarvestPolicy(min_battery_pct=25)        # as node.toml says
    policy, overrides = apply_changes(base, {}, {"min_battery_pct": 40, "max_cpus_pct": 100})
    assert (policy.min_battery_pct, policy.max_cpus_pct) == (40.0, 100.0)
    assert overrides == {"min_battery_pct": 40.0, "max_cpus_pct": 100.0}
    policy, overrides = apply_changes(base, overrides, {"min_battery_pct": None})
    assert policy.min_battery_pct == 25.0 and overrides == {"max_cpus_pct": 100.0}
    # an override equal to the config value is not kept
    policy, overrides = apply_changes(base, overrides, {"max_cpus_pct": 50})
    assert overrides == {}
    # a refused change leaves the caller's overrides untouched
    keep = {"max_cpus_pct": 75.0}
    with pytest.raises(PolicyError, match="max_cpus_pct"):
        apply_changes(base, keep, {"max_cpus_pct": 0, "min_battery_pct": 10})
    assert keep == {"max_cpus_pct": 75.0}


def test_windows() -> None:
    assert parse_window("", field="window") is None
    assert parse_window(" Always ", field="window") == TimeWindow("always")
    w = parse_window("22:30-06:00", field="window")
    assert w == TimeWindow("between", 22 * 3600 + 1800, 6 * 3600)
    assert w.allows(23 * 3600) and w.allows(0) and not w.allows(6 * 3600) and not w.allows(12 * 3600)
    w = parse_window("18:00-24:00", field="window")
    assert w.allows(23 * 3600 + 3599) and not w.allows(17 * 3600)
    p = HarvestPolicy(window="09:00-17:00", window_sun="never")
    assert p.window_for(6) == TimeWindow("never")
    assert p.window_for(0) == TimeWindow("between", 9 * 3600, 17 * 3600)
    assert HarvestPolicy().window_for(3) == TimeWindow("always")
