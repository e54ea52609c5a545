"""The operator's harvest policy: every knob, its default, its validation, and partial updates.

`HarvestPolicy` is frozen; every knob has the seed's default (minimum battery 20 %, maximum
CPU temperature 45 C, require charging, at most 50 % of the CPU) or BOINC's where the seed
says nothing. How each maps onto BOINC's computing preferences (lib/prefs.h, client/cs_prefs.cpp):

| knob                                  | BOINC                                    |
|---------------------------------------|------------------------------------------|
| require_charging                      | run_on_batteries = false (Android: only while charging) |
| min_battery_pct (+ battery_margin_pct) | battery_charge_min_pct (Android 90; no hysteresis there, a 5-min hold) |
| max_cpu_temp_c, max_battery_temp_c    | battery_max_temperature (Android 40 C; no CPU sensor in BOINC) |
| temp_margin_c, thermal_backoff_s      | ANDROID_BATTERY_BACKOFF = 300 s after a thermal suspend |
| max_cpus_pct / idle_max_cpus_pct      | max_ncpus_pct / niu_max_ncpus_pct        |
| cpu_time_pct / idle_cpu_time_pct      | cpu_usage_limit / niu_cpu_usage_limit    |
| owner_busy_pct / idle_owner_busy_pct  | suspend_cpu_usage / niu_suspend_cpu_usage (non-BOINC CPU %) |
| run_if_user_active, idle_minutes      | run_if_user_active, idle_time_to_run ("in use" = input in the last N minutes) |
| suspend_if_no_input_minutes           | suspend_if_no_recent_input               |
| max_memory_pct / idle_max_memory_pct  | ram_max_used_busy_frac / ram_max_used_idle_frac |
| min_free_memory_pct                   | (none: BOINC only caps its own tasks)    |
| require_unmetered                     | network_wifi_only (Android)              |
| window, window_mon .. window_sun      | start_hour/end_hour and the per-weekday day_prefs |
| min_run_s, min_suspend_s              | (none; BOINC holds a CPU-use suspension 2 x 10 s) |
| operator pause (harvest.pause, not a knob) | run mode "never" (suspend: user request) |

Windows: "" (no restriction; for a weekday: use `window`), "always", "never", or "HH:MM-HH:MM"
in local time (start inclusive, end exclusive; an end before the start wraps past midnight;
"24:00" is the end of the day). A weekday's window replaces `window` on that day, as BOINC's
day_prefs do.

Validation refuses wrong types, negatives, NaN and out-of-range values with a `PolicyError`
naming the knob (a `ConfigError` keyed `protocols.harvest.<knob>`), and pairs that could never
let the device work (a margin that puts the resume point past 100 %, BOINC's "idle time to run
>= no-input suspend" warning). `apply_changes` makes the partial update of `harvest.set_policy`:
the policy in force is never modified; a refused change leaves it as it was.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from fognode.protocols.harvest.errors import PolicyError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")   # datetime.weekday() order
DAY = 86400


@dataclass(frozen=True)
class TimeWindow:
    """When work may run on a day: `always`, `never`, or [start_s, end_s) seconds after local
    midnight (end_s < start_s wraps past midnight)."""

    kind: str                 # "always" | "never" | "between"
    start_s: int = 0
    end_s: int = 0

    def allows(self, second_of_day: float) -> bool:
        if self.kind == "always":
            return True
        if self.kind == "never":
            return False
        if self.start_s < self.end_s:
            return self.start_s <= second_of_day < self.end_s
        return second_of_day >= self.start_s or second_of_day < self.end_s


ALWAYS = TimeWindow("always")


def _clock_time(text: str) -> int | None:
    hh, sep, mm = text.strip().partition(":")
    if not sep or not hh.isdigit() or not mm.isdigit() or len(mm) != 2 or len(hh) > 2:
        return None
    h, m = int(hh), int(mm)
    if h > 24 or m > 59 or (h == 24 and m != 0):
        return None
    return h * 3600 + m * 60


def parse_window(text: str, *, field: str) -> TimeWindow | None:
    """A window string -> TimeWindow (None for "": not set). PolicyError naming `field`."""
    s = text.strip().lower()
    if s == "":
        return None
    if s in ("always", "never"):
        return TimeWindow(s)
    start_t, sep, end_t = s.partition("-")
    start, end = _clock_time(start_t), _clock_time(end_t)
    if not sep or start is None or end is None or start == DAY:
        raise PolicyError(field, f"must be \"\", \"always\", \"never\" or \"HH:MM-HH:MM\" (local time), got {text!r}")
    if start == end or (start == 0 and end == DAY):
        raise PolicyError(field, f"{text!r} is empty or the whole day: write \"always\" or \"never\"")
    return TimeWindow("between", start, end % DAY if end != DAY else DAY)


@dataclass(frozen=True)
class HarvestPolicy:
    """Every knob of the harvest policy (the keys of [protocols.harvest] besides the role's own)."""

    require_charging: bool = True          # work only on external power (BOINC run_on_batteries=false)
    min_battery_pct: float = 20.0          # suspend below this battery charge (0 = off)
    battery_margin_pct: float = 5.0        # resume only at min_battery_pct + this
    max_cpu_temp_c: float = 45.0           # suspend above this CPU temperature (then back off)
    max_battery_temp_c: float = 40.0       # suspend above this battery temperature (then back off)
    temp_margin_c: float = 3.0             # resume only at or below a maximum minus this
    thermal_backoff_s: float = 300.0       # after a thermal suspend, no resume for this long
    max_cpus_pct: float = 50.0             # % of the CPUs work may use while the user is active
    idle_max_cpus_pct: float = 50.0        # % of the CPUs work may use while the user is idle
    cpu_time_pct: float = 100.0            # duty cycle of work while the user is active (%)
    idle_cpu_time_pct: float = 100.0       # duty cycle of work while the user is idle (%)
    owner_busy_pct: float = 25.0           # suspend while other programs use more CPU (%; 0 = off)
    idle_owner_busy_pct: float = 50.0      # the same while the user is idle (%; 0 = off)
    owner_busy_margin_pct: float = 10.0    # resume only when the owner's CPU is this far below
    run_if_user_active: bool = True        # false: suspend while the user is active
    idle_minutes: float = 3.0              # "user active" = input within this many minutes
    suspend_if_no_input_minutes: float = 0.0   # suspend after this long without input (0 = off)
    max_memory_pct: float = 50.0           # memory budget of work, % of RAM, user active
    idle_max_memory_pct: float = 90.0      # memory budget of work, % of RAM, user idle
    min_free_memory_pct: float = 10.0      # suspend while available memory is below this % (0 = off)
    memory_margin_pct: float = 5.0         # resume only at min_free_memory_pct + this
    require_unmetered: bool = False        # work only on an unmetered network (BOINC wifi only)
    window: str = ""                       # daily window "HH:MM-HH:MM" local ("" = always)
    window_mon: str = ""                   # Monday's window; "" = use `window`
    window_tue: str = ""                   # Tuesday's window; "" = use `window`
    window_wed: str = ""                   # Wednesday's window; "" = use `window`
    window_thu: str = ""                   # Thursday's window; "" = use `window`
    window_fri: str = ""                   # Friday's window; "" = use `window`
    window_sat: str = ""                   # Saturday's window; "" = use `window`
    window_sun: str = ""                   # Sunday's window; "" = use `window`
    min_run_s: float = 30.0                # a soft reason never suspends sooner after a resume
    min_suspend_s: float = 60.0            # never resume sooner after a sensor-driven suspend

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------ validation
    def validate(self) -> None:
        """Refuse a value no device could run with; PolicyError naming the first bad knob."""
        hints = {f.name: f.type for f in fields(HarvestPolicy)}
        for name, tp in hints.items():
            _check_type(name, getattr(self, name), tp)

        def rng(name: str, lo: float, hi: float, *, lo_open: bool = False) -> None:
            v = getattr(self, name)
            if (v <= lo if lo_open else v < lo) or v > hi:
                raise PolicyError(name, f"must be {'above' if lo_open else 'at least'} {lo:g} "
                                        f"and at most {hi:g}, got {v:g}")

        for name in ("min_battery_pct", "owner_busy_pct", "idle_owner_busy_pct",
                     "min_free_memory_pct"):
            rng(name, 0, 100)
        for name in ("max_cpus_pct", "idle_max_cpus_pct", "cpu_time_pct", "idle_cpu_time_pct",
                     "max_memory_pct", "idle_max_memory_pct"):
            rng(name, 0, 100, lo_open=True)
        for name in ("battery_margin_pct", "owner_busy_margin_pct", "memory_margin_pct"):
            rng(name, 0, 50)
        rng("max_cpu_temp_c", 0, 150)
        rng("max_battery_temp_c", 0, 100)
        rng("temp_margin_c", 0, 30)
        rng("thermal_backoff_s", 0, DAY)
        rng("idle_minutes", 0, 1440)
        rng("suspend_if_no_input_minutes", 0, 7 * 1440)
        rng("min_run_s", 0, 3600)
        rng("min_suspend_s", 0, 3600)
        if self.min_battery_pct > 0 and self.min_battery_pct + self.battery_margin_pct > 100:
            raise PolicyError("battery_margin_pct", f"min_battery_pct + battery_margin_pct is "
                              f"{self.min_battery_pct + self.battery_margin_pct:g} %: the battery could never resume work")
        if self.min_free_memory_pct > 0 and self.min_free_memory_pct + self.memory_margin_pct > 100:
            raise PolicyError("memory_margin_pct", "min_free_memory_pct + memory_margin_pct is over 100 %: "
                                                   "work could never resume")
        for name in ("owner_busy_pct", "idle_owner_busy_pct"):
            v = getattr(self, name)
            if v > 0 and self.owner_busy_margin_pct >= v:
                raise PolicyError("owner_busy_margin_pct", f"must be below {name} ({v:g}), or work would never "
                                                           f"resume after an owner-busy suspend")
        for name in ("max_cpu_temp_c", "max_battery_temp_c"):
            if self.temp_margin_c >= getattr(self, name):
                raise PolicyError("temp_margin_c", f"must be below {name} ({getattr(self, name):g})")
        if (not self.run_if_user_active and self.suspend_if_no_input_minutes > 0
                and self.idle_minutes >= self.suspend_if_no_input_minutes):
            raise PolicyError("suspend_if_no_input_minutes",
                              f"with run_if_user_active = false, idle_minutes ({self.idle_minutes:g}) must be "
                              f"below it, or the device is never allowed to work (BOINC warns the same)")
        for name in ("window", *(f"window_{d}" for d in WEEKDAYS)):
            parse_window(getattr(self, name), field=name)

    # ------------------------------------------------------------ derived
    def window_for(self, weekday: int) -> TimeWindow:
        """The window in force on `weekday` (0 = Monday): the day's own, else `window`."""
        day = parse_window(getattr(self, f"window_{WEEKDAYS[weekday]}"), field=f"window_{WEEKDAYS[weekday]}")
        if day is not None:
            return day
        return parse_window(self.window, field="window") or ALWAYS

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def diff(self, other: HarvestPolicy) -> dict[str, tuple[Any, Any]]:
        """{knob: (value here, value in other)} for every knob that differs."""
        return {f.name: (getattr(self, f.name), getattr(other, f.name))
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)}

    def merge(self, changes: Mapping[str, Any]) -> HarvestPolicy:
        """A new policy with `changes` applied (JSON-typed values); PolicyError naming the
        first bad knob, and this policy is unchanged either way (it is frozen)."""
        return HarvestPolicy(**{**asdict(self), **check_changes(changes)})


KNOBS: tuple[str, ...] = tuple(f.name for f in fields(HarvestPolicy))
_TYPES = {f.name: f.type for f in fields(HarvestPolicy)}


def _type_name(tp: Any) -> str:
    return {"bool": "true or false", "float": "a finite number", "str": "a string"}.get(str(tp), str(tp))


def _check_type(name: str, value: Any, tp: Any) -> None:
    tp = str(tp)
    ok = ((tp == "bool" and isinstance(value, bool))
          or (tp == "float" and isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value))
          or (tp == "str" and isinstance(value, str) and len(value) <= 64))
    if not ok:
        shown = repr(value) if len(repr(value)) < 40 else repr(value)[:37] + "..."
        raise PolicyError(name, f"must be {_type_name(tp)}{' of at most 64 characters' if tp == 'str' else ''}, "
                                f"got {type(value).__name__} {shown}")


def check_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Type-check a partial update {knob: value} (from RPC JSON or the store): unknown knobs
    and wrong types are a PolicyError naming the knob; ints become floats where a number is
    wanted. Ranges are checked when the merged policy is built."""
    if not isinstance(changes, Mapping):
        raise PolicyError("policy", f"must be an object of knob: value, got {type(changes).__name__}")
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if not isinstance(name, str) or name not in _TYPES:
            raise PolicyError(str(name), f"is not a harvest policy knob; known: {', '.join(KNOBS)}")
        _check_type(name, value, _TYPES[name])
        out[name] = float(value) if str(_TYPES[name]) == "float" else value
    return out


def apply_changes(base: HarvestPolicy, overrides: Mapping[str, Any],
                  changes: Mapping[str, Any]) -> tuple[HarvestPolicy, dict[str, Any]]:
    """`harvest.set_policy`: the operator's overrides of `base` (node.toml's policy) updated by
    `changes`, where a null value drops that override (back to node.toml's value).

    Returns (the policy now in force, the overrides to persist). Raises PolicyError naming the
    knob, and then nothing changed: the caller keeps its policy and overrides.
    """
    if not isinstance(changes, Mapping):
        raise PolicyError("policy", f"must be an object of knob: value, got {type(changes).__name__}")
    merged = dict(overrides)
    for name, value in changes.items():
        if not isinstance(name, str) or name not in _TYPES:
            raise PolicyError(str(name), f"is not a harvest policy knob; known: {', '.join(KNOBS)}")
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    merged = check_changes(merged)
    policy = base.merge(merged)
    return policy, {k: v for k, v in merged.items() if getattr(base, k) != v}
