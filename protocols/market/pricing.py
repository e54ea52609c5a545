"""Market statistics and price suggestions per (region, service) (pure, sans-IO).

For each (region, service) `PriceTracker` keeps the demands and agreements seen in the last
`window` seconds and an EWMA of agreed unit prices (`alpha` per agreement). `stats` combines
them with the offers currently in the order book:

- supply: offers in the book (and their cores); demand: demands seen in the window;
- fill ratio: agreements / demands in the window (0 with no demand; capped at 1);
- price percentiles p10/p50/p90 of the service's reference unit over the book's offers
  (nearest-rank, so always one of the offered prices);
- suggestion (`suggest`): with ``pricing = "fixed"`` the provider's base price; with
  ``"dynamic"`` the reference price (the EWMA of agreed prices, else the book's median, else
  the base) times (demand + 1) / (supply + 1) raised to `elasticity`, kept within
  [`min_factor`, `max_factor`] times the base price, rounded to a micro-unit.

The reference unit per service is `REFERENCE_UNIT` ("fuel" for compute.wasm, "gb_h" for
storage and fog.hosting). Everything is bounded: at most `max_keys` (region, service) pairs
(the least recently updated is forgotten) and `max_events` timestamps per pair.
"""
from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from fognode.ledger.amounts import format_amount
from fognode.protocols.market.messages import Offer

REFERENCE_UNIT = {"compute.wasm": "fuel", "storage": "gb_h", "fog.hosting": "gb_h"}
PRICING_MODES = ("fixed", "dynamic")


def percentile(sorted_values: Sequence[int], q: float) -> int | None:
    """Nearest-rank percentile (q in [0, 100]) of an ascending sequence; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class MarketStats:
    region: str
    service: str
    unit: str
    supply: int                 # offers in the book
    supply_cores: int
    demand: int                 # demands seen in the window
    agreements: int             # agreements seen in the window
    fill_ratio: float
    p10: int | None
    p50: int | None
    p90: int | None
    ewma: float | None          # EWMA of agreed unit prices

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)

    def to_rpc(self) -> dict[str, object]:
        """As `market.stats` shows it: the prices in tokens per `unit`, as offers show theirs
        (p10..p90 and the EWMA are micro-units here; they sat beside token prices)."""
        out = self.to_json()
        for k in ("p10", "p50", "p90", "ewma"):
            v = out[k]
            out[k] = None if v is None else format_amount(round(v))  # type: ignore[call-overload]
        return out


@dataclass
class _Series:
    demands: deque[float] = field(default_factory=deque)
    agreements: deque[float] = field(default_factory=deque)
    ewma: float | None = None
    ewma_others: float | None = None    # over agreements this node did not sell


class PriceTracker:
    def __init__(self, *, window: float = 3600.0, alpha: float = 0.2, elasticity: float = 0.5,
                 min_factor: float = 0.5, max_factor: float = 2.0, max_keys: int = 1024,
                 max_events: int = 10_000) -> None:
        if not 0 < alpha <= 1 or window <= 0 or not 0 < min_factor <= 1 <= max_factor:
            raise ValueError("alpha in (0, 1], window > 0, min_factor <= 1 <= max_factor")
        self.window = window
        self.alpha = alpha
        self.elasticity = elasticity
        self.min_factor = min_factor
        self.max_factor = max_factor
        self.max_keys = max_keys
        self.max_events = max_events
        self._series: OrderedDict[tuple[str, str], _Series] = OrderedDict()

    def _get(self, region: str, service: str) -> _Series:
        key = (region, service)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series(deque(maxlen=self.max_events),
                                            deque(maxlen=self.max_events))
            while len(self._series) > self.max_keys:
                self._series.popitem(last=False)
        self._series.move_to_end(key)
        return s

    def observe_demand(self, region: str, service: str, now: float) -> None:
        self._get(region, service).demands.append(now)

    def observe_agreement(self, region: str, service: str, unit_price: int, now: float, *,
                          ours: bool = False) -> None:
        """An agreement at `unit_price`; `ours` when this node sold it (it then feeds the
        EWMA shown in stats but not the one dynamic pricing follows)."""
        s = self._get(region, service)
        s.agreements.append(now)
        s.ewma = self._ewma(s.ewma, unit_price)
        if not ours:
            s.ewma_others = self._ewma(s.ewma_others, unit_price)

    def _ewma(self, old: float | None, x: int) -> float:
        return float(x) if old is None else old + self.alpha * (x - old)

    def _recent(self, q: deque[float], now: float) -> int:
        while q and q[0] <= now - self.window:
            q.popleft()
        return len(q)

    def stats(self, offers: Iterable[Offer], region: str, service: str, now: float, *,
              own_supply: int = 0, own_agreements: bool = True) -> MarketStats:
        """Statistics over `offers` and what was observed; `own_supply` offers of ours are
        added to the supply, and with `own_agreements` false the EWMA leaves out agreements
        this node sold (the view dynamic pricing takes)."""
        unit = REFERENCE_UNIT[service]
        prices: list[int] = []
        supply, cores = own_supply, 0
        for o in offers:
            if o.service != service or o.region != region or o.valid_until <= now:
                continue
            supply += 1
            cores += o.cores
            p = o.price(unit)
            if p is not None:
                prices.append(p)
        prices.sort()
        s = self._series.get((region, service))
        demand = self._recent(s.demands, now) if s else 0
        agreements = self._recent(s.agreements, now) if s else 0
        fill = min(1.0, agreements / demand) if demand else 0.0
        return MarketStats(region, service, unit, supply, cores, demand, agreements, fill,
                           percentile(prices, 10), percentile(prices, 50),
                           percentile(prices, 90),
                           (s.ewma if own_agreements else s.ewma_others) if s else None)

    def suggest(self, stats: MarketStats, base_price: int, mode: str) -> int:
        """The unit price to offer at (see the module docstring)."""
        if mode not in PRICING_MODES:
            raise ValueError(f"pricing mode must be one of {PRICING_MODES}, got {mode!r}")
        if mode == "fixed":
            return base_price
        ref = stats.ewma if stats.ewma is not None else (
            float(stats.p50) if stats.p50 is not None else float(base_price))
        pressure = ((stats.demand + 1) / (stats.supply + 1)) ** self.elasticity
        price = ref * pressure
        lo, hi = base_price * self.min_factor, base_price * self.max_factor
        return int(round(min(max(price, lo), hi)))
