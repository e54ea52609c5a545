"""The harvest policy core against recorded traces, every knob, and its invariants (hypothesis)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fognode.node.errors import LocalProtocolError
from fognode.protocols.harvest.policy import KNOBS, HarvestPolicy
from fognode.protocols.harvest.policy_core import (HARD_REASONS, SOFT_REASONS, Allowance, Decision, HarvestState,
                                                   PolicyCore, Resume, SetAllowance, Suspend, SuspendReason,
                                                   local_time)
from fognode.protocols.harvest.sensors import Readings, load_trace

TRACES = Path(__file__).parent / "traces"
R = SuspendReason
GIB = 1 << 30
# 2026-12-04 12:00 UTC, a Friday
NOON = 1796385600.0
BASE = Readings(time=NOON, cpu_count=4, memory_total_bytes=8 * GIB, memory_available_bytes=5 * GIB,
                owner_cpu_pct=5.0, network_metered=False)


def replay(core: PolicyCore, readings: tuple[Readings, ...] | list[Readings]) -> list[tuple[float, Decision]]:
    """Tick the core once per reading; `now` is the trace time since its first reading."""
    t0 = readings[0].time
    return [(r.time - t0, core.tick(r.time - t0, r)) for r in readings]


def edges(run: list[tuple[float, Decision]]) -> list[tuple[float, str]]:
    out = []
    for now, d in run:
        for a in d.actions:
            if isinstance(a, Suspend):
                out.append((now, "suspend:" + ",".join(r.value for r in a.reasons)))
            elif isinstance(a, Resume):
                out.append((now, "resume"))
    return out


def at(**kw: Any) -> Readings:
    return dataclasses.replace(BASE, **kw)


def running_core(policy: HarvestPolicy | None = None, now: float = 0.0) -> PolicyCore:
    core = PolicyCore(policy or HarvestPolicy())
    d = core.tick(now, BASE)
    assert d.state is HarvestState.RUNNING, d
    return core


# ------------------------------------------------------------------ traces


def test_battery_drain_and_charge_without_flapping() -> None:
    trace = load_trace(TRACES / "battery_cycle.jsonl")
    core = PolicyCore(HarvestPolicy(require_charging=False, min_suspend_s=0, min_run_s=0))
    run = replay(core, trace)
    ev = edges(run)
    # the jittery reading crosses 20 % several times on the way down and 25 % on the way up:
    # one suspend at the first reading below 20 %, one resume at the first at or above 25 %
    first_low = next(r.time - trace[0].time for r in trace if r.battery_percent < 20)
    plugged = next(i for i, r in enumerate(trace) if r.power_plugged)
    first_up = next(r.time - trace[0].time for r in trace[plugged:] if r.battery_percent >= 25)
    assert ev == [(0.0, "resume"), (first_low, "suspend:battery_low"), (first_up, "resume")]
    crossings = sum(1 for a, b in zip(trace, trace[1:]) if (a.battery_percent < 20) != (b.battery_percent < 20))
    assert crossings >= 3          # the trace does jitter across the threshold
    # between the two edges it stays suspended for battery_low alone, even above 20 %
    for now, d in run:
        if first_low <= now < first_up:
            assert d.state is HarvestState.SUSPENDED and d.reasons == (R.BATTERY_LOW,)


def test_battery_without_hysteresis_would_flap() -> None:
    """BOINC's rule (no margin, no dwell) flips on every jitter of the same trace."""
    trace = load_trace(TRACES / "battery_cycle.jsonl")
    core = PolicyCore(HarvestPolicy(require_charging=False, battery_margin_pct=0, min_suspend_s=0, min_run_s=0))
    assert len(edges(replay(core, trace))) > 5


def test_battery_trace_with_seed_defaults() -> None:
    """require_charging (seed): suspended on battery; once plugged in, still battery_low until 25 %."""
    trace = load_trace(TRACES / "battery_cycle.jsonl")
    run = replay(PolicyCore(HarvestPolicy()), trace)
    ev = edges(run)
    assert ev[0] == (0.0, "suspend:on_battery")
    plugged = next(i for i, r in enumerate(trace) if r.power_plugged)
    now, d = run[plugged]
    assert d.state is HarvestState.SUSPENDED and d.reasons == (R.BATTERY_LOW,)
    first_up = next(r.time - trace[0].time for r in trace[plugged:] if r.battery_percent >= 25)
    assert ev[1:] == [(first_up, "resume")]


def test_thermal_spike_suspends_and_backs_off_five_minutes() -> None:
    trace = load_trace(TRACES / "thermal_spike.jsonl")
    core = PolicyCore(HarvestPolicy())
    run = replay(core, trace)
    t0 = trace[0].time
    hot = [r.time - t0 for r in trace if r.cpu_temp_c > 45]
    ev = edges(run)
    assert ev[0] == (0.0, "resume")
    assert ev[1] == (hot[0], "suspend:too_hot")
    # resumes at the first tick 300 s after the LAST reading above 45 C, not the first
    assert ev[2] == (hot[-1] + 300, "resume") and len(ev) == 3
    for now, d in run:
        if hot[0] <= now < hot[-1] + 300:
            assert d.state is HarvestState.SUSPENDED
            assert d.resume_not_before == hot[-1] + 300 or now <= hot[-1]
            assert d.reasons in ((R.TOO_HOT,), (R.THERMAL_BACKOFF,))
    # 43.5 C right after the spike is below 45 but above 45 - 3: still too hot, not yet backoff
    idx = next(i for i, r in enumerate(trace) if r.cpu_temp_c == 43.5)
    assert run[idx][1].reasons == (R.TOO_HOT,)
    assert run[idx + 1][1].reasons == (R.THERMAL_BACKOFF,)


def test_thermal_backoff_with_a_fake_clock() -> None:
    core = running_core()
    assert core.tick(10, at(cpu_temp_c=60.0)).actions == (Suspend((R.TOO_HOT,)),)
    for now in (11, 100, 309.9):
        d = core.tick(now, at(cpu_temp_c=30.0))
        assert d.state is HarvestState.SUSPENDED and d.reasons == (R.THERMAL_BACKOFF,)
        assert d.resume_not_before == 310
    d = core.tick(310, at(cpu_temp_c=30.0))
    assert d.state is HarvestState.RUNNING and isinstance(d.actions[0], Resume)


def test_battery_temperature_is_a_thermal_limit_too() -> None:
    core = running_core()
    d = core.tick(5, at(battery_temp_c=41.0))
    assert d.reasons == (R.TOO_HOT,) and "battery 41 C (max 40)" in d.details[0]
    assert core.tick(100, at(battery_temp_c=38.0)).reasons == (R.TOO_HOT,)      # not 3 C below yet
    assert core.tick(101, at(battery_temp_c=36.9)).reasons == (R.THERMAL_BACKOFF,)
    assert core.tick(305, at(battery_temp_c=36.9)).state is HarvestState.RUNNING


def test_owner_load_trace_suspends_for_the_build_only() -> None:
    trace = load_trace(TRACES / "owner_load.jsonl")
    run = replay(PolicyCore(HarvestPolicy()), trace)
    t0 = trace[0].time
    busy = [r.time - t0 for r in trace if r.owner_cpu_pct > 50]       # user idle: idle_owner_busy_pct
    ev = edges(run)
    assert ev[0] == (0.0, "resume") and ev[1] == (busy[0], "suspend:owner_busy")
    # resumes at the first reading <= 40 % after the build, and not before min_suspend_s
    after = next(r.time - t0 for r in trace if r.time - t0 > busy[-1] and r.owner_cpu_pct <= 40)
    assert ev[2] == (max(after, busy[0] + 60), "resume") and len(ev) == 3


def test_a_suspension_with_no_reason_left_says_what_holds_it() -> None:
    """Its reasons and details were empty while min_suspend_s held it; only resume_not_before
    hinted why."""
    core = running_core(HarvestPolicy(min_run_s=0, min_suspend_s=60))
    assert core.tick(10, at(owner_cpu_pct=95.0, user_idle_s=10.0)).reasons == (R.OWNER_BUSY,)
    d = core.tick(20, BASE)
    assert d.state is HarvestState.SUSPENDED and d.reasons == ()
    assert d.details == ("no reason left; held by min_suspend_s (60 s after a sensor's suspension): "
                         "resumes in 50 s",)
    assert core.tick(70, BASE).state is HarvestState.RUNNING


def test_owner_load_near_the_in_use_threshold_is_held_by_the_dwell() -> None:
    """User active (threshold 25 %), load jittering 13..27 %: soft reason, so min_run_s holds it
    back after a resume and min_suspend_s after a suspend: edges at least 30 s apart."""
    trace = [dataclasses.replace(r, user_idle_s=10.0) for r in load_trace(TRACES / "owner_load.jsonl")]
    run = replay(PolicyCore(HarvestPolicy()), trace[:24])       # the first 2 minutes, before the build
    ev = edges(run)
    assert len(ev) >= 3
    assert all(b[0] - a[0] >= 30 for a, b in zip(ev, ev[1:]))
    held = [d for _, d in run if d.pending]
    assert held and all(d.state is HarvestState.RUNNING and d.pending == (R.OWNER_BUSY,) for d in held)
    assert "held by min_run_s" in held[0].details[0]


# ------------------------------------------------------------------ time windows


def local(weekday: int, hh: int, mm: int = 0, offset: int = 3600) -> Readings:
    """A reading at local `hh:mm` on `weekday` (0 = Monday) in a UTC+1 zone."""
    # NOON (UTC) is a Friday (weekday 4)
    t = NOON - 12 * 3600 + (weekday - 4) * 86400 + hh * 3600 + mm * 60 - offset
    r = at(time=t, utc_offset_s=offset)
    assert local_time(r)[0] == weekday and local_time(r)[1] == hh * 3600 + mm * 60
    return r


@pytest.mark.parametrize("policy,reading,allowed", [
    (dict(window="09:00-17:00"), (0, 8, 59), False),
    (dict(window="09:00-17:00"), (0, 9, 0), True),
    (dict(window="09:00-17:00"), (0, 16, 59), True),
    (dict(window="09:00-17:00"), (0, 17, 0), False),
    (dict(window="22:00-06:00"), (2, 23, 30), True),
    (dict(window="22:00-06:00"), (2, 5, 59), True),
    (dict(window="22:00-06:00"), (2, 12, 0), False),
    (dict(window="09:00-17:00", window_sat="never"), (5, 12, 0), False),
    (dict(window="09:00-17:00", window_sun="always"), (6, 3, 0), True),
    (dict(window="09:00-17:00", window_wed="18:00-24:00"), (2, 12, 0), False),
    (dict(window="09:00-17:00", window_wed="18:00-24:00"), (2, 23, 59), True),
    (dict(window="never", window_fri="always"), (4, 12, 0), True),
    (dict(window="never"), (3, 12, 0), False),
])
def test_time_windows(policy: dict[str, Any], reading: tuple[int, int, int], allowed: bool) -> None:
    core = PolicyCore(HarvestPolicy(**policy))
    d = core.tick(0, local(*reading))
    assert (d.state is HarvestState.RUNNING) is allowed
    if not allowed:
        assert d.reasons == (R.OUTSIDE_WINDOW,) and "window" in d.details[0]


def test_window_end_suspends_at_once_despite_min_run() -> None:
    core = PolicyCore(HarvestPolicy(window="09:00-17:00", min_run_s=600))
    assert core.tick(0, local(1, 16, 59)).state is HarvestState.RUNNING
    assert core.tick(60, local(1, 17, 0)).actions == (Suspend((R.OUTSIDE_WINDOW,)),)


# ------------------------------------------------------------------ memory


def test_memory_pressure_hysteresis() -> None:
    core = running_core()
    free = lambda pct: at(memory_available_bytes=int(8 * GIB * pct / 100))  # noqa: E731
    assert core.tick(1, free(9.0)).actions == (Suspend((R.MEMORY,)),)     # hard: inside min_run_s
    assert core.tick(100, free(12.0)).reasons == (R.MEMORY,)              # above 10 %, below 15 %
    d = core.tick(101, free(15.1))
    assert d.state is HarvestState.RUNNING


def test_memory_budget_in_use_and_idle() -> None:
    core = running_core()
    d_idle = core.tick(1, at(user_idle_s=3600.0))
    assert d_idle.allowance.memory_bytes == int(8 * GIB * 0.9) and not d_idle.user_active
    d_busy = core.tick(2, at(user_idle_s=5.0))
    assert d_busy.allowance.memory_bytes == int(8 * GIB * 0.5) and d_busy.user_active
    assert d_busy.actions == (SetAllowance(d_busy.allowance),)
    assert core.tick(3, at(user_idle_s=6.0)).actions == ()                # unchanged: no action


# ------------------------------------------------------------------ every knob


def suspends(policy: HarvestPolicy, reading: Readings, now: float = 1000.0) -> tuple[SuspendReason, ...]:
    core = running_core(policy)
    return core.tick(now, reading).reasons


KNOB_CASES: list[tuple[str, dict[str, Any], dict[str, Any], tuple[SuspendReason, ...]]] = [
    # (knob, policy, readings, reasons expected)
    ("require_charging", {}, dict(power_plugged=False, battery_percent=90.0), (R.ON_BATTERY,)),
    ("require_charging", dict(require_charging=False), dict(power_plugged=False, battery_percent=90.0), ()),
    ("min_battery_pct", dict(require_charging=False), dict(battery_percent=19.9, power_plugged=False),
     (R.BATTERY_LOW,)),
    ("min_battery_pct", dict(min_battery_pct=10), dict(battery_percent=15.0, power_plugged=True), ()),
    ("min_battery_pct", dict(min_battery_pct=0), dict(battery_percent=1.0, power_plugged=True), ()),
    ("max_cpu_temp_c", {}, dict(cpu_temp_c=45.1), (R.TOO_HOT,)),
    ("max_cpu_temp_c", dict(max_cpu_temp_c=80), dict(cpu_temp_c=70.0), ()),
    ("max_battery_temp_c", {}, dict(battery_temp_c=40.5), (R.TOO_HOT,)),
    ("max_battery_temp_c", dict(max_battery_temp_c=45), dict(battery_temp_c=42.0), ()),
    ("owner_busy_pct", {}, dict(owner_cpu_pct=26.0, user_idle_s=1.0), (R.OWNER_BUSY,)),
    ("owner_busy_pct", dict(owner_busy_pct=0), dict(owner_cpu_pct=99.0, user_idle_s=1.0), ()),
    ("idle_owner_busy_pct", {}, dict(owner_cpu_pct=26.0, user_idle_s=3600.0), ()),
    ("idle_owner_busy_pct", {}, dict(owner_cpu_pct=51.0, user_idle_s=3600.0), (R.OWNER_BUSY,)),
    ("run_if_user_active", dict(run_if_user_active=False), dict(user_idle_s=30.0), (R.USER_ACTIVE,)),
    ("run_if_user_active", dict(run_if_user_active=False), dict(user_idle_s=181.0), ()),
    ("idle_minutes", dict(run_if_user_active=False, idle_minutes=10), dict(user_idle_s=500.0), (R.USER_ACTIVE,)),
    ("suspend_if_no_input_minutes", dict(suspend_if_no_input_minutes=60), dict(user_idle_s=3601.0),
     (R.NO_RECENT_INPUT,)),
    ("suspend_if_no_input_minutes", {}, dict(user_idle_s=1e6), ()),
    ("min_free_memory_pct", dict(min_free_memory_pct=30), dict(memory_available_bytes=2 * GIB), (R.MEMORY,)),
    ("min_free_memory_pct", dict(min_free_memory_pct=0), dict(memory_available_bytes=0), ()),
    ("require_unmetered", dict(require_unmetered=True), dict(network_metered=True), (R.METERED_NETWORK,)),
    ("require_unmetered", dict(require_unmetered=True), dict(network_metered=None), (R.METERED_NETWORK,)),
    ("require_unmetered", dict(require_unmetered=True), dict(network_metered=False), ()),
    ("require_unmetered", {}, dict(network_metered=True), ()),
]


@pytest.mark.parametrize("knob,policy,reading,expected", KNOB_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(KNOB_CASES)])
def test_knob(knob: str, policy: dict[str, Any], reading: dict[str, Any], expected: tuple[SuspendReason, ...]) -> None:
    assert suspends(HarvestPolicy(**policy), at(**reading)) == expected


def test_margins() -> None:
    p = HarvestPolicy(require_charging=False, battery_margin_pct=10, owner_busy_margin_pct=5, memory_margin_pct=20,
                      temp_margin_c=10, min_suspend_s=0, thermal_backoff_s=0)
    core = running_core(p)
    core.tick(1, at(battery_percent=19.0, owner_cpu_pct=60.0, cpu_temp_c=50.0,
                    memory_available_bytes=int(0.05 * 8 * GIB)))
    d = core.tick(2, at(battery_percent=29.0, owner_cpu_pct=45.1, cpu_temp_c=35.1,
                        memory_available_bytes=int(0.29 * 8 * GIB)))
    assert set(d.reasons) == {R.BATTERY_LOW, R.OWNER_BUSY, R.TOO_HOT, R.MEMORY}
    d = core.tick(3, at(battery_percent=30.0, owner_cpu_pct=45.0, cpu_temp_c=35.0,
                        memory_available_bytes=int(0.30 * 8 * GIB) + 1))
    assert d.state is HarvestState.RUNNING


def test_thermal_backoff_knob() -> None:
    core = running_core(HarvestPolicy(thermal_backoff_s=20, min_suspend_s=0))
    core.tick(0, at(cpu_temp_c=50.0))
    assert core.tick(19, at(cpu_temp_c=30.0)).reasons == (R.THERMAL_BACKOFF,)
    assert core.tick(20, at(cpu_temp_c=30.0)).state is HarvestState.RUNNING


@pytest.mark.parametrize("idle_s,cores,fraction,mem_pct", [(5.0, 2, 0.25, 40), (3600.0, 3, 0.75, 80)])
def test_allowance_knobs(idle_s: float, cores: int, fraction: float, mem_pct: int) -> None:
    p = HarvestPolicy(max_cpus_pct=50, idle_max_cpus_pct=75, cpu_time_pct=25, idle_cpu_time_pct=75,
                      max_memory_pct=40, idle_max_memory_pct=80, owner_busy_pct=0, idle_owner_busy_pct=0)
    d = running_core(p).tick(1, at(user_idle_s=idle_s))
    assert d.allowance == Allowance(cores=cores, cpu_fraction=fraction, memory_bytes=8 * GIB * mem_pct // 100)


def test_allowance_rounds_cores_like_boinc_and_unknowns() -> None:
    d = running_core(HarvestPolicy(max_cpus_pct=10, idle_max_cpus_pct=10)).tick(1, at(cpu_count=4))
    assert d.allowance.cores == 1                      # floor(0.4) -> at least one, as BOINC
    d = running_core().tick(1, at(cpu_count=None, memory_total_bytes=None, memory_available_bytes=None))
    assert d.allowance == Allowance(cores=1, cpu_fraction=1.0, memory_bytes=None)


def test_min_run_and_min_suspend_knobs() -> None:
    core = running_core(HarvestPolicy(min_run_s=100, min_suspend_s=50))
    busy, calm = at(owner_cpu_pct=90.0), at(owner_cpu_pct=1.0)
    d = core.tick(99, busy)
    assert d.state is HarvestState.RUNNING and d.pending == (R.OWNER_BUSY,)
    assert core.tick(100, busy).actions == (Suspend((R.OWNER_BUSY,)),)
    d = core.tick(149, calm)
    assert d.state is HarvestState.SUSPENDED and d.reasons == () and d.resume_not_before == 150
    assert isinstance(core.tick(150, calm).actions[0], Resume)


def test_every_knob_is_exercised() -> None:
    covered = {c[0] for c in KNOB_CASES} | {
        "battery_margin_pct", "owner_busy_margin_pct", "memory_margin_pct", "temp_margin_c",     # test_margins
        "thermal_backoff_s", "min_run_s", "min_suspend_s",
        "max_cpus_pct", "idle_max_cpus_pct", "cpu_time_pct", "idle_cpu_time_pct",                # test_allowance_knobs
        "max_memory_pct", "idle_max_memory_pct",
        "window", "window_mon", "window_tue", "window_wed", "window_thu", "window_fri", "window_sat",
        "window_sun"}                                                                           # test_time_windows
    assert covered == set(KNOBS)


@pytest.mark.parametrize("day", range(7))
def test_each_weekday_window(day: int) -> None:
    name = f"window_{('mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun')[day]}"
    p = HarvestPolicy(**{name: "never"})
    for d in range(7):
        got = PolicyCore(p).tick(0, local(d, 12)).state
        assert (got is HarvestState.SUSPENDED) is (d == day)


# ------------------------------------------------------------------ unknown readings and operator


def test_unknown_readings_choices() -> None:
    nothing = Readings(time=NOON)
    d = PolicyCore(HarvestPolicy()).tick(0, nothing)
    assert d.state is HarvestState.RUNNING        # no battery, no plug state: mains; no sensors: not enforced
    assert d.allowance == Allowance(cores=1, cpu_fraction=1.0, memory_bytes=None)
    d = PolicyCore(HarvestPolicy()).tick(0, at(battery_percent=80.0, power_plugged=None))
    assert d.reasons == (R.ON_BATTERY,) and "not whether it is plugged" in d.details[0]


def test_a_sensor_dropout_does_not_resume() -> None:
    core = running_core(HarvestPolicy(min_suspend_s=0, thermal_backoff_s=0))
    core.tick(1, at(cpu_temp_c=80.0, owner_cpu_pct=99.0))
    d = core.tick(2, at(cpu_temp_c=None, owner_cpu_pct=None))
    assert set(d.reasons) == {R.TOO_HOT, R.OWNER_BUSY}
    assert core.tick(3, at(cpu_temp_c=20.0, owner_cpu_pct=1.0)).state is HarvestState.RUNNING


def test_operator_pause_and_resume() -> None:
    core = running_core(HarvestPolicy(min_run_s=600, min_suspend_s=600))
    core.pause()
    assert core.tick(1, BASE).actions == (Suspend((R.OPERATOR_PAUSE,)),)     # at once despite min_run_s
    core.resume()
    d = core.tick(2, BASE)                                                   # operator-only: no dwell
    assert d.state is HarvestState.RUNNING and d.actions[0] == Resume()
    core.pause()
    core.tick(3, BASE)
    core.tick(4, at(cpu_temp_c=99.0))                                        # a sensor reason meanwhile
    core.resume()
    d = core.tick(400, BASE)
    assert d.state is HarvestState.SUSPENDED and d.resume_not_before == 603


def test_decision_as_json() -> None:
    core = running_core()
    d = core.tick(5, at(cpu_temp_c=50.0, user_idle_s=1.0))
    assert d.to_json() == {"state": "suspended", "reasons": ["too_hot"], "pending": [], "details": [d.details[0]],
                           "allowance": {"cores": 2, "cpu_fraction": 1.0, "memory_bytes": 4 * GIB},
                           "user_active": True, "resume_not_before": 305.0}


def test_start_suspended_emits_the_reason_once() -> None:
    core = PolicyCore(HarvestPolicy())
    d = core.tick(0, at(power_plugged=False, battery_percent=50.0))
    assert d.actions == (Suspend((R.ON_BATTERY,)),)
    assert core.tick(1, at(power_plugged=False, battery_percent=50.0)).actions == ()


def test_time_going_backwards_is_refused() -> None:
    core = running_core(now=10)
    with pytest.raises(LocalProtocolError, match="backwards"):
        core.tick(9, BASE)


def test_set_policy_applies_on_the_next_tick() -> None:
    core = running_core()
    core.set_policy(HarvestPolicy(max_cpu_temp_c=30))
    assert core.tick(1, at(cpu_temp_c=35.0)).reasons == (R.TOO_HOT,)


# ------------------------------------------------------------------ invariants (hypothesis)


def hard_limit_exceeded(p: HarvestPolicy, r: Readings, paused: bool) -> list[str]:
    """An independent statement of the hard limits, beyond their thresholds (no hysteresis)."""
    out = []
    if paused:
        out.append("paused")
    if p.require_charging and (r.power_plugged is False or (r.power_plugged is None and r.battery_percent is not None)):
        out.append("on battery")
    if p.min_battery_pct > 0 and r.battery_percent is not None and r.battery_percent < p.min_battery_pct:
        out.append("battery low")
    if r.cpu_temp_c is not None and r.cpu_temp_c > p.max_cpu_temp_c:
        out.append("cpu hot")
    if r.battery_temp_c is not None and r.battery_temp_c > p.max_battery_temp_c:
        out.append("battery hot")
    if (p.min_free_memory_pct > 0 and r.memory_available_bytes is not None and r.memory_total_bytes
            and 100 * r.memory_available_bytes / r.memory_total_bytes < p.min_free_memory_pct):
        out.append("memory")
    wd, sec = local_time(r)
    if not p.window_for(wd).allows(sec):
        out.append("window")
    if not p.run_if_user_active and r.user_idle_s is not None and r.user_idle_s < p.idle_minutes * 60:
        out.append("user active")
    return out


# benign readings with one or two sensors off at a time, and steps around the dwell and backoff
# times, so that edges are frequent and land near the bounds the invariants are about
CALM = Readings(time=NOON, battery_percent=80.0, power_plugged=True, cpu_temp_c=40.0, battery_temp_c=30.0,
                cpu_count=2, owner_cpu_pct=5.0, memory_available_bytes=5 * GIB, memory_total_bytes=8 * GIB,
                user_idle_s=3600.0, network_metered=False)
PERTURB = st.sampled_from([
    ("battery_percent", 15.0), ("battery_percent", 19.9), ("battery_percent", 22.0), ("battery_percent", None),
    ("power_plugged", False), ("power_plugged", None), ("cpu_temp_c", 50.0), ("cpu_temp_c", 43.5),
    ("cpu_temp_c", None), ("battery_temp_c", 41.0), ("owner_cpu_pct", 30.0), ("owner_cpu_pct", 45.0),
    ("owner_cpu_pct", 60.0), ("owner_cpu_pct", 90.0), ("owner_cpu_pct", None), ("memory_available_bytes", GIB // 2),
    ("memory_available_bytes", GIB), ("user_idle_s", 10.0), ("user_idle_s", None), ("user_idle_s", 7200.0),
    ("network_metered", True), ("network_metered", None), ("utc_offset_s", 9 * 3600), ("cpu_count", None),
])
readings_st = st.lists(PERTURB, max_size=2).map(lambda ch: dataclasses.replace(CALM, **dict(ch)))
policy_st = st.builds(
    HarvestPolicy,
    require_charging=st.booleans(),
    min_battery_pct=st.sampled_from([0.0, 20.0, 50.0]),
    max_cpu_temp_c=st.sampled_from([45.0, 70.0]),
    thermal_backoff_s=st.sampled_from([300.0, 60.0, 0.0]),
    run_if_user_active=st.booleans(),
    require_unmetered=st.booleans(),
    suspend_if_no_input_minutes=st.sampled_from([0.0, 0.0, 90.0]),
    window=st.sampled_from(["", "", "09:00-17:00", "11:00-14:00"]),
    min_run_s=st.sampled_from([30.0, 120.0, 0.0]),
    min_suspend_s=st.sampled_from([60.0, 300.0, 0.0]),
)
step_st = st.tuples(st.sampled_from([0.5, 1.0, 5.0, 10.0, 29.0, 30.0, 31.0, 59.0, 60.0, 61.0, 120.0, 299.0, 300.0,
                                     301.0, 1800.0]),
                    readings_st, st.sampled_from(["", "", "", "", "", "pause", "resume"]))


@settings(max_examples=300, deadline=None)
@given(policy=policy_st, steps=st.lists(step_st, min_size=1, max_size=60))
def test_invariants(policy: HarvestPolicy, steps: list[tuple[float, Readings, str]]) -> None:
    core = PolicyCore(policy)
    now = 0.0
    last_resume: float | None = None
    last_suspend: tuple[float, bool] | None = None     # (when, had a sensor reason since)
    last_hot: float | None = None
    state = HarvestState.SUSPENDED
    inputs: list[tuple[float, Readings, str]] = []
    decisions: list[Decision] = []
    for dt, r0, op in steps:
        now += dt
        r = dataclasses.replace(r0, time=NOON + now)
        if op == "pause":
            core.pause()
        elif op == "resume":
            core.resume()
        d = core.tick(now, r)
        inputs.append((now, r, op))
        decisions.append(d)
        if (r.cpu_temp_c is not None and r.cpu_temp_c > policy.max_cpu_temp_c) or \
                (r.battery_temp_c is not None and r.battery_temp_c > policy.max_battery_temp_c):
            last_hot = now
        # 1. never running while a hard limit is exceeded
        if d.state is HarvestState.RUNNING:
            assert not hard_limit_exceeded(policy, r, core.paused), (d, r)
            assert not set(d.pending) & HARD_REASONS
        else:
            assert not d.pending
        kinds = [type(a) for a in d.actions]
        if d.state is not state:
            if d.state is HarvestState.RUNNING:
                assert kinds == [Resume, SetAllowance]
                # 2. min_suspend_s after a sensor-driven suspend; 3. thermal backoff
                if last_suspend is not None and last_suspend[1]:
                    assert now - last_suspend[0] >= policy.min_suspend_s
                if last_hot is not None:
                    assert now >= last_hot + policy.thermal_backoff_s
                last_resume = now
            else:
                assert kinds == [Suspend]
                reasons = set(d.actions[0].reasons)
                assert reasons and reasons == set(d.reasons)
                if reasons <= SOFT_REASONS and last_resume is not None:
                    assert now - last_resume >= policy.min_run_s
                last_suspend = (now, bool(reasons - {R.OPERATOR_PAUSE}))
            state = d.state
        elif d.state is HarvestState.SUSPENDED:
            assert Resume not in kinds and SetAllowance not in kinds
            if last_suspend is not None and set(d.reasons) - {R.OPERATOR_PAUSE}:
                last_suspend = (last_suspend[0], True)
        else:
            assert kinds in ([], [SetAllowance])
    # 5. deterministic: a fresh core fed the same inputs decides the same, tick for tick
    again = PolicyCore(policy)
    for (now, r, op), d in zip(inputs, decisions):
        if op == "pause":
            again.pause()
        elif op == "resume":
            again.resume()
        assert again.tick(now, r) == d
