"""Sans-IO time series in fixed-size rings, one ring per (metric, tier).

A tier is a bucket width and a retention (`Tier(step=10, span=86400)`: 10 s buckets for a day).
Its ring holds span/step slots of 40 bytes: the bucket number (+1; 0 marks an empty slot), sum,
min, max and count of the samples that fell into that bucket. `record(t, value)` writes every
tier at once (read, merge, write the one slot of its bucket), so nothing is pending in memory
and a ring in a file (store.py maps it) is always current; a slot whose stored bucket number is
not the one asked for is old data and reads as empty, which is how the oldest buckets are
"deleted": by being overwritten, so the size never changes.

`SeriesSet.query(since, until, step, now)` reads each part of the range from the finest tier that
still holds it and has data there (a tier whose file began empty after a change of `tiers`
leaves the older part to the coarser tiers; a coarse bucket that reaches into a finer tier's
points is left out, so no sample counts twice) and regroups the points into `step`-wide
buckets (never finer than the tier).
Buffers are anything writable with the buffer protocol: a bytearray in tests, an mmap in the
daemon. No trio, no clock: time is passed in.
"""
from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from typing import Callable, Sequence

SLOT = struct.Struct("<qdddd")     # bucket+1, sum, min, max, count
MAX_POINTS = 20_000                # a query returns at most this many points

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class SeriesQueryError(ValueError):
    """A query's parameters are wrong (the message names the parameter)."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(f"{param}: {message}")


def parse_duration(text: str) -> float:
    """'10s', '5m', '1.5h', '30d' -> seconds. Raises ValueError naming the text."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration like 10s, 5m, 2h or 30d")
    return float(m.group(1)) * _UNIT[m.group(2)]


@dataclass(frozen=True)
class Tier:
    step: float       # seconds per bucket
    span: float       # seconds kept

    @property
    def slots(self) -> int:
        return max(1, int(round(self.span / self.step)))

    @property
    def nbytes(self) -> int:
        return self.slots * SLOT.size

    @staticmethod
    def parse(text: str) -> "Tier":
        """'10s:1d' -> Tier(10, 86400). Raises ValueError saying what is wrong."""
        step_s, sep, span_s = text.partition(":")
        if not sep:
            raise ValueError(f"{text!r} is not STEP:SPAN like 10s:1d")
        step, span = parse_duration(step_s), parse_duration(span_s)
        if step <= 0 or span < step:
            raise ValueError(f"{text!r}: the step must be > 0 and the span at least one step")
        if span / step > 1_000_000:
            raise ValueError(f"{text!r}: over 1,000,000 buckets; use a coarser step")
        return Tier(step, span)


@dataclass(frozen=True)
class Point:
    t: float          # start of the bucket
    mean: float
    min: float
    max: float
    count: int

    def to_dict(self) -> dict[str, float]:
        return {"t": self.t, "mean": self.mean, "min": self.min, "max": self.max, "count": self.count}


class Ring:
    """The slots of one tier of one metric, over a writable buffer of `tier.nbytes` bytes."""

    def __init__(self, tier: Tier, buf: memoryview) -> None:
        if len(buf) != tier.nbytes:
            raise ValueError(f"a ring of {tier.slots} slots needs {tier.nbytes} bytes, got {len(buf)}")
        self.tier = tier
        self.buf = buf

    def _off(self, bucket: int) -> int:
        return (bucket % self.tier.slots) * SLOT.size

    def get(self, bucket: int) -> tuple[float, float, float, float] | None:
        tag, s, lo, hi, n = SLOT.unpack_from(self.buf, self._off(bucket))
        return (s, lo, hi, n) if tag == bucket + 1 else None

    def add(self, t: float, value: float) -> None:
        bucket = int(t // self.tier.step)
        cur = self.get(bucket)
        if cur is None:
            SLOT.pack_into(self.buf, self._off(bucket), bucket + 1, value, value, value, 1.0)
        else:
            s, lo, hi, n = cur
            SLOT.pack_into(self.buf, self._off(bucket), bucket + 1, s + value, min(lo, value),
                           max(hi, value), n + 1)

    def points(self, since: float, until: float) -> list[Point]:
        step = self.tier.step
        first, last = int(since // step), int(until // step)
        first = max(first, last - self.tier.slots + 1)      # older buckets are gone
        out = []
        for b in range(first, last + 1):
            cur = self.get(b)
            if cur is not None:
                s, lo, hi, n = cur
                out.append(Point(b * step, s / n, lo, hi, int(n)))
        return out


class SeriesSet:
    """All tiers of one metric (finest first)."""

    def __init__(self, rings: Sequence[Ring]) -> None:
        self.rings = sorted(rings, key=lambda r: r.tier.step)

    def record(self, t: float, value: float) -> None:
        if not math.isfinite(value):
            return
        for r in self.rings:
            r.add(t, value)

    def query(self, since: float, until: float, step: float | None, now: float) -> list[Point]:
        """Points in [since, until], each part from the finest tier that still holds it and
        has recorded points there (before a tier's first point the next coarser one answers),
        regrouped into `step`-second buckets (default and minimum: that tier's step).
        Raises SeriesQueryError naming the bad parameter."""
        if not (math.isfinite(since) and math.isfinite(until)):
            raise SeriesQueryError("since", "must be a finite time")
        if since > until:
            raise SeriesQueryError("since", f"{since} is after until {until}")
        if step is not None and not (math.isfinite(step) and step > 0):
            raise SeriesQueryError("step", f"must be a positive number of seconds, got {step}")
        out: list[Point] = []
        hi = until
        seam = math.inf                           # where the finer tiers' points begin
        for r in self.rings:                      # finest first: the newest part from the finest tier
            oldest = (int(now // r.tier.step) - r.tier.slots + 1) * r.tier.step
            lo = max(since, oldest)
            if lo <= hi:
                # a bucket reaching into the finer tiers' points would count their samples twice
                pts = [p for p in r.points(lo, hi) if p.t + r.tier.step <= seam]
                if pts:
                    out[:0] = pts
                    # a tier answers from its first point on: before it (a tier added or widened
                    # by a change of `tiers`, so its file began empty) the next coarser one does
                    seam = pts[0].t
                    hi = seam - 1e-6
            if hi < since:
                break
        out = dedupe(out)
        if step is not None:
            out = regroup(out, step)
        if len(out) > MAX_POINTS:
            raise SeriesQueryError("step", f"the range holds {len(out)} points, over {MAX_POINTS}; "
                                   "use a larger step or a shorter range")
        return out


def regroup(points: list[Point], step: float) -> list[Point]:
    """Merge points into `step`-second buckets (weighted mean, min of mins, max of maxes)."""
    groups: dict[int, list[Point]] = {}
    for p in points:
        groups.setdefault(int(p.t // step), []).append(p)
    out = []
    for b in sorted(groups):
        g = groups[b]
        n = sum(p.count for p in g)
        out.append(Point(b * step, sum(p.mean * p.count for p in g) / n, min(p.min for p in g),
                         max(p.max for p in g), n))
    return out


def dedupe(points: list[Point]) -> list[Point]:
    """Drop a coarse point whose bucket starts where a finer one already does (tier seams)."""
    seen: set[float] = set()
    out = []
    for p in sorted(points, key=lambda p: p.t):
        if p.t not in seen:
            seen.add(p.t)
            out.append(p)
    return out


BufferFactory = Callable[[str, Tier], memoryview]


def memory_buffers(name: str, tier: Tier) -> memoryview:
    """Buffers in memory (sans-IO tests, or history without a data dir)."""
    return memoryview(bytearray(tier.nbytes))
