"""A daemon's Prometheus endpoint read by the benchmarks: every sample of one scrape
(`scrape`), and a histogram's sum and count (`hist`) or a counter (`counter`) as deltas between
two scrapes of the same nodes."""
from __future__ import annotations

import urllib.request
from dataclasses import dataclass

Sample = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class Mean:
    """Sum and count of one histogram's observations (over some nodes, over the session)."""

    total: float
    count: float

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")



def scrape(port: int) -> dict[Sample, float]:
    """Every sample of one daemon's Prometheus endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[Sample, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def hist(before: list[dict[Sample, float]], after: list[dict[Sample, float]], name: str,
         labels: dict[str, str] | None = None) -> Mean:
    """A histogram's sum and count over the given nodes, as deltas between two scrapes."""
    key = frozenset((labels or {}).items())
    total = count = 0.0
    for b, a in zip(before, after):
        total += a.get((name + "_sum", key), 0.0) - b.get((name + "_sum", key), 0.0)
        count += a.get((name + "_count", key), 0.0) - b.get((name + "_count", key), 0.0)
    return Mean(total, count)


def counter(before: list[dict[Sample, float]], after: list[dict[Sample, float]], name: str,
            labels: dict[str, str]) -> float:
    key = frozenset(labels.items())
    return sum(a.get((name, key), 0.0) - b.get((name, key), 0.0) for b, a in zip(before, after))
