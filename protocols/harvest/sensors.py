"""What the harvest policy knows about the device: `Readings`, and where they come from.

`Readings` is one frozen snapshot. Every field the OS does not tell is `None` (unknown), never
a guess; what the policy does with an unknown value is its own documented choice
(policy_core.py). A `SensorProvider` has one method, `read() -> Readings`: synchronous, no
sleeps, no subprocesses, small /proc and /sys reads (about 10 ms on Linux, most of it listing
this daemon's descendants for the owner's CPU share), safe to call
from a worker thread (`trio.to_thread.run_sync(provider.read)`) and from several threads
(state between reads is behind a lock). Two providers:

- `PsutilSensors`, the real one (Linux first; what it reads is listed in its docstring);
- `TraceSensors`, which replays a recorded trace (JSON or JSONL, `load_trace`), so tests and a
  daemon (`[protocols.harvest] sensors = "<path>"`) can be fed recorded readings. A malformed
  trace raises `TraceError` naming the file, the line and the field.
"""
from __future__ import annotations

import bisect
import json
import math
import os
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import psutil

from fognode.protocols.harvest.errors import TraceError


@dataclass(frozen=True)
class Readings:
    """One snapshot of the device. `None`: the OS does not tell (or not yet: see the field)."""

    time: float                                # wall clock, seconds since the epoch (UTC)
    utc_offset_s: int = 0                      # local time minus UTC at `time`, in seconds
    battery_percent: float | None = None       # 0..100; None: no battery reported
    power_plugged: bool | None = None          # on external power (mains/USB); None: not told
    cpu_temp_c: float | None = None            # hottest CPU/SoC sensor, Celsius
    battery_temp_c: float | None = None        # hottest battery sensor, Celsius
    cpu_count: int | None = None               # logical CPUs
    owner_cpu_pct: float | None = None         # CPU use of everything but this daemon and its
                                               # children, % of the whole machine (0..100),
                                               # over the interval since the previous read
    memory_available_bytes: int | None = None  # what the kernel could give without swapping
    memory_total_bytes: int | None = None
    user_idle_s: float | None = None           # seconds since the last user input
    network_metered: bool | None = None        # the default route leaves over a metered link

    def to_json(self) -> dict[str, Any]:
        """The trace-line form of this snapshot (unknown fields as null)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


FIELD_NAMES = tuple(f.name for f in fields(Readings))


class SensorProvider(Protocol):
    """Where readings come from. `read` must be cheap and must not block on anything slow."""

    def read(self) -> Readings: ...


# ---------------------------------------------------------------- psutil (the real device)

# hwmon/thermal names whose sensors are the CPU or SoC package (psutil.sensors_temperatures keys)
_CPU_SENSOR_NAMES = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal", "soc_thermal",
                     "soc-thermal", "x86_pkg_temp", "acpitz", "cpu", "tcpu", "package")
_PLAUSIBLE_C = (-40.0, 150.0)      # outside this a sensor is broken or unplugged: not a reading
# Linux ARPHRD link types and devtypes of cellular links (metered by nature)
_ARPHRD_ETHER, _ARPHRD_PPP, _ARPHRD_RAWIP, _ARPHRD_NONE = 1, 512, 519, 65534
# USB network drivers used both by phones tethering and by USB Ethernet dongles: cannot tell
_TETHER_DRIVERS = ("rndis_host", "cdc_ether", "cdc_ncm", "ipheth", "cdc_mbim", "qmi_wwan")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _plausible(value: Any) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    v = float(value)
    if math.isnan(v) or not _PLAUSIBLE_C[0] <= v <= _PLAUSIBLE_C[1]:
        return None
    return v


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


class PsutilSensors:
    """The device's own sensors, through psutil (Linux first).

    On Linux:
    - battery: `psutil.sensors_battery()` (/sys/class/power_supply/BAT*: capacity, status, and
      the AC adapter's `online`). With no battery, a supply of type "Mains" or "USB" still
      tells `power_plugged` (its `online`); with no power supply at all (servers, VMs,
      containers: this test machine) both fields are None.
    - temperatures: `psutil.sensors_temperatures()` (/sys/class/hwmon, else
      /sys/class/thermal): `cpu_temp_c` is the hottest sensor of a CPU/SoC driver (coretemp,
      k10temp, zenpower, cpu_thermal, soc_thermal, acpitz, ...), `battery_temp_c` the hottest
      whose name contains "bat". Values outside -40..150 C are a broken sensor, not a reading.
      No such sensor (VMs, containers): None.
    - owner CPU: /proc/stat busy time (user+nice+system+irq+softirq; guest is inside user)
      minus the CPU time of this process, its live descendants (found through
      /proc/<pid>/task/<tid>/children) and the children they reaped (/proc/<pid>/stat
      utime+stime+cutime+cstime), over the interval since the previous read,
      as % of the whole machine. The first read after construction uses the baseline taken by
      the constructor; a read less than 50 ms after the previous one returns None.
    - memory: `psutil.virtual_memory()` (/proc/meminfo MemAvailable, MemTotal).
    - user idle: the logged-in sessions in utmp (`psutil.users()`), and the access time of each
      session's terminal device (/dev/tty*, /dev/pts/*), which the tty layer refreshes on
      input: this is what `w` shows as IDLE and what BOINC's `all_tty_idle_time` reads. None
      when nobody is logged in, or when a session has no terminal device (an X11/Wayland login:
      its idleness is only told over D-Bus (logind IdleHint) or by the X server, which a
      headless daemon does not reach; /dev/input/event* atimes are not refreshed by evdev).
    - metered network: the default route in /proc/net/route and its interface's link type
      (/sys/class/net/<if>/type, uevent DEVTYPE, driver): cellular (DEVTYPE wwan, PPP, raw-IP)
      is True; a physical wired or Wi-Fi NIC is False; a virtual interface (veth, bridge, tun:
      the real link is elsewhere), a USB network driver that phones use for tethering, or no
      default route is None. A phone's Wi-Fi hotspot reads as Wi-Fi (False): NetworkManager's
      own metered guess is only on D-Bus.
    Elsewhere (macOS, Windows, BSD) psutil's battery, memory and CPU readings work as above;
    temperatures, user idle and metered network are None.
    """

    def __init__(self, *, pid: int | None = None, clock: Callable[[], float] = time.time,
                 root: Path = Path("/")) -> None:
        self._proc = psutil.Process(pid if pid is not None else os.getpid())
        self._clock = clock
        self._root = root
        self._lock = threading.Lock()
        self._prev: tuple[float, float, float] | None = None   # (monotonic, busy, total) seconds
        self._prev_ours = 0.0
        with self._lock:
            self._sample_cpu()

    def read(self) -> Readings:
        with self._lock:
            now = self._clock()
            percent, plugged = self._battery()
            cpu_t, bat_t = self._temperatures()
            mem_avail, mem_total = self._memory()
            return Readings(
                time=now, utc_offset_s=time.localtime(now).tm_gmtoff,
                battery_percent=percent, power_plugged=plugged,
                cpu_temp_c=cpu_t, battery_temp_c=bat_t, cpu_count=psutil.cpu_count(logical=True),
                owner_cpu_pct=self._sample_cpu(),
                memory_available_bytes=mem_avail, memory_total_bytes=mem_total,
                user_idle_s=self._user_idle(now), network_metered=self._metered())

    # -- battery and power
    def _battery(self) -> tuple[float | None, bool | None]:
        try:
            bat = psutil.sensors_battery()
        except (OSError, RuntimeError):
            bat = None
        if bat is not None:
            pct = float(bat.percent) if 0 <= bat.percent <= 100 else None
            return pct, (bool(bat.power_plugged) if bat.power_plugged is not None else None)
        return None, self._mains_online()

    def _mains_online(self) -> bool | None:
        base = self._root / "sys/class/power_supply"
        try:
            supplies = sorted(base.iterdir())
        except OSError:
            return None
        seen: list[bool] = []
        for s in supplies:
            if _read_text(s / "type") in ("Mains", "USB"):
                online = _read_text(s / "online")
                if online in ("0", "1"):
                    seen.append(online == "1")
        return any(seen) if seen else None

    # -- temperatures
    def _temperatures(self) -> tuple[float | None, float | None]:
        try:
            temps = psutil.sensors_temperatures()
        except (OSError, RuntimeError, AttributeError):
            return None, None
        cpu: list[float] = []
        bat: list[float] = []
        for name, entries in temps.items():
            lname = name.lower()
            for e in entries:
                v = _plausible(e.current)
                if v is None:
                    continue
                if "bat" in lname or "bat" in (e.label or "").lower():
                    bat.append(v)
                elif lname in _CPU_SENSOR_NAMES or lname.startswith(("cpu", "soc")):
                    cpu.append(v)
        return (max(cpu) if cpu else None), (max(bat) if bat else None)

    # -- CPU: the owner's share
    def _ours(self) -> float:
        """CPU seconds of this process, its live descendants, and the children they reaped."""
        fast = self._ours_procfs()
        if fast is not None:
            return fast
        total = 0.0
        try:
            procs = [self._proc, *self._proc.children(recursive=True)]
        except psutil.Error:
            procs = [self._proc]
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue      # exited between the listing and now
            total += t.user + t.system + t.children_user + t.children_system
        return total

    def _ours_procfs(self) -> float | None:
        """Linux: walk /proc/<pid>/task/<tid>/children from this process and sum utime, stime,
        cutime and cstime of /proc/<pid>/stat (a few files instead of psutil's scan of every
        process). None where the kernel lacks those files (then psutil does it)."""
        proc = self._root / "proc"
        todo, total, seen = [self._proc.pid], 0, set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                stat = (proc / str(pid) / "stat").read_bytes()
                tasks = list((proc / str(pid) / "task").iterdir())
            except FileNotFoundError:
                if pid == self._proc.pid:
                    return None
                continue          # exited meanwhile
            except OSError:
                return None
            cols = stat[stat.rindex(b")") + 2:].split()
            total += sum(int(c) for c in cols[11:15])       # utime stime cutime cstime (fields 14-17)
            for task in tasks:
                try:
                    kids = (task / "children").read_bytes().split()
                except FileNotFoundError:
                    if pid == self._proc.pid and task.name == str(pid):
                        return None   # no CONFIG_PROC_CHILDREN
                    continue
                todo.extend(int(k) for k in kids)
        return total / _CLK_TCK

    def _sample_cpu(self) -> float | None:
        try:
            ct = psutil.cpu_times()
        except OSError:
            return None
        busy = ct.user + ct.nice + ct.system + getattr(ct, "irq", 0.0) + getattr(ct, "softirq", 0.0)
        total = busy + ct.idle + getattr(ct, "iowait", 0.0) + getattr(ct, "steal", 0.0)
        ours = self._ours()
        mono = time.monotonic()
        prev, prev_ours = self._prev, self._prev_ours
        self._prev, self._prev_ours = (mono, busy, total), ours
        if prev is None or mono - prev[0] < 0.05 or total - prev[2] <= 0:
            return None
        other = (busy - prev[1]) - max(0.0, ours - prev_ours)
        return round(min(100.0, max(0.0, 100.0 * other / (total - prev[2]))), 2)

    # -- memory
    @staticmethod
    def _memory() -> tuple[int | None, int | None]:
        try:
            vm = psutil.virtual_memory()
        except (OSError, RuntimeError):
            return None, None
        return int(vm.available), int(vm.total)

    # -- user idle
    def _user_idle(self, now: float) -> float | None:
        try:
            users = psutil.users()
        except (OSError, RuntimeError):
            return None
        if not users:
            return None
        latest: float | None = None
        for u in users:
            term = u.terminal or ""
            if not term.startswith(("tty", "pts/", "console")):
                return None     # a graphical or remote session without a terminal device
            try:
                atime = (self._root / "dev" / term).stat().st_atime
            except OSError:
                return None
            latest = atime if latest is None else max(latest, atime)
        return None if latest is None else max(0.0, now - latest)

    # -- metered network
    def _metered(self) -> bool | None:
        route = _read_text(self._root / "proc/net/route")
        if route is None:
            return None
        best: tuple[int, str] | None = None
        for line in route.splitlines()[1:]:
            cols = line.split()
            if len(cols) < 8 or cols[1] != "00000000" or cols[7] != "00000000":
                continue
            try:
                flags, metric = int(cols[3], 16), int(cols[6])
            except ValueError:
                continue
            if flags & 1 and (best is None or metric < best[0]):     # RTF_UP
                best = (metric, cols[0])
        if best is None:
            return None
        net = self._root / "sys/class/net" / best[1]
        uevent = _read_text(net / "uevent") or ""
        devtype = next((ln.split("=", 1)[1] for ln in uevent.splitlines() if ln.startswith("DEVTYPE=")), "")
        try:
            arphrd = int(_read_text(net / "type") or "-1")
        except ValueError:
            arphrd = -1
        if devtype == "wwan" or arphrd in (_ARPHRD_PPP, _ARPHRD_RAWIP):
            return True
        if arphrd != _ARPHRD_ETHER or devtype not in ("", "wlan") or not (net / "device").exists():
            return None          # virtual (veth, bridge, tun, vlan) or unknown link type
        try:
            driver = os.path.basename(os.readlink(net / "device" / "driver"))
        except OSError:
            driver = ""
        return None if driver in _TETHER_DRIVERS else False


# ---------------------------------------------------------------- recorded traces

_NUMBER_FIELDS = {"battery_percent": (0.0, 100.0), "cpu_temp_c": (-273.15, 1000.0),
                  "battery_temp_c": (-273.15, 1000.0), "owner_cpu_pct": (0.0, 100.0),
                  "user_idle_s": (0.0, math.inf)}
_INT_FIELDS = {"cpu_count": 1, "memory_available_bytes": 0, "memory_total_bytes": 0}
_BOOL_FIELDS = ("power_plugged", "network_metered")


def readings_from_json(obj: Any, *, path: str, line: int) -> Readings:
    """One trace record -> Readings; TraceError naming the line and field on anything wrong."""
    def bad(field: str | None, msg: str) -> TraceError:
        return TraceError(msg, path=path, line=line, field=field)

    if not isinstance(obj, Mapping):
        raise bad(None, f"a record must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELD_NAMES))
    if unknown:
        raise bad(unknown[0], f"unknown field; known: {', '.join(FIELD_NAMES)}")
    kw: dict[str, Any] = {}
    t = obj.get("time")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t < 0:
        raise bad("time", f"must be a non-negative number of seconds since the epoch, got {t!r}")
    kw["time"] = float(t)
    off = obj.get("utc_offset_s", 0)
    if not isinstance(off, int) or isinstance(off, bool) or not -14 * 3600 <= off <= 14 * 3600:
        raise bad("utc_offset_s", f"must be an integer between -50400 and 50400, got {off!r}")
    kw["utc_offset_s"] = off
    for name, (lo, hi) in _NUMBER_FIELDS.items():
        v = obj.get(name)
        if v is None:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise bad(name, f"must be a number or null, got {v!r}")
        if not lo <= v <= hi:
            raise bad(name, f"must be between {lo:g} and {hi:g}, got {v!r}")
        kw[name] = float(v)
    for name, lo_i in _INT_FIELDS.items():
        v = obj.get(name)
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool):
            raise bad(name, f"must be an integer or null, got {v!r}")
        if v < lo_i:
            raise bad(name, f"must be at least {lo_i}, got {v}")
        kw[name] = v
    for name in _BOOL_FIELDS:
        v = obj.get(name)
        if v is not None and not isinstance(v, bool):
            raise bad(name, f"must be true, false or null, got {v!r}")
        kw[name] = v
    avail, total = kw.get("memory_available_bytes"), kw.get("memory_total_bytes")
    if avail is not None and total is not None and avail > total:
        raise bad("memory_available_bytes", f"{avail} exceeds memory_total_bytes {total}")
    return Readings(**kw)


def load_trace(path: str | os.PathLike[str]) -> tuple[Readings, ...]:
    """Read a trace: JSONL (one object per line; blank lines and `#` comments skipped) or, for
    a `.json` file, one JSON array of objects. Times must not decrease. Raises TraceError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TraceError(f"cannot read the trace: {e}", path=str(p), line=0) from None
    records: list[tuple[int, Any]] = []
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise TraceError(f"not valid JSON: {e.msg}", path=str(p), line=e.lineno) from None
        if not isinstance(data, list):
            raise TraceError("a .json trace must be an array of records", path=str(p), line=1)
        # a record's line: where its object starts in the text (for messages only)
        records = [(i + 1, r) for i, r in enumerate(data)]
        starts = _object_lines(text)
        if len(starts) == len(records):
            records = [(starts[i], r) for i, (_, r) in enumerate(records)]
    else:
        for n, raw in enumerate(text.splitlines(), 1):
            s = raw.strip()
            if not s or s.startswith("#"):
                continue
            try:
                records.append((n, json.loads(s)))
            except json.JSONDecodeError as e:
                raise TraceError(f"not valid JSON: {e.msg} (column {e.colno})", path=str(p), line=n) from None
    out: list[Readings] = []
    for n, rec in records:
        r = readings_from_json(rec, path=str(p), line=n)
        if out and r.time < out[-1].time:
            raise TraceError(f"goes back in time ({r.time} < {out[-1].time})", path=str(p), line=n, field="time")
        out.append(r)
    if not out:
        raise TraceError("the trace has no readings", path=str(p), line=0)
    return tuple(out)


def _object_lines(text: str) -> list[int]:
    """1-based line numbers where the top-level array's objects start (depth-1 '{')."""
    lines, depth, line, in_str, esc = [], 0, 1, False, False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_str:
            esc = (ch == "\\") and not esc
            if ch == '"' and not esc:
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "[{":
            if ch == "{" and depth == 1:
                lines.append(line)
            depth += 1
        elif ch in "]}":
            depth -= 1
    return lines


class TraceSensors:
    """Replays a recorded trace as a SensorProvider.

    mode "replay": the record in effect is the last one whose offset from the first record's
    time is at most the time elapsed (on `clock`) since the first `read`; after the end the last
    record stays in effect. mode "follow": the last record of the file is in effect, and the
    file is re-read whenever its size or modification time changes, so a test or a tool can
    append readings to a running daemon's trace. The file is parsed at construction (TraceError
    then); in follow mode a later malformed write raises TraceError from `read` and the
    readings in effect stay the previous ones.
    """

    def __init__(self, path: str | os.PathLike[str], *, mode: str = "replay",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in ("replay", "follow"):
            raise ValueError(f"mode must be 'replay' or 'follow', got {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self.readings = load_trace(self.path)
        self._times = [r.time for r in self.readings]
        self._start: float | None = None

    def _file_stamp(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except OSError as e:
            raise TraceError(f"cannot read the trace: {e}", path=str(self.path), line=0) from None
        return st.st_size, st.st_mtime_ns

    def read(self) -> Readings:
        with self._lock:
            if self.mode == "follow":
                stamp = self._file_stamp()
                if stamp != self._stamp:
                    self.readings = load_trace(self.path)
                    self._stamp = stamp
                return self.readings[-1]
            now = self._clock()
            if self._start is None:
                self._start = now
            first = self.readings[0].time
            i = bisect.bisect_right(self._times, first + (now - self._start))
            return self.readings[max(0, i - 1)]
