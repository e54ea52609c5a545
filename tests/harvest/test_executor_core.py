"""The executor's sans-IO parts: limits policy, duty cycle, meters, Usage codec, cgroup parsing."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import pack
from fognode.protocols.harvest.cgroup import cgroup2_mount, own_cgroup
from fognode.protocols.harvest.exec_errors import BadJobError
from fognode.protocols.harvest.jobs import JobSpec
from fognode.protocols.harvest.limits import (MIN_MEMORY, Allowance, DutyCycle, Mechanism,
                                              StopCause, allocation_failure, cgroup_cpu_max,
                                              choose_mechanism, job_memory_limit,
                                              rlimit_data_bytes, stop_cause)
from fognode.protocols.harvest.meter import JobMeter, Sample, SessionMeter, Usage


def test_allowance_refuses_bad_values_naming_the_field() -> None:
    for bad in (0, -0.1, 1.5, math.nan, "1", True):
        with pytest.raises(BadJobError) as e:
            Allowance(cpu_fraction=bad)
        assert e.value.field == "cpu_fraction"
    for bad_m in (MIN_MEMORY - 1, 1.5e9, True):
        with pytest.raises(BadJobError) as e:
            Allowance(memory_bytes=bad_m)
        assert e.value.field == "memory_bytes"
    assert Allowance(0.5, MIN_MEMORY).cpu_fraction == 0.5


def test_job_spec_refuses_bad_fields() -> None:
    with pytest.raises(BadJobError) as e:
        JobSpec()
    assert e.value.field == "argv"
    with pytest.raises(BadJobError) as e:
        JobSpec(module="os")
    assert e.value.field == "module"
    with pytest.raises(BadJobError) as e:
        JobSpec(argv=("true",), max_output=-1)
    assert e.value.field == "max_output"


def test_job_memory_limit_never_exceeds_the_allowance() -> None:
    a = Allowance(memory_bytes=100 * 2**20)
    assert job_memory_limit(None, a) == a.memory_bytes
    assert job_memory_limit(50 * 2**20, a) == 50 * 2**20
    assert job_memory_limit(500 * 2**20, a) == a.memory_bytes
    with pytest.raises(BadJobError):
        job_memory_limit(1, a)
    assert rlimit_data_bytes(a.memory_bytes) > a.memory_bytes


def test_mechanism_and_cpu_max() -> None:
    assert choose_mechanism(True) is Mechanism.CGROUP_V2
    assert choose_mechanism(False) is Mechanism.RLIMIT
    assert cgroup_cpu_max(1.0, 4) == "max 100000"
    assert cgroup_cpu_max(0.25, 2) == "50000 100000"


def test_duty_cycle_phases_follow_the_clock() -> None:
    d = DutyCycle(0.3, 1.0)
    assert d.phase(10.0).run and d.phase(10.0).until == pytest.approx(10.3)
    assert not d.phase(10.5).run and d.phase(10.5).until == pytest.approx(11.0)
    assert d.phase(10.999).until == pytest.approx(11.0)
    full = DutyCycle(1.0)
    assert not full.throttles and full.phase(3.7).run and full.phase(3.7).until == math.inf
    with pytest.raises(BadJobError):
        DutyCycle(0.5, 0.001)


@given(st.floats(0.05, 1.0), st.floats(0.1, 5.0), st.floats(0, 1e6))
@settings(max_examples=200, deadline=None)
def test_duty_cycle_run_share_is_the_fraction(fraction: float, period: float, t0: float) -> None:
    d = DutyCycle(fraction, period)
    t, ran, end = t0, 0.0, t0 + 20 * period
    while t < end:
        p = d.phase(t)
        assert p.until > t
        nxt = min(p.until, end)
        if p.run:
            ran += nxt - t
        t = nxt
    assert ran / (end - t0) == pytest.approx(fraction, abs=1.0 / 20 + 1e-9)


def test_suspension_wins_over_the_throttle() -> None:
    d = DutyCycle(0.5, 1.0)
    assert stop_cause(True, d.phase(0.1)) is StopCause.SUSPENDED
    assert stop_cause(False, d.phase(0.7)) is StopCause.THROTTLED
    assert stop_cause(False, d.phase(0.1)) is StopCause.NONE


def test_allocation_failure_markers() -> None:
    assert allocation_failure(b"Traceback ...\nMemoryError\n")
    assert allocation_failure(b"memory allocation of 1024 bytes failed")
    assert not allocation_failure(b"ValueError: nope")


def test_job_meter_integrates_memory_and_stop_times() -> None:
    m = JobMeter(100.0)
    m.sample(100.0, Sample(cpu_s=0.0, rss_bytes=10 * 10**6))
    m.sample(101.0, Sample(cpu_s=0.9, rss_bytes=20 * 10**6, hwm_bytes=25 * 10**6))
    m.set_cause(101.0, StopCause.SUSPENDED)
    m.set_cause(103.0, StopCause.THROTTLED)
    m.set_cause(103.5, StopCause.NONE)
    u = m.finish(104.0, Sample(cpu_s=1.5, rss_bytes=0))
    assert u.cpu_s == 1.5 and u.wall_s == pytest.approx(4.0)
    assert u.suspended_s == pytest.approx(2.0) and u.throttled_s == pytest.approx(0.5)
    assert u.peak_rss_bytes == 25 * 10**6
    # 10 MB for 1 s, then 20 MB for 3 s
    assert u.mem_byte_s == pytest.approx(10e6 * 1 + 20e6 * 3)
    assert u.mem_mb_hours == pytest.approx(70 / 3600)
    assert m.usage(500.0) == u  # finished: frozen in time


def test_cpu_never_goes_back() -> None:
    m = JobMeter(0.0)
    m.sample(1.0, Sample(cpu_s=2.0, rss_bytes=1))
    m.sample(2.0, Sample(cpu_s=0.5, rss_bytes=1))   # a descendant exited unreaped: not lost
    assert m.usage(2.0).cpu_s == 2.0


def test_session_meter_adds_finished_and_live_jobs() -> None:
    s = SessionMeter(0.0)
    a, b = JobMeter(0.0), JobMeter(0.0)
    s.attach(1, a)
    s.attach(2, b)
    a.sample(1.0, Sample(1.0, 10))
    b.sample(1.0, Sample(2.0, 20))
    s.close(1, a.finish(2.0))
    b.add_fuel(7)
    t = s.totals(2.0)
    assert t.jobs == 2 and t.cpu_s == 3.0 and t.fuel == 7
    assert s.snapshot(2.0).peak_rss_bytes >= 20
    carried = SessionMeter(0.0, carried=t)
    assert carried.totals(0.0) == t


usage_st = st.builds(Usage, cpu_s=st.floats(0, 1e9), wall_s=st.floats(0, 1e9),
                     suspended_s=st.floats(0, 1e9), throttled_s=st.floats(0, 1e9),
                     peak_rss_bytes=st.integers(0, 2**64 - 1), mem_byte_s=st.floats(0, 1e18),
                     fuel=st.integers(0, 2**64 - 1), jobs=st.integers(0, 2**32))


@given(usage_st)
@settings(max_examples=100, deadline=None)
def test_usage_round_trips_through_msgpack(u: Usage) -> None:
    assert Usage.from_wire(u.to_wire()) == u


def test_usage_decoder_names_the_bad_field() -> None:
    good = Usage(cpu_s=1.0).to_dict()
    for key, value in (("cpu_s", -1.0), ("fuel", "x"), ("jobs", -1), ("v", 9)):
        with pytest.raises(RemoteProtocolError, match=key):
            Usage.from_wire(pack({**good, key: value}))
    with pytest.raises(RemoteProtocolError, match="unknown field"):
        Usage.from_wire(pack({**good, "extra": 1}))
    with pytest.raises(RemoteProtocolError):
        Usage.from_wire(b"\xc1")


def test_cgroup_parsing() -> None:
    mountinfo = ("30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n"
                 "35 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:14 - cgroup2 cgroup2 rw\n")
    assert str(cgroup2_mount(mountinfo)) == "/sys/fs/cgroup/unified"
    assert cgroup2_mount("30 25 0:26 / /x rw - cgroup cgroup rw,memory\n") is None
    assert own_cgroup("4:memory:/a\n0::/system.slice/fognode.service\n") == \
        "/system.slice/fognode.service"
    assert own_cgroup("0::/\n") == "/"
    assert own_cgroup("4:memory:/a\n") is None
