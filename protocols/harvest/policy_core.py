"""The harvest policy core (sans-IO): may this device work now, and with how much?

`PolicyCore.tick(now, readings) -> Decision`: `now` is the adapter's monotonic clock (seconds;
dwell and backoff run on it), `readings.time` + `readings.utc_offset_s` give the local time of
day for the windows. The core imports neither trio nor psutil. The operator's
`pause()` / `resume()` and `set_policy()` change its inputs; the next `tick` decides. A
`Decision` carries the state (running / suspended), every reason the device is suspended for
(not only the first, as BOINC reports), the soft reasons a minimum run is holding back, a
human-readable detail per reason, the allowance (cores, CPU-time duty, memory budget), the
earliest time a resume may happen, and the actions, which are only edges: `Suspend(reasons)`
when work must stop (and on the first tick if the device starts suspended), `Resume` when it
may run, `SetAllowance` on resume and whenever the allowance changes while running.

Reasons, each with its threshold's hysteresis (trip past the threshold, clear only a margin
back inside it; the latch of each is kept between ticks):
- hard (suspend at once, whatever the dwell): operator_pause; on_battery (require_charging);
  battery_low (< min_battery_pct, clear at >= min + battery_margin_pct); too_hot (CPU >
  max_cpu_temp_c or battery > max_battery_temp_c, clear when every known sensor is <= its
  maximum - temp_margin_c); thermal_backoff (no resume until thermal_backoff_s after the last
  reading above a maximum: BOINC's 5-minute backoff); memory (available < min_free_memory_pct
  of RAM, clear at >= min + memory_margin_pct); outside_window (local time outside the day's
  window); user_active (run_if_user_active = false and input within idle_minutes).
- soft (held back until min_run_s after a resume): owner_busy (other programs' CPU above
  owner_busy_pct, or idle_owner_busy_pct while the user is idle; clear at <= threshold -
  owner_busy_margin_pct); metered_network (require_unmetered); no_recent_input (no input for
  suspend_if_no_input_minutes).

Unknown readings (None), one documented choice per knob:
- require_charging: no battery and no power supply reported (desktops, servers, VMs) is mains,
  as BOINC's host_is_running_on_batteries() says; a battery reported with the plug state
  unknown is on battery (mains cannot be confirmed on a device that has a battery).
- min_battery_pct, max_cpu_temp_c, max_battery_temp_c, min_free_memory_pct, owner_busy_pct:
  an unknown reading neither trips nor clears the latch: a knob whose sensor never answered is
  not enforced (no battery, no thermal sensor: the host manages its own), and a sensor that
  drops out after tripping keeps the device suspended (a dropout is not a recovery).
- user idle unknown: not in use (nobody is known to be at the device; BOINC's
  USER_IDLE_TIME_INF), so user_active and no_recent_input do not trip and the idle_* limits apply.
- require_unmetered: unknown is not unmetered (the operator asked for proof), so it suspends.
- cpu_count unknown: 1 core; memory total unknown: no memory budget (None).

Invariants (tests/harvest/test_policy_core.py checks them, partly by hypothesis):
1. Never running while a hard reason holds: a Decision with state RUNNING has no hard reason
   among the reasons the same readings trip.
2. No resume sooner than min_suspend_s after a suspension that had a sensor reason (one caused
   only by the operator's pause resumes at once on `resume()`); no suspension for soft reasons
   only sooner than min_run_s after a resume. So sensor noise cannot make it flap faster than
   once per min_suspend_s.
3. No resume while a latch is tripped or before thermal_backoff_s has passed since the last
   reading above a temperature maximum.
4. Actions are exactly the edges: one Suspend per RUNNING -> SUSPENDED (plus the initial one),
   one Resume per SUSPENDED -> RUNNING, always followed by a SetAllowance; the core starts
   SUSPENDED and its first tick decides.
5. tick is deterministic in (its state, now, readings); `now` going backwards is refused.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from fognode.node.errors import LocalProtocolError
from fognode.protocols.harvest.policy import HarvestPolicy
from fognode.protocols.harvest.sensors import Readings


class HarvestState(enum.Enum):
    RUNNING = "running"
    SUSPENDED = "suspended"


class SuspendReason(enum.Enum):
    """Why the device does not work (the values are the labels in RPC, records and metrics)."""

    OPERATOR_PAUSE = "operator_pause"
    ON_BATTERY = "on_battery"
    BATTERY_LOW = "battery_low"
    TOO_HOT = "too_hot"
    THERMAL_BACKOFF = "thermal_backoff"
    MEMORY = "memory"
    OUTSIDE_WINDOW = "outside_window"
    USER_ACTIVE = "user_active"
    OWNER_BUSY = "owner_busy"
    METERED_NETWORK = "metered_network"
    NO_RECENT_INPUT = "no_recent_input"


SOFT_REASONS = frozenset({SuspendReason.OWNER_BUSY, SuspendReason.METERED_NETWORK,
                          SuspendReason.NO_RECENT_INPUT})
HARD_REASONS = frozenset(SuspendReason) - SOFT_REASONS
_ORDER = {r: i for i, r in enumerate(SuspendReason)}
_LATCHED = (SuspendReason.BATTERY_LOW, SuspendReason.TOO_HOT, SuspendReason.MEMORY,
            SuspendReason.OWNER_BUSY)


@dataclass(frozen=True)
class Allowance:
    """What work may use while running: whole cores, a CPU-time duty fraction (BOINC's CPU
    time limit, for the executor's throttle), and a memory budget in bytes (None: unknown RAM)."""

    cores: int
    cpu_fraction: float
    memory_bytes: int | None

    def to_json(self) -> dict[str, Any]:
        return {"cores": self.cores, "cpu_fraction": self.cpu_fraction, "memory_bytes": self.memory_bytes}


@dataclass(frozen=True)
class Suspend:
    """Stop all harvest work now (SIGSTOP); `reasons` say why."""

    reasons: tuple[SuspendReason, ...]


@dataclass(frozen=True)
class Resume:
    """Work may run again (SIGCONT); a SetAllowance follows in the same Decision."""


@dataclass(frozen=True)
class SetAllowance:
    allowance: Allowance


PolicyAction = Suspend | Resume | SetAllowance


@dataclass(frozen=True)
class Decision:
    state: HarvestState
    reasons: tuple[SuspendReason, ...]          # why suspended (empty while running)
    pending: tuple[SuspendReason, ...]          # soft reasons a minimum run is holding back
    details: tuple[str, ...]                    # one human-readable line per reason and pending
    allowance: Allowance                        # in force while running; what would apply otherwise
    user_active: bool                           # the in-use / idle limits in force
    resume_not_before: float | None             # earliest `now` a resume may happen (dwell, backoff)
    actions: tuple[PolicyAction, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The decision as `harvest.status` can show it (actions left out: they are edges)."""
        return {"state": self.state.value, "reasons": [r.value for r in self.reasons],
                "pending": [r.value for r in self.pending], "details": list(self.details),
                "allowance": self.allowance.to_json(), "user_active": self.user_active,
                "resume_not_before": self.resume_not_before}


def local_time(readings: Readings) -> tuple[int, float]:
    """(weekday 0 = Monday, seconds since local midnight) of a reading."""
    dt = datetime.fromtimestamp(readings.time + readings.utc_offset_s, tz=timezone.utc)
    return dt.weekday(), dt.hour * 3600 + dt.minute * 60 + dt.second + dt.microsecond / 1e6


def on_battery(r: Readings) -> bool:
    """The documented choice: no battery and no plug state = mains; battery but no plug state
    = on battery."""
    if r.power_plugged is not None:
        return not r.power_plugged
    return r.battery_percent is not None


def user_active(policy: HarvestPolicy, r: Readings) -> bool:
    return r.user_idle_s is not None and r.user_idle_s < policy.idle_minutes * 60


def allowance(policy: HarvestPolicy, r: Readings) -> Allowance:
    active = user_active(policy, r)
    cpus_pct = policy.max_cpus_pct if active else policy.idle_max_cpus_pct
    time_pct = policy.cpu_time_pct if active else policy.idle_cpu_time_pct
    mem_pct = policy.max_memory_pct if active else policy.idle_max_memory_pct
    cores = max(1, math.floor((r.cpu_count or 1) * cpus_pct / 100 + 1e-9))
    mem = None if r.memory_total_bytes is None else int(r.memory_total_bytes * mem_pct / 100)
    return Allowance(cores=cores, cpu_fraction=round(time_pct / 100, 6), memory_bytes=mem)


@dataclass
class _Latches:
    tripped: set[SuspendReason] = field(default_factory=set)
    thermal_until: float | None = None


class PolicyCore:
    """The policy state machine. Not thread-safe: one adapter task drives it."""

    def __init__(self, policy: HarvestPolicy) -> None:
        self.policy = policy
        self.state = HarvestState.SUSPENDED
        self.paused = False
        self.entered_at: float | None = None      # `now` of the last state change
        self.sensor_suspend = False               # this suspension has had a sensor reason
        self.last_now: float | None = None
        self.last_allowance: Allowance | None = None
        self.last: Decision | None = None
        self._latches = _Latches()

    # -------------------------------------------------------------- operator inputs
    def pause(self) -> None:
        """The operator's pause (harvest.pause): the next tick suspends, whatever the dwell."""
        self.paused = True

    def resume(self) -> None:
        """Lift the operator's pause; the other reasons and the dwell still apply."""
        self.paused = False

    def set_policy(self, policy: HarvestPolicy) -> None:
        """Take a new (validated) policy; the next tick applies it. Latches stay tripped until
        the readings clear them under the new thresholds."""
        self.policy = policy

    # -------------------------------------------------------------- reasons
    def _update_latches(self, now: float, r: Readings) -> None:
        p, t = self.policy, self._latches.tripped

        def latch(reason: SuspendReason, value: float | None, trip: bool, clear: bool) -> None:
            if value is None:
                return                       # unknown: neither trips nor clears
            if trip:
                t.add(reason)
            elif clear:
                t.discard(reason)

        bat = r.battery_percent
        if p.min_battery_pct <= 0:
            t.discard(SuspendReason.BATTERY_LOW)
        else:
            latch(SuspendReason.BATTERY_LOW, bat, bat is not None and bat < p.min_battery_pct,
                  bat is not None and bat >= p.min_battery_pct + p.battery_margin_pct)

        temps = [(v, mx) for v, mx in ((r.cpu_temp_c, p.max_cpu_temp_c),
                                       (r.battery_temp_c, p.max_battery_temp_c)) if v is not None]
        if temps:
            hot = any(v > mx for v, mx in temps)
            if hot:
                self._latches.thermal_until = now + p.thermal_backoff_s
            latch(SuspendReason.TOO_HOT, 0.0, hot, all(v <= mx - p.temp_margin_c for v, mx in temps))

        avail, total = r.memory_available_bytes, r.memory_total_bytes
        if p.min_free_memory_pct <= 0:
            t.discard(SuspendReason.MEMORY)
        elif avail is not None and total:
            pct = 100.0 * avail / total
            latch(SuspendReason.MEMORY, pct, pct < p.min_free_memory_pct,
                  pct >= p.min_free_memory_pct + p.memory_margin_pct)

        busy = p.owner_busy_pct if user_active(p, r) else p.idle_owner_busy_pct
        load = r.owner_cpu_pct
        if busy <= 0:
            t.discard(SuspendReason.OWNER_BUSY)
        else:
            latch(SuspendReason.OWNER_BUSY, load, load is not None and load > busy,
                  load is not None and load <= busy - p.owner_busy_margin_pct)

    def _reasons(self, now: float, r: Readings) -> dict[SuspendReason, str]:
        p = self.policy
        out: dict[SuspendReason, str] = {}
        if self.paused:
            out[SuspendReason.OPERATOR_PAUSE] = "paused by the operator (harvest.resume lifts it)"
        if p.require_charging and on_battery(r):
            out[SuspendReason.ON_BATTERY] = ("on battery, and require_charging is set" if r.power_plugged is not None
                                             else "a battery is reported but not whether it is plugged in")
        t = self._latches.tripped
        if SuspendReason.BATTERY_LOW in t:
            out[SuspendReason.BATTERY_LOW] = (f"battery {_fmt(r.battery_percent)} % below {p.min_battery_pct:g} %; "
                                              f"resumes at {p.min_battery_pct + p.battery_margin_pct:g} %")
        if SuspendReason.TOO_HOT in t:
            shown = [f"{what} {v:g} C (max {mx:g})" for what, v, mx in
                     (("CPU", r.cpu_temp_c, p.max_cpu_temp_c), ("battery", r.battery_temp_c, p.max_battery_temp_c))
                     if v is not None]
            out[SuspendReason.TOO_HOT] = (f"{', '.join(shown) or 'temperature unknown since the trip'}; "
                                          f"resumes {p.temp_margin_c:g} C below the maximum, "
                                          f"{p.thermal_backoff_s:g} s after the last reading above it")
        elif self._latches.thermal_until is not None and now < self._latches.thermal_until:
            out[SuspendReason.THERMAL_BACKOFF] = (f"cooling down after a thermal suspend: "
                                                  f"{self._latches.thermal_until - now:.0f} s left")
        if SuspendReason.MEMORY in t:
            out[SuspendReason.MEMORY] = (f"available memory {_pct(r.memory_available_bytes, r.memory_total_bytes)} % "
                                         f"below {p.min_free_memory_pct:g} %; resumes at "
                                         f"{p.min_free_memory_pct + p.memory_margin_pct:g} %")
        weekday, second = local_time(r)
        if not p.window_for(weekday).allows(second):
            out[SuspendReason.OUTSIDE_WINDOW] = f"local time is outside today's window ({_window_text(p, weekday)})"
        active = user_active(p, r)
        if not p.run_if_user_active and active:
            out[SuspendReason.USER_ACTIVE] = (f"user input {r.user_idle_s:.0f} s ago (within "
                                              f"{p.idle_minutes:g} min) and run_if_user_active is false")
        if SuspendReason.OWNER_BUSY in t:
            busy = p.owner_busy_pct if active else p.idle_owner_busy_pct
            out[SuspendReason.OWNER_BUSY] = (f"other programs use {_fmt(r.owner_cpu_pct)} % CPU, over {busy:g} %; "
                                             f"resumes at {busy - p.owner_busy_margin_pct:g} %")
        if p.require_unmetered and r.network_metered is not False:
            out[SuspendReason.METERED_NETWORK] = ("the network is metered" if r.network_metered
                                                  else "the network is not known to be unmetered")
        if (p.suspend_if_no_input_minutes > 0 and r.user_idle_s is not None
                and r.user_idle_s > p.suspend_if_no_input_minutes * 60):
            out[SuspendReason.NO_RECENT_INPUT] = (f"no user input for {r.user_idle_s / 60:.1f} min "
                                                  f"(over {p.suspend_if_no_input_minutes:g})")
        return out

    # -------------------------------------------------------------- the tick
    def tick(self, now: float, readings: Readings) -> Decision:
        """Decide for `now` (monotonic seconds) and `readings`. Raises LocalProtocolError if
        `now` goes backwards (the adapter's clock is monotonic)."""
        if self.last_now is not None and now < self.last_now:
            raise LocalProtocolError(f"policy tick time went backwards: {now} < {self.last_now}")
        self.last_now = now
        p = self.policy
        self._update_latches(now, readings)
        found = self._reasons(now, readings)
        reasons = tuple(sorted(found, key=_ORDER.__getitem__))
        hard = [x for x in reasons if x in HARD_REASONS]
        allow = allowance(p, readings)
        actions: list[PolicyAction] = []
        pending: tuple[SuspendReason, ...] = ()
        resume_not_before: float | None = None
        first = self.entered_at is None

        if self.state is HarvestState.RUNNING:
            assert self.entered_at is not None
            run_dwell_over = now - self.entered_at >= p.min_run_s
            if hard or (reasons and run_dwell_over):
                self._enter(HarvestState.SUSPENDED, now, reasons)
                actions.append(Suspend(reasons))
            else:
                pending = reasons
                if allow != self.last_allowance:
                    actions.append(SetAllowance(allow))
                    self.last_allowance = allow
        else:
            if any(x is not SuspendReason.OPERATOR_PAUSE for x in reasons):
                self.sensor_suspend = True
            if self.sensor_suspend and self.entered_at is not None:
                resume_not_before = self.entered_at + p.min_suspend_s
            if reasons or (resume_not_before is not None and now < resume_not_before):
                if first:
                    self._enter(HarvestState.SUSPENDED, now, reasons)
                    actions.append(Suspend(reasons))
            else:
                self._enter(HarvestState.RUNNING, now, ())
                actions += [Resume(), SetAllowance(allow)]
                self.last_allowance = allow
                resume_not_before = None
        if self.state is HarvestState.SUSPENDED:
            backoff = self._latches.thermal_until
            if backoff is not None and now < backoff:
                resume_not_before = max(resume_not_before or backoff, backoff)
            details = tuple(f"{x.value}: {found[x]}" for x in reasons)
            if not reasons and resume_not_before is not None and now < resume_not_before:
                details = (f"no reason left; held by min_suspend_s ({p.min_suspend_s:g} s after a "
                           f"sensor's suspension): resumes in {resume_not_before - now:.0f} s",)
            shown = reasons
        else:
            resume_not_before = None
            details = tuple(f"{x.value} (held by min_run_s): {found[x]}" for x in pending)
            shown = ()
        d = Decision(state=self.state, reasons=shown, pending=pending, details=details, allowance=allow,
                     user_active=user_active(p, readings), resume_not_before=resume_not_before,
                     actions=tuple(actions))
        self.last = d
        return d

    def _enter(self, state: HarvestState, now: float, reasons: tuple[SuspendReason, ...]) -> None:
        self.state = state
        self.entered_at = now
        self.sensor_suspend = any(x is not SuspendReason.OPERATOR_PAUSE for x in reasons)
        if state is HarvestState.SUSPENDED:
            self.last_allowance = None


def _fmt(v: float | None) -> str:
    return "unknown" if v is None else f"{v:g}"


def _pct(a: int | None, b: int | None) -> str:
    return "unknown" if a is None or not b else f"{100.0 * a / b:.1f}"


def _window_text(p: HarvestPolicy, weekday: int) -> str:
    w = p.window_for(weekday)
    if w.kind != "between":
        return w.kind
    return f"{w.start_s // 3600:02d}:{w.start_s % 3600 // 60:02d}-{w.end_s // 3600:02d}:{w.end_s % 3600 // 60:02d}"
