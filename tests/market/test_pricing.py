"""Market statistics and price suggestions: supply, demand, fill ratio, percentiles, EWMA,
fixed and dynamic pricing within their bounds."""
from __future__ import annotations

import pytest

from fognode.protocols.market.pricing import PriceTracker, percentile
from tests.market.helpers import NOW, key, offer


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([7], 10) == 7
    v = list(range(1, 11))
    assert (percentile(v, 10), percentile(v, 50), percentile(v, 90), percentile(v, 100)) == (1, 5, 9, 10)
    assert percentile(v, 0) == 1


def _offers():
    out = [offer(key(f"p{i}"), prices={"fuel": p}, cores=2) for i, p in enumerate(range(10, 110, 10))]
    out.append(offer(key("us"), prices={"fuel": 1}, region="us-east"))
    out.append(offer(key("st"), prices={"gb_h": 5}, service="storage"))
    out.append(offer(key("old"), prices={"fuel": 1}, ttl=10))
    return out


def test_stats_supply_demand_fill_percentiles() -> None:
    pt = PriceTracker(window=100)
    for i in range(4):
        pt.observe_demand("eu-west", "compute.wasm", NOW + i)
    pt.observe_agreement("eu-west", "compute.wasm", 30, NOW + 5)
    s = pt.stats(_offers(), "eu-west", "compute.wasm", NOW + 20)
    assert (s.supply, s.supply_cores, s.demand, s.agreements) == (10, 20, 4, 1)
    assert s.fill_ratio == 0.25 and (s.p10, s.p50, s.p90) == (10, 50, 90) and s.unit == "fuel"
    assert s.ewma == 30.0
    # market.stats shows them in tokens, as offers' prices are (they were micro-units there)
    shown = s.to_rpc()
    assert (shown["p10"], shown["p50"], shown["p90"], shown["ewma"]) == ("0.00001", "0.00005", "0.00009", "0.00003")
    later = pt.stats(_offers(), "eu-west", "compute.wasm", NOW + 106)
    assert (later.demand, later.agreements, later.fill_ratio) == (0, 0, 0.0)   # out of the window
    st = pt.stats(_offers(), "eu-west", "storage", NOW)
    assert st.unit == "gb_h" and st.p50 == 5 and st.demand == 0 and st.ewma is None
    assert pt.stats([], "nowhere", "fog.hosting", NOW).supply == 0


def test_ewma() -> None:
    pt = PriceTracker(alpha=0.5)
    for p in (100, 200, 200):
        pt.observe_agreement("r", "compute.wasm", p, NOW)
    assert pt.stats([], "r", "compute.wasm", NOW).ewma == 175.0


def test_suggestions() -> None:
    pt = PriceTracker(window=100, elasticity=1.0, min_factor=0.5, max_factor=2.0)
    offers = _offers()
    s = pt.stats(offers, "eu-west", "compute.wasm", NOW + 20)
    assert pt.suggest(s, 40, "fixed") == 40
    # no agreements: the book's median (50) times (0 + 1) / (10 + 1), held at half the base
    assert pt.suggest(s, 40, "dynamic") == 20
    for i in range(21):
        pt.observe_demand("eu-west", "compute.wasm", NOW)
    pt.observe_agreement("eu-west", "compute.wasm", 30, NOW)
    s = pt.stats(offers, "eu-west", "compute.wasm", NOW + 20)
    assert pt.suggest(s, 40, "dynamic") == 60            # 30 * (22 / 11)
    assert pt.suggest(s, 20, "dynamic") == 40            # capped at twice the base
    with pytest.raises(ValueError, match="pricing mode"):
        pt.suggest(s, 40, "surge")


def test_bounded_keys() -> None:
    pt = PriceTracker(max_keys=3, max_events=5)
    for r in range(10):
        for _ in range(8):
            pt.observe_demand(f"r{r}", "compute.wasm", NOW)
    assert len(pt._series) == 3
    assert pt.stats([], "r9", "compute.wasm", NOW).demand == 5
    assert pt.stats([], "r0", "compute.wasm", NOW).demand == 0
