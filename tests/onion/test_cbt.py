"""The adaptive build timeout: the Pareto fit, the 80 % quantile, fallback, reset, persistence."""
from __future__ import annotations

import random

import pytest

from fognode.protocols.onion.cbt import BuildTimeEstimator, CbtParams
from fognode.protocols.onion.errors import OnionStateError


def test_matches_arti_pareto_vector() -> None:
    """Arti's tor-circmgr pareto.rs test: these ten times, 2 modes, no minimum -> 493.169 ms."""
    est = BuildTimeEstimator(CbtParams(min_samples=0, n_modes=2))
    for ms in [300, 500, 542, 305, 543, 307, 212, 203, 617, 413]:
        est.note_built(ms / 1000)
    fit = est.fit()
    assert fit is not None and abs(fit.xm - 0.401) < 1e-9
    assert abs(est.timeout() - 0.493169) < 1e-6
    assert abs(fit.quantile(0.99) - 0.724841) < 1e-6


def test_fit_of_pareto_samples_finds_the_80th_percentile() -> None:
    rng = random.Random(5)
    xm, alpha = 0.3, 3.0
    est = BuildTimeEstimator()
    for _ in range(1000):
        est.note_built(xm / (1 - rng.random()) ** (1 / alpha))
    true_q80 = xm / 0.2 ** (1 / alpha)
    assert not est.learning
    assert abs(est.timeout() - true_q80) / true_q80 < 0.25
    samples = sorted(est.times)
    empirical = samples[int(0.8 * len(samples))]
    assert abs(est.timeout() - empirical) / empirical < 0.25


def test_fallback_until_enough_samples() -> None:
    est = BuildTimeEstimator(CbtParams(initial_timeout=7.0))
    for _ in range(99):
        est.note_built(0.2)
    assert est.learning and est.timeout() == 7.0
    est.note_built(0.2)
    assert not est.learning and est.timeout() < 1.0
    est.note_built(float("nan"))                 # ignored
    assert len(est.times) == 100


def test_censored_timeouts_raise_the_estimate() -> None:
    rng = random.Random(1)
    base, censored = BuildTimeEstimator(), BuildTimeEstimator()
    for _ in range(200):
        t = 0.2 / (1 - rng.random()) ** (1 / 3)
        base.note_built(t)
        censored.note_built(t)
    for _ in range(5):
        censored.note_timeout(2.0)
    assert censored.timeout() > base.timeout()


def test_many_recent_timeouts_reset_and_double_the_fallback() -> None:
    est = BuildTimeEstimator(CbtParams(initial_timeout=1.0))
    for _ in range(18):
        est.note_timeout(1.0)
    assert est.fallback == 1.0
    est.note_timeout(1.0)                        # 19 of the last 19 > 18
    assert est.fallback == 2.0 and not est.times and not est.recent
    for _ in range(19):
        est.note_timeout(2.0)
    assert est.fallback == 4.0
    for _ in range(200):
        est.note_timeout(1.0)
    assert est.fallback == 120.0                 # capped


def test_history_is_capped_and_persists() -> None:
    est = BuildTimeEstimator()
    for i in range(1500):
        est.note_built(0.1 + (i % 50) / 100)
    est.note_timeout(3.0)
    assert len(est.times) == 1000
    other = BuildTimeEstimator()
    other.load(est.to_bytes())
    assert list(other.times) == pytest.approx(list(est.times), abs=1e-3)
    assert other.timeout() == pytest.approx(est.timeout(), rel=1e-2)


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x81\xa1v\x01",
                                  b"\x84\xa1v\x01\xa8times_ms\x91\xff\xabcensored_ms\x90\xa8fallback\x01"])
def test_state_decoder_is_strict(data: bytes) -> None:
    with pytest.raises(OnionStateError, match="build-time state"):
        BuildTimeEstimator().load(data)
