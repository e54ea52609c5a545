"""Adaptive circuit build timeout (path-spec "Learning when to give up on circuit construction").

Build times of full circuits are kept (the last `max_samples`, 1000 as in Tor) with a 10 ms
histogram. Their right tail is modelled by a Pareto distribution:

- Xm: the weighted mean of the midpoints of the `n_modes` (10) most frequent bins (Tor's
  estimator; build times are closer to Frechet, and several guards make them multi-modal, but
  only the tail matters);
- alpha: the maximum-likelihood estimate with right-censoring: circuits that timed out count
  as survivors past their timeout, alpha = k / (sum over the k completed builds of
  ln(max(x_i, Xm) / Xm) + sum over the timeouts of ln(max(t_j, Xm) / Xm)). (Tor instead counts
  each abandoned circuit as one more build at the largest time observed; the censored MLE is
  the textbook form of the same idea);
- the timeout is the `quantile` (80 %) point of that Pareto: Xm / (1 - q) ^ (1 / alpha),
  never below `min_timeout`.

With fewer than `min_samples` (100) builds the fallback timeout is used (`initial_timeout`).
As in Tor (and Arti's pareto.rs), if more than `reset_after` of the last `recent_len` circuits
timed out the network has changed: the history is cleared, and if the computed timeout was
already at least the fallback, the fallback doubles (up to `max_fallback`).

`to_bytes`/`from_bytes` persist the histogram (msgpack; strict decoder -> OnionStateError).
"""
from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass

import msgpack

from fognode.protocols.onion.errors import OnionStateError

BIN_MS = 10


@dataclass(frozen=True)
class CbtParams:
    initial_timeout: float = 10.0     # seconds, until min_samples builds were seen
    min_samples: int = 100
    max_samples: int = 1000
    quantile: float = 0.8
    n_modes: int = 10
    min_timeout: float = 0.05
    max_fallback: float = 120.0
    recent_len: int = 20
    reset_after: int = 18


@dataclass(frozen=True)
class ParetoFit:
    xm: float          # seconds
    alpha: float

    def quantile(self, q: float) -> float:
        return self.xm / (1.0 - q) ** (1.0 / self.alpha)


class BuildTimeEstimator:
    def __init__(self, params: CbtParams | None = None) -> None:
        self.p = params or CbtParams()
        self.times: deque[float] = deque(maxlen=self.p.max_samples)          # seconds
        self.censored: deque[float] = deque(maxlen=self.p.max_samples)       # timeouts, seconds
        self.recent: deque[bool] = deque(maxlen=self.p.recent_len)           # True: built
        self.fallback = self.p.initial_timeout
        self._cached: float | None = None

    # -- observations --------------------------------------------------------------------------

    def note_built(self, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            return
        self.times.append(seconds)
        self.recent.append(True)
        self._cached = None

    def note_timeout(self, seconds: float) -> None:
        """A circuit gave up after `seconds` (a censored sample)."""
        if not (math.isfinite(seconds) and seconds >= 0):
            return
        self.censored.append(seconds)
        self.recent.append(False)
        self._cached = None
        if sum(1 for ok in self.recent if not ok) > self.p.reset_after:
            current = self.timeout()
            self.times.clear()
            self.censored.clear()
            self.recent.clear()
            if current >= self.fallback:
                self.fallback = min(self.fallback * 2, self.p.max_fallback)
            self._cached = None

    # -- the estimate --------------------------------------------------------------------------

    def histogram(self) -> dict[int, int]:
        """Bin midpoint in ms -> count."""
        return dict(Counter(round(t * 1000) // BIN_MS * BIN_MS + BIN_MS // 2 for t in self.times))

    def fit(self) -> ParetoFit | None:
        if not self.times:
            return None
        modes = sorted(self.histogram().items(), key=lambda kv: (-kv[1], kv[0]))[:self.p.n_modes]
        xm = sum(mid * n for mid, n in modes) / sum(n for _, n in modes) / 1000.0
        xm = max(xm, BIN_MS / 2000.0)
        logs = sum(math.log(max(t, xm) / xm) for t in self.times)
        logs += sum(math.log(max(t, xm) / xm) for t in self.censored)
        if logs <= 0:
            return ParetoFit(xm, math.inf)
        return ParetoFit(xm, len(self.times) / logs)

    def timeout(self) -> float:
        """Seconds to wait for a circuit to build."""
        if self._cached is not None:
            return self._cached
        fit = self.fit() if len(self.times) >= self.p.min_samples else None
        if fit is None:
            value = self.fallback
        elif math.isinf(fit.alpha):
            value = max(fit.xm, self.p.min_timeout)
        else:
            value = max(fit.quantile(self.p.quantile), self.p.min_timeout)
        self._cached = value
        return value

    @property
    def learning(self) -> bool:
        return len(self.times) < self.p.min_samples

    # -- persistence ---------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return msgpack.packb({"v": 1, "times_ms": [round(t * 1000) for t in self.times],
                              "censored_ms": [round(t * 1000) for t in self.censored],
                              "fallback": self.fallback})

    def load(self, data: bytes) -> None:
        try:
            obj = msgpack.unpackb(data, raw=False)
        except Exception as e:
            raise OnionStateError(f"build-time state: not msgpack ({e})") from None
        if not isinstance(obj, dict) or obj.get("v") != 1:
            raise OnionStateError("build-time state: want {'v': 1, ...}")
        for key in ("times_ms", "censored_ms"):
            v = obj.get(key)
            if (not isinstance(v, list) or len(v) > self.p.max_samples
                    or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 86_400_000 for x in v)):
                raise OnionStateError(f"build-time state: {key} must be at most {self.p.max_samples} "
                                      f"non-negative integers (ms)")
        fb = obj.get("fallback")
        if not isinstance(fb, (int, float)) or isinstance(fb, bool) or not 0 < fb <= self.p.max_fallback:
            raise OnionStateError(f"build-time state: fallback must be in (0, {self.p.max_fallback}]")
        self.times = deque((x / 1000 for x in obj["times_ms"]), maxlen=self.p.max_samples)
        self.censored = deque((x / 1000 for x in obj["censored_ms"]), maxlen=self.p.max_samples)
        self.fallback = float(fb)
        self._cached = None
