"""History: rings write, downsample and answer range queries across tiers; the store's size on
disk is fixed whatever the uptime (a simulated month and a half on a fake clock)."""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from fognode.protocols.monitor.series import (MAX_POINTS, Ring, SeriesQueryError, SeriesSet, Tier,
                                              memory_buffers, parse_duration)
from fognode.protocols.monitor.store import SeriesStore

DAY = 86400.0
TIERS = [Tier.parse("10s:1d"), Tier.parse("5m:30d")]


def mem_set() -> SeriesSet:
    return SeriesSet([Ring(t, memory_buffers("x", t)) for t in TIERS])


def test_tier_and_duration_parsing() -> None:
    assert Tier.parse("10s:1d") == Tier(10, DAY) and Tier(10, DAY).slots == 8640
    assert parse_duration("1.5h") == 5400
    for bad in ("10s", "0s:1d", "1d:10s", "x:1d", "1s:100d"):
        with pytest.raises(ValueError):
            Tier.parse(bad)


def test_downsample_keeps_mean_min_max_count() -> None:
    s = mem_set()
    t0 = 1_000_000 * 300.0          # on a 5-minute boundary
    vals = [float(i) for i in range(30)]
    for i, v in enumerate(vals):
        s.record(t0 + 10 * i, v)
    fine = s.query(t0, t0 + 299, None, now=t0 + 300)
    assert [p.mean for p in fine] == vals and all(p.count == 1 for p in fine)
    (coarse,) = s.query(t0, t0 + 299, 300, now=t0 + 300)
    assert (coarse.mean, coarse.min, coarse.max, coarse.count) == (14.5, 0.0, 29.0, 30)
    # the 5-minute tier itself holds the same aggregate (read past the fine tier's day)
    (old,) = s.query(t0, t0 + 299, None, now=t0 + 2 * DAY)
    assert (old.t, old.mean, old.min, old.max, old.count) == (t0, 14.5, 0.0, 29.0, 30)
    s.record(t0, math.nan)           # not a number: not recorded
    assert s.query(t0, t0 + 5, None, now=t0 + 300)[0].count == 1


def test_query_across_tiers_a_month_and_a_half() -> None:
    s = mem_set()
    start = 1_700_000_000.0 - (1_700_000_000.0 % 300)
    end = start + 45 * DAY
    t = start
    while t < end:
        s.record(t, (t - start) / DAY)        # the value says which day it was recorded on
        t += 10
    now = end - 10
    pts = s.query(now - 40 * DAY, now, None, now)
    fine = [p for p in pts if p.count == 1]
    coarse = [p for p in pts if p.count == 30]
    # the last day comes from the 10 s tier, the month before it from the 5 min tier
    assert len(fine) == 8640 and fine[0].t >= now - DAY
    assert coarse and coarse[0].t >= now - 30 * DAY - 300 and coarse[-1].t < fine[0].t
    assert len(coarse) >= 29 * 288
    assert all(a.t < b.t for a, b in zip(pts, pts[1:]))
    # older than the coarse tier's month: gone (overwritten), not wrong
    assert not [p for p in pts if p.t < now - 30 * DAY - 300]
    # a daily step regroups both tiers; each day's mean is its day number + 0.5
    daily = s.query(now - 20 * DAY, now, DAY, now)
    for p in daily[1:-1]:
        assert p.mean == pytest.approx((p.t - start) / DAY + 0.5, abs=0.01)


def test_bad_query_parameters_name_the_parameter() -> None:
    s = mem_set()
    with pytest.raises(SeriesQueryError) as e:
        s.query(10, 5, None, now=10)
    assert e.value.param == "since"
    with pytest.raises(SeriesQueryError) as e:
        s.query(0, 5, 0, now=10)
    assert e.value.param == "step"
    with pytest.raises(SeriesQueryError) as e:
        s.query(0, math.inf, None, now=10)
    assert e.value.param == "since"
    tier = Tier.parse("1s:1d")
    big = SeriesSet([Ring(tier, memory_buffers("x", tier))])
    t = 1e9
    for i in range(MAX_POINTS + 10):
        big.record(t + i, 1.0)
    with pytest.raises(SeriesQueryError, match="larger step") as e:
        big.query(t, t + MAX_POINTS + 10, None, now=t + MAX_POINTS + 10)
    assert e.value.param == "step"
    assert len(big.query(t, t + MAX_POINTS + 10, 10, now=t + MAX_POINTS + 10)) == MAX_POINTS // 10 + 1


def test_store_size_is_fixed_after_a_simulated_month(tmp_path: Path) -> None:
    store = SeriesStore(tmp_path / "series", TIERS)
    rng = random.Random(7)
    t = 1_700_000_000.0
    s = store.series("node.peers")
    store.series("node.loop_lag_p99")
    size = sum(f.stat().st_size for f in (tmp_path / "series").iterdir())
    assert size == 2 * (2 * (32 + 8640 * 40))      # 2 series x 2 tiers, fixed at creation
    for _ in range(35 * 8640):                      # 35 days at 10 s
        s.record(t, rng.uniform(0, 10))
        t += 10
    store.close()
    assert sum(f.stat().st_size for f in (tmp_path / "series").iterdir()) == size
    # reopened (a restart): the history is there, the newest value included
    again = SeriesStore(tmp_path / "series", TIERS)
    pts = again.series("node.peers").query(t - 600, t, None, now=t)
    assert len(pts) == 60 and pts[-1].t == (t - 10) // 10 * 10
    again.close()
    # a changed tier starts that file afresh instead of misreading it; meanwhile the query falls
    # back, span by span, to the coarser tier that has data
    changed = SeriesStore(tmp_path / "series", [Tier.parse("10s:2d"), Tier.parse("5m:30d")])
    fresh = changed.series("node.peers")
    assert fresh.rings[0].points(t - 600, t) == []                    # the 10 s tier is new
    kept = fresh.query(t - 600, t, None, now=t)
    assert [p.count for p in kept][:1] == [30] and all(p.t % 300 == 0 for p in kept)   # from the 5 min tier
    assert len(kept) >= 2 and kept == fresh.rings[1].points(t - 600, t)
    # new samples go to both tiers: the newest part now comes from the 10 s tier, the part
    # before its first point still from the 5 min tier
    t2 = t + 3600                                   # an hour later (the node was down)
    for i in range(6):
        fresh.record(t2 + 10 * i, 5.0)
    both = fresh.query(t - 600, t2 + 60, None, now=t2 + 60)
    newest = [p for p in both if p.t >= t2]
    assert [(p.t, p.count, p.mean) for p in newest] == [(t2 + 10 * i, 1, 5.0) for i in range(6)]
    assert both[:len(kept)] == kept                 # the older part: still the 5 min tier's points
    assert fresh.query(t2, t2 + 60, None, now=t2 + 60) == newest
    changed.close()


def test_a_coarse_bucket_overlapping_finer_points_is_left_out() -> None:
    """A new node's first samples fall in the middle of a 5-minute bucket: an hour's query shows
    them from the 10 s tier only, not also as a 5-minute point at that bucket's start (which
    would put them minutes before they were taken, and count them twice)."""
    s = mem_set()
    t0 = 1_000_000 * 300.0 + 170                    # 2 min 50 s into a 5-minute bucket
    for i in range(6):
        s.record(t0 + 10 * i, float(i))
    pts = s.query(t0 - 3600, t0 + 60, None, now=t0 + 60)
    assert [(p.t, p.count) for p in pts] == [(t0 + 10 * i, 1) for i in range(6)]
    (five,) = s.query(t0 - 3600, t0 + 60, 300, now=t0 + 60)
    assert five.count == 6 and five.mean == 2.5
