"""Per-node Prometheus metrics helpers.

Each node owns its own CollectorRegistry (several nodes may share a test process). A role
instance is recreated when it restarts after a crash, so metrics are created through
`metric()`, which returns the collector already registered under that name instead of failing
on the duplicate. Names: `fognode_<role>_<name>_<unit>`.
"""
from __future__ import annotations

from typing import Any, Sequence, TypeVar

from prometheus_client import CollectorRegistry

C = TypeVar("C")

_CACHE_ATTR = "_fognode_metrics"


def metric(registry: CollectorRegistry, kind: type[C], name: str, doc: str,
           labels: Sequence[str] = (), **kwargs: Any) -> C:
    """Get or create the collector `name` of type `kind` (Counter, Gauge, Histogram...)."""
    cache: dict[str, Any] = registry.__dict__.setdefault(_CACHE_ATTR, {})
    found = cache.get(name)
    if found is not None:
        if not isinstance(found, kind):
            raise TypeError(f"metric {name} exists as {type(found).__name__}, not {kind.__name__}")
        return found
    made = kind(name, doc, list(labels), registry=registry, **kwargs)  # type: ignore[call-arg]
    cache[name] = made
    return made
