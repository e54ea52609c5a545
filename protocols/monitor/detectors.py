"""Online anomaly detectors on the sampled series (sans-IO: values and times are passed in).

- `RobustZ`: the score of a value is its distance from the median of the last `window`
  samples in units of their MAD (x 1.4826, so it reads like a z-score on normal data); a
  score over `threshold` is an anomaly. Median and MAD ignore the outliers they look for,
  where a mean and standard deviation would be dragged by them.
- `SeasonalEwma`: for series with a daily cycle. The day is cut into `bins`; each bin keeps an
  exponentially weighted (across days) mean and variance of the values seen at that time of
  day, so 3 a.m. is compared with earlier 3 a.m.s, not with noon. A bin scores only after it
  has seen `warmup_days` earlier days.

Each series has a noise floor (sampled.py): a change of that size scores exactly the
threshold when the series was flat, so a quantised or idle series does not raise alarms.

Both return a score (0 while warming up); `Detectors.observe(metric, t, value)` runs the
right ones for a series and returns the anomalies, at most one per series per `cooldown`
seconds, each with a sentence for the operator.

`Detectors.warm(metric, points)` feeds a series' recorded history to its detectors without
scoring it (at start, from the ring files: core.py `warm_up`), so a restart does not cost the
z-score its window nor the seasonal detector its days; `armed(metric, t)` says which of them
score now.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from statistics import median
from typing import Sequence

MAD_SCALE = 1.4826


@dataclass(frozen=True)
class Anomaly:
    metric: str
    detector: str          # "robust_z" | "seasonal_ewma"
    score: float
    value: float
    expected: float
    at: float
    sentence: str


class RobustZ:
    def __init__(self, window: int = 90, min_points: int = 30, threshold: float = 6.0,
                 floor: float = 0.0) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.min_points = min_points
        self.threshold = threshold
        self.floor = floor

    def score(self, value: float) -> tuple[float, float]:
        """(score, expected) of `value` against the window, then add it to the window."""
        vals = self.values
        out = (0.0, value)
        if len(vals) >= self.min_points:
            med = median(vals)
            mad = median(abs(v - med) for v in vals) * MAD_SCALE
            # a flat series has MAD 0: a change of `floor` (or 1 % of the level) scores the threshold
            spread = max(mad, self.floor / self.threshold, abs(med) * 0.01 / self.threshold, 1e-12)
            out = (abs(value - med) / spread, med)
        vals.append(value)
        return out


class SeasonalEwma:
    """Per time-of-day bin: the bin's mean of each past day, smoothed across days (EWMA), and
    its spread (within the day and from day to day). Scores once a bin has `warmup_days`."""

    def __init__(self, period: float = 86400.0, bins: int = 96, alpha: float = 0.3,
                 warmup_days: int = 2, threshold: float = 5.0, floor: float = 0.0) -> None:
        self.period, self.bins, self.alpha, self.warmup = period, bins, alpha, warmup_days
        self.threshold, self.floor = threshold, floor
        self.mean = [0.0] * bins
        self.var = [0.0] * bins
        self.days = [0] * bins
        self._day = [-1] * bins                  # the day being accumulated in each bin
        self._acc = [(0.0, 0.0, 0)] * bins       # that day's sum, sum of squares, count

    def _fold(self, b: int) -> None:
        s, sq, n = self._acc[b]
        if n == 0:
            return
        m = s / n
        within = max(0.0, sq / n - m * m)
        if self.days[b] == 0:
            self.mean[b], self.var[b] = m, within
        else:
            d = m - self.mean[b]
            a = self.alpha
            self.mean[b] += a * d
            self.var[b] = (1 - a) * (self.var[b] + a * d * d) + a * within
        self.days[b] += 1
        self._acc[b] = (0.0, 0.0, 0)

    def score(self, t: float, value: float) -> tuple[float, float]:
        day = int(t // self.period)
        b = int((t % self.period) / self.period * self.bins)
        if self._day[b] != day:
            self._fold(b)
            self._day[b] = day
        out = (0.0, value)
        if self.days[b] >= self.warmup:
            mu = self.mean[b]
            spread = max(math.sqrt(self.var[b]), self.floor / self.threshold,
                         abs(mu) * 0.05 / self.threshold, 1e-12)
            out = (abs(value - mu) / spread, mu)
        s, sq, n = self._acc[b]
        self._acc[b] = (s + value, sq + value * value, n + 1)
        return out

    def ready(self, t: float) -> bool:
        """Does the bin of time `t` score (has it seen `warmup_days` earlier days)?"""
        b = int((t % self.period) / self.period * self.bins)
        return self.days[b] + (1 if self._day[b] != int(t // self.period) and self._acc[b][2] else 0) >= self.warmup


class Detectors:
    """The detectors of every series; observe() returns the anomalies of one new value."""

    def __init__(self, seasonal: set[str], floors: dict[str, float] | None = None, *, cooldown: float = 600.0, z_threshold: float = 6.0,
                 seasonal_threshold: float = 5.0, window: int = 90) -> None:
        self.seasonal = seasonal
        self.floors = floors or {}
        self.cooldown = cooldown
        self.z_threshold = z_threshold
        self.seasonal_threshold = seasonal_threshold
        self.window = window
        self._z: dict[str, RobustZ] = {}
        self._s: dict[str, SeasonalEwma] = {}
        self._last: dict[str, float] = {}

    def _robust(self, metric: str) -> RobustZ:
        z = self._z.get(metric)
        if z is None:
            z = self._z[metric] = RobustZ(self.window, min(30, self.window), self.z_threshold,
                                         self.floors.get(metric, 0.0))
        return z

    def _seasonal(self, metric: str) -> SeasonalEwma:
        s = self._s.get(metric)
        if s is None:
            s = self._s[metric] = SeasonalEwma(threshold=self.seasonal_threshold, floor=self.floors.get(metric, 0.0))
        return s

    def warm(self, metric: str, recent: Sequence[tuple[float, float]],
             days: Sequence[tuple[float, float]] = ()) -> None:
        """Feed recorded (time, value) points, oldest first, without scoring them: the last
        `window` of `recent` to the z-score's window, `days` (a seasonal series' history, e.g.
        5-minute means) to the seasonal detector."""
        z = self._robust(metric)
        z.values.extend(v for _, v in recent[-self.window:] if math.isfinite(v))
        if metric in self.seasonal:
            s = self._seasonal(metric)
            for t, v in days:
                if math.isfinite(v):
                    s.score(t, v)

    def armed(self, metric: str, t: float) -> list[str]:
        """The detectors that score a value of `metric` at time `t` (warmed up)."""
        out = []
        z = self._z.get(metric)
        if z is not None and len(z.values) >= z.min_points:
            out.append("robust_z")
        s = self._s.get(metric)
        if metric in self.seasonal and s is not None and s.ready(t):
            out.append("seasonal_ewma")
        return out

    def observe(self, metric: str, t: float, value: float) -> list[Anomaly]:
        if not math.isfinite(value):
            return []
        z = self._robust(metric)
        found = []
        score, expected = z.score(value)
        if score > self.z_threshold:
            found.append(Anomaly(metric, "robust_z", score, value, expected, t,
                                 f"{metric} is {value:.4g}, {score:.1f} MADs from its recent median "
                                 f"{expected:.4g}"))
        if metric in self.seasonal:
            s = self._seasonal(metric)
            score, expected = s.score(t, value)
            if score > self.seasonal_threshold:
                found.append(Anomaly(metric, "seasonal_ewma", score, value, expected, t,
                                     f"{metric} is {value:.4g} where {expected:.4g} is usual at this "
                                     f"time of day ({score:.1f} deviations)"))
        if not found or t - self._last.get(metric, -math.inf) < self.cooldown:
            return []
        self._last[metric] = t
        return [max(found, key=lambda a: a.score)]
