"""The registry's refusal handling (protocols/registry/refusals.py): an observer over the
observation rate limit is logged at INFO once per observer per minute (with the count held
back), a peer fault is charged, the rest stays at DEBUG; every refusal is counted."""
from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from fognode.protocols.registry.actions import Refused
from fognode.protocols.registry.errors import Rejected, RejectReason
from fognode.protocols.registry.metrics import RegistryMetrics
from fognode.protocols.registry.observation import ObservationBook
from fognode.protocols.registry.refusals import RATE_LOG_INTERVAL, RefusalLog

from .helpers import NOW
from .test_observation import obs, pid


def over_the_rate(book: ObservationBook, observer: str, n: int, now: float) -> list[Refused]:
    """Offer `n` observations by `observer` to `book`; the refusals the core would emit."""
    out = []
    for i in range(n):
        try:
            book.add(obs(observer, f"subject-{i}", evidence=f"{observer}/{now}/{i}".encode()), now)
        except Rejected as e:
            out.append(Refused("observation", e.reason, pid(observer), str(e)))
    return out


def test_rate_refusals_logged_once_per_observer_per_window(caplog: pytest.LogCaptureFixture) -> None:
    metrics = RegistryMetrics.create(CollectorRegistry())
    charged: list[tuple[str, str]] = []
    log = RefusalLog(metrics.rejected, lambda peer, why, protocol: charged.append((peer, protocol)),
                     pid("me"))
    book = ObservationBook(rate_per_minute=60, burst=3)
    refusals = over_the_rate(book, "agg", 12, NOW) + over_the_rate(book, "other", 5, NOW)
    assert [r.reason for r in refusals] == [RejectReason.RATE_LIMITED] * 11
    caplog.set_level(logging.DEBUG, logger="fognode.registry")
    for r in refusals:
        log.refused(r, 100.0)
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 2       # one per observer, not one per refused observation
    assert pid("agg") in info[0] and "over the rate limit" in info[0] and "60 observations/min" in info[0]
    assert pid("other") in info[1]
    assert charged == []        # a rate is nobody's fault
    assert metrics.rejected.labels("observation", "rate_limited")._value.get() == 11
    caplog.clear()
    log.refused(refusals[0], 100.0 + RATE_LOG_INTERVAL)   # the next window: one line, with the count
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 1 and "(8 more since the last line)" in info[0]


def test_peer_faults_charged_and_the_rest_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    metrics = RegistryMetrics.create(CollectorRegistry())
    charged: list[tuple[str, str]] = []
    log = RefusalLog(metrics.rejected, lambda peer, why, protocol: charged.append((peer, protocol)),
                     pid("me"))
    caplog.set_level(logging.DEBUG, logger="fognode.registry")
    log.refused(Refused("observation", RejectReason.BAD_SIGNATURE, pid("bad"), "forged"), 1.0)
    log.refused(Refused("observation", RejectReason.BAD_SIGNATURE, pid("me"), "ours"), 1.0)
    log.refused(Refused("record", RejectReason.DUPLICATE, pid("old"), "seen"), 1.0)
    assert charged == [(pid("bad"), "registry/observation")]
    assert all(r.levelno == logging.DEBUG for r in caplog.records)
    assert metrics.rejected.labels("observation", "bad_signature")._value.get() == 2
