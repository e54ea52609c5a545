"""Sensors: the real psutil provider on this machine, and recorded traces (replay, follow, errors)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fognode.protocols.harvest.errors import TraceError
from fognode.protocols.harvest.policy import HarvestPolicy
from fognode.protocols.harvest.policy_core import HarvestState, PolicyCore, on_battery
from fognode.protocols.harvest.sensors import FIELD_NAMES, PsutilSensors, Readings, TraceSensors, load_trace

TRACES = Path(__file__).parent / "traces"
TYPES = {"time": float, "utc_offset_s": int, "battery_percent": float, "power_plugged": bool,
         "cpu_temp_c": float, "battery_temp_c": float, "cpu_count": int, "owner_cpu_pct": float,
         "memory_available_bytes": int, "memory_total_bytes": int, "user_idle_s": float,
         "network_metered": bool}


def test_psutil_sensors_on_this_machine() -> None:
    """Every field is None or of its type, the same fields are known read after read, and the
    fields this Linux machine exposes are known."""
    assert set(TYPES) == set(FIELD_NAMES)
    s = PsutilSensors()
    reads = []
    for _ in range(3):
        t0 = time.perf_counter()
        reads.append(s.read())
        assert time.perf_counter() - t0 < 2.0          # cheap (about 10 ms; generous for a loaded box)
        time.sleep(0.06)   # the owner-CPU interval needs 50 ms between two reads
    for r in reads:
        for name, tp in TYPES.items():
            v = getattr(r, name)
            assert v is None or type(v) is tp, (name, v)
        assert abs(r.time - time.time()) < 60
    known = [{n for n in FIELD_NAMES if getattr(r, n) is not None} for r in reads[1:]]
    assert known[0] == known[1]
    r = reads[-1]
    if sys.platform.startswith("linux"):
        assert r.cpu_count == psutil.cpu_count() and r.memory_total_bytes == psutil.virtual_memory().total
        assert 0 < r.memory_available_bytes <= r.memory_total_bytes
        assert r.owner_cpu_pct is not None and 0 <= r.owner_cpu_pct <= 100
    # batteries: what psutil says, or None; a machine without any power supply (this CI VM) has
    # both unknown, and the policy counts that as mains, so require_charging lets it work
    if psutil.sensors_battery() is None:
        assert r.battery_percent is None
        supplies = Path("/sys/class/power_supply")
        if not supplies.exists() or not any(supplies.iterdir()):
            assert r.power_plugged is None
            assert not on_battery(r)
            assert PolicyCore(HarvestPolicy(owner_busy_pct=0, idle_owner_busy_pct=0,
                                            min_free_memory_pct=0)).tick(0, r).state is HarvestState.RUNNING
    if not psutil.sensors_temperatures():
        assert r.cpu_temp_c is None and r.battery_temp_c is None


BURN = 0.5     # CPU-seconds the burner must get in the measurement interval


def test_owner_cpu_excludes_the_daemon_and_its_children(tmp_path: Path) -> None:
    """A CPU-bound grandchild of the 'daemon' is not the owner's load; the same process seen
    from a process outside its tree is. Both providers sample the same interval."""
    loop = "import time\nt=time.time()\nwhile time.time()-t<60: pass"
    daemon = subprocess.Popen([sys.executable, "-c", f"import subprocess,sys; subprocess.run([sys.executable,'-c',{loop!r}])"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 30
        while not psutil.Process(daemon.pid).children() and time.monotonic() < deadline:
            time.sleep(0.02)   # polling (bounded) for the grandchild to exist
        (burner,) = psutil.Process(daemon.pid).children()
        as_daemon = PsutilSensors(pid=daemon.pid)       # the burner is this daemon's work
        outsider = PsutilSensors(pid=idle.pid)          # an unrelated process: the burner is the owner's
        c0, t0 = burner.cpu_times(), time.monotonic()
        # the measurement interval lasts until the burner has had BURN CPU-seconds (at least
        # 1 s, at most 40 s): on a loaded machine it gets a small share, so the interval grows
        # instead of the test asserting what the machine's load decides
        burned = 0.0
        while (burned < BURN or time.monotonic() - t0 < 1.0) and time.monotonic() - t0 < 40:
            time.sleep(0.1)
            c1 = burner.cpu_times()
            burned = (c1.user + c1.system) - (c0.user + c0.system)
        a, b = as_daemon.read(), outsider.read()
        c1 = burner.cpu_times()
        burned = (c1.user + c1.system) - (c0.user + c0.system)
        share = 100 * burned / (psutil.cpu_count() * (time.monotonic() - t0))
        assert a.owner_cpu_pct is not None and b.owner_cpu_pct is not None
        assert burned >= BURN, f"the burner got only {burned:.2f} CPU-s in 40 s"
        assert b.owner_cpu_pct - a.owner_cpu_pct >= share * 0.5, (a.owner_cpu_pct, b.owner_cpu_pct, share)
        # the /proc children walk (Linux) and psutil's process scan count the same tree
        fast = as_daemon._ours_procfs()
        if fast is not None:
            slow = sum(sum(p.cpu_times()[:4]) for p in (psutil.Process(daemon.pid), burner))
            assert abs(fast - slow) < 0.5
    finally:
        for p in (daemon, idle):
            try:
                for k in psutil.Process(p.pid).children(recursive=True):
                    k.kill()
            except psutil.Error:
                pass
            p.kill()
            p.wait()


def test_metered_network_from_a_fake_sysfs_root(tmp_path: Path) -> None:
    """The link-type rules, read from a directory tree shaped like /proc and /sys."""
    def net(iface: str, arphrd: int, devtype: str = "", device: bool = True) -> bool | None:
        root = tmp_path / iface
        (root / "proc/net").mkdir(parents=True)
        (root / "proc/net/route").write_text(
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
            f"{iface}\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
        d = root / "sys/class/net" / iface
        d.mkdir(parents=True)
        (d / "type").write_text(f"{arphrd}\n")
        (d / "uevent").write_text(f"INTERFACE={iface}\n" + (f"DEVTYPE={devtype}\n" if devtype else ""))
        if device:
            (d / "device").mkdir()
        return PsutilSensors(root=root)._metered()

    assert net("wwan0", 519, "wwan") is True
    assert net("ppp0", 512, device=False) is True
    assert net("eth0", 1) is False
    assert net("wlan0", 1, "wlan") is False
    assert net("veth0", 1, device=False) is None
    assert net("br0", 1, "bridge") is None
    assert net("tun0", 65534, device=False) is None


def write_trace(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_trace_replay_follows_the_clock(tmp_path: Path) -> None:
    p = write_trace(tmp_path / "t.jsonl", [{"time": 1000, "battery_percent": 50.0},
                                           {"time": 1010, "battery_percent": 40.0},
                                           {"time": 1030, "battery_percent": 30.0, "power_plugged": True}])
    clock = [500.0]
    s = TraceSensors(p, clock=lambda: clock[0])
    got = []
    for t in (500.0, 509.9, 510.0, 529.0, 530.0, 10_000.0):
        clock[0] = t
        got.append(s.read().battery_percent)
    assert got == [50.0, 50.0, 40.0, 40.0, 30.0, 30.0]
    assert s.read() == Readings(time=1030.0, battery_percent=30.0, power_plugged=True)


def test_trace_follow_mode_sees_appended_readings(tmp_path: Path) -> None:
    p = write_trace(tmp_path / "live.jsonl", [{"time": 1, "power_plugged": False, "battery_percent": 60.0}])
    s = TraceSensors(p, mode="follow")
    assert s.read().power_plugged is False
    with open(p, "a") as f:
        f.write(json.dumps({"time": 2, "power_plugged": True, "battery_percent": 61.0}) + "\n")
    assert s.read().power_plugged is True
    with open(p, "a") as f:
        f.write("{not json\n")
    with pytest.raises(TraceError, match=r"live\.jsonl:3: not valid JSON"):
        s.read()


def test_recorded_traces_load() -> None:
    for name in ("battery_cycle.jsonl", "thermal_spike.jsonl", "owner_load.jsonl"):
        trace = load_trace(TRACES / name)
        assert len(trace) > 50 and all(a.time <= b.time for a, b in zip(trace, trace[1:]))


def test_json_array_trace(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    p.write_text('[\n  {"time": 1, "cpu_temp_c": 40},\n  {"time": 2,\n   "cpu_temp_c": "hot"}\n]\n')
    with pytest.raises(TraceError, match=r"t\.json:3: cpu_temp_c: must be a number or null, got 'hot'"):
        load_trace(p)
    p.write_text('[{"time": 1, "cpu_temp_c": 40}]')
    assert load_trace(p) == (Readings(time=1.0, cpu_temp_c=40.0),)
    p.write_text('{"time": 1}')
    with pytest.raises(TraceError, match="must be an array"):
        load_trace(p)


@pytest.mark.parametrize("lines,match", [
    (['{"time": 1}', '{"time": 2, "batery_percent": 5}'], r":2: batery_percent: unknown field"),
    (['{"time": 1}', 'nope'], r":2: not valid JSON"),
    (['# header', '', '{"time": "noon"}'], r":3: time: must be a non-negative number"),
    (['{"battery_percent": 5}'], r":1: time: must be"),
    (['{"time": 1, "battery_percent": 101}'], r":1: battery_percent: must be between 0 and 100"),
    (['{"time": 1, "battery_percent": -1}'], r":1: battery_percent: must be between 0 and 100"),
    (['{"time": 1, "power_plugged": 1}'], r":1: power_plugged: must be true, false or null"),
    (['{"time": 1, "cpu_count": 2.5}'], r":1: cpu_count: must be an integer"),
    (['{"time": 1, "cpu_count": 0}'], r":1: cpu_count: must be at least 1"),
    (['{"time": 1, "owner_cpu_pct": true}'], r":1: owner_cpu_pct: must be a number"),
    (['{"time": 1, "user_idle_s": -5}'], r":1: user_idle_s: must be between 0"),
    (['{"time": 1, "memory_available_bytes": 10, "memory_total_bytes": 5}'],
     r":1: memory_available_bytes: 10 exceeds memory_total_bytes 5"),
    (['{"time": 1, "utc_offset_s": 99999}'], r":1: utc_offset_s: must be an integer between"),
    (['{"time": 5}', '{"time": 4}'], r":2: time: goes back in time"),
    (['[1, 2]'], r":1: a record must be a JSON object, got list"),
    (['# only a comment'], r"no readings"),
])
def test_trace_errors_name_the_line_and_field(tmp_path: Path, lines: list[str], match: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceError, match=match) as e:
        load_trace(p)
    assert str(p) in str(e.value)


def test_missing_trace_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read the trace"):
        TraceSensors(tmp_path / "absent.jsonl")
    assert not os.path.exists(tmp_path / "absent.jsonl")
