"""`pricing = "dynamic"` applied to our own offers (MarketCore, sans-IO): the offer asks its base
prices scaled by the suggestion, re-priced on `tick` every `reprice_interval` only when the move
reaches `reprice_step`, within the configured factors, with no feedback through our own asks or
sales; `fixed` never moves; base prices survive re-pricing, withdrawal and republication."""
from __future__ import annotations

from fognode.protocols.market.actions import Publish
from fognode.protocols.market.config import MarketConfig
from fognode.protocols.market.core import OFFERS_TOPIC, MarketCore
from fognode.protocols.market.messages import decode_offer
from tests.market.helpers import NOW, key, offer, peer

BASE = {"fuel": 1000, "cpu_s": 200}


def core(name: str = "p1", **cfg: object) -> MarketCore:
    return MarketCore(key(name), MarketConfig(**cfg), region="eu-west",
                      reputation=lambda p: 0.5, latency=lambda p: None)


def publish(c: MarketCore, now: float = NOW, ttl: int = 3600) -> None:
    c.publish_offer(id="o1", service="compute.wasm", cores=4, memory_mib=1024, disk_mib=0,
                    prices=dict(BASE), uptime_bp=9900, ttl=ttl, now=now)


def asked(c: MarketCore) -> dict[str, int]:
    return dict(c.own["o1"][0].prices)


def republished(actions: list[object]) -> list[dict[str, int]]:
    out = []
    for a in actions:
        if isinstance(a, Publish) and a.topic == OFFERS_TOPIC:
            o = decode_offer(a.data)
            out.append(dict(o.prices))
    return out


def others(c: MarketCore, prices: list[int], first: int = 0) -> None:
    """Other providers' offers in the book at these fuel prices (providers first, first+1...)."""
    for i, p in enumerate(prices, first):
        k = key(f"other{i}")
        assert c.book.add(offer(k, prices={"fuel": p}), NOW) is None


def test_fixed_pricing_asks_the_base_price_whatever_the_market() -> None:
    c = core(pricing="fixed")
    others(c, [5000, 6000])
    for _ in range(20):
        c.pricing.observe_demand("eu-west", "compute.wasm", NOW)
    publish(c)
    assert asked(c) == BASE
    assert republished(c.tick(NOW + 3600)) in ([], [BASE])   # only the half-life republish


def test_demand_raises_the_price_within_the_max_factor_and_scales_every_unit() -> None:
    c = core(pricing="dynamic", price_elasticity=0.5, price_max_factor=2.0)
    publish(c)
    assert asked(c)["fuel"] == 707            # only the base as reference, pressure (1/2) ** 0.5
    for _ in range(15):                       # demand 15 against our supply 1: pressure 8 ** 0.5
        c.pricing.observe_demand("eu-west", "compute.wasm", NOW + 10)
    out = republished(c.tick(NOW + 100))
    assert out, "a move past reprice_step is republished"
    assert out[-1] == {"fuel": 2000, "cpu_s": 400}   # capped at 2 x base, every unit scaled
    assert asked(c) == out[-1]
    assert c.base_prices["o1"] == BASE        # the operator's prices are kept
    idle = core("p2", pricing="dynamic", price_elasticity=0.5)
    publish(idle)
    assert asked(idle) == {"fuel": 707, "cpu_s": 141}
    assert republished(idle.tick(NOW + 100)) == []       # a still market: no move


def test_the_price_follows_other_providers_and_stays_above_the_min_factor() -> None:
    c = core(pricing="dynamic", price_elasticity=0.0)   # no pressure: the reference alone
    others(c, [800, 900, 1100])
    publish(c)
    assert asked(c)["fuel"] == 900            # the others' median, not ours
    cheap = core("p3", pricing="dynamic", price_elasticity=0.0, price_min_factor=0.5)
    others(cheap, [10, 20, 30])
    publish(cheap)
    assert asked(cheap)["fuel"] == 500        # never below 0.5 x base


def test_no_feedback_through_our_own_asks_or_sales() -> None:
    c = core(pricing="dynamic", reprice_interval=10)
    others(c, [1200])
    for _ in range(3):
        c.pricing.observe_demand("eu-west", "compute.wasm", NOW)
    publish(c)
    first = asked(c)["fuel"]
    # our own sales at the asked price do not move the reference dynamic pricing follows
    for _ in range(50):
        c.pricing.observe_agreement("eu-west", "compute.wasm", first, NOW, ours=True)
    for step in range(1, 30):                 # a fixed market: repricing never drifts
        assert republished(c.tick(NOW + 10 * step)) == []
        assert asked(c)["fuel"] == first
    # an agreement somebody else sold does move it
    c.pricing.observe_agreement("eu-west", "compute.wasm", 1800, NOW + 300, ours=False)
    assert republished(c.tick(NOW + 400))
    assert asked(c)["fuel"] > first


def test_small_moves_are_not_republished_and_repricing_waits_for_its_interval() -> None:
    c = core(pricing="dynamic", reprice_interval=60, reprice_step=0.5, price_elasticity=0.0)
    others(c, [1000])
    publish(c)
    assert asked(c)["fuel"] == 1000
    others(c, [1300, 1300], first=1)          # median 1300: a 30 % move, under the 50 % step
    assert republished(c.tick(NOW + 61)) == []
    loose = core("p4", pricing="dynamic", reprice_interval=60, reprice_step=0.05,
                 price_elasticity=0.0)
    others(loose, [1000])
    publish(loose)
    assert republished(loose.tick(NOW + 1)) == []        # first tick re-prices: no move yet
    others(loose, [1300, 1300], first=1)
    assert republished(loose.tick(NOW + 30)) == []       # inside the interval
    assert [p["fuel"] for p in republished(loose.tick(NOW + 62))] == [1300]


def test_withdraw_all_and_republish_keep_the_base_prices() -> None:
    c = core(pricing="dynamic", price_elasticity=0.0)
    others(c, [1500])
    publish(c)
    assert asked(c)["fuel"] == 1500 and c.base_prices["o1"] == BASE
    c.withdraw_all(NOW + 1)
    assert "o1" not in c.base_prices and not c.own
    publish(c, now=NOW + 2)
    assert c.base_prices["o1"] == BASE and asked(c)["fuel"] == 1500
    assert peer(c.key) == c.own["o1"][0].peer
