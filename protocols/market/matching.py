"""Match a demand against the order book and rank the offers (sans-IO, local).

An offer is a candidate when it sells the demand's service, is still valid, passes the
demand's constraint filter, prices every unit the demand uses, and one replica's cost (price
times estimated usage, `Demand.cost`) fits the per-replica budget (budget // replication).

Ranking (higher is better), with weights from `Weights` (defaults in parentheses)::

    score = w_price (0.5)      * cheapest candidate's cost / this cost (1.0 when the cost is 0)
          + w_reputation (0.3) * reputation(provider) / best reputation among the candidates
          + w_region (0.1)     * 1 if the offer's region is `home_region` else 0
          + w_latency (0.1)    * 1 / (1 + latency_ms / 100), 0 when latency is unknown

`reputation(peer_id) -> float >= 0` is injected (EigenTrust global trust from the registry
later) and so is `latency(peer_id) -> float | None` (measured round-trip in ms). Ties break
on the lower cost, then the (provider key, offer id) order, so every node ranks alike. One
result per provider (its best offer): replicas must run on distinct providers.

`Matcher` evaluates the filter on a column snapshot of the book (`columns.py`, rebuilt when
the book's `version` changes) and scores candidates with numpy; `match_linear` is the plain
per-offer reference (and the benchmark's baseline); both return the same list. numpy (and
columns.py) are imported by the first snapshot build, not with this module, so a daemon's start
does not pay for them. A build is tens of ms at thousands of offers: the adapter asks
`Matcher.rebuild_due` before a match and, when due, runs `build_columns` (pure) in a worker
thread and hands the result to `Matcher.install`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from fognode.protocols.market.messages import Demand, Offer
from fognode.protocols.market.orderbook import OrderBook
from fognode.protocols.market.wirecommon import MAX_PRICE

if TYPE_CHECKING:   # numpy (and columns.py, which needs it) load at a Matcher's first use, not
    import numpy as np   # with the role's modules: a daemon's start does not pay for them

    from fognode.protocols.market.columns import Columns

Reputation = Callable[[str], float]
Latency = Callable[[str], "float | None"]


@dataclass(frozen=True)
class Weights:
    price: float = 0.5
    reputation: float = 0.3
    region: float = 0.1
    latency: float = 0.1


@dataclass(frozen=True)
class Match:
    offer: Offer
    cost: int                 # one replica, micro-units
    score: float


def _no_reputation(peer: str) -> float:
    return 0.0


def _no_latency(peer: str) -> float | None:
    return None


def _latency_score(ms: float | None) -> float:
    return 0.0 if ms is None or ms < 0 else 1.0 / (1.0 + ms / 100.0)


def _pick(order: Iterable[int], providers: list[bytes], limit: int | None) -> list[int]:
    seen: set[bytes] = set()
    out: list[int] = []
    for i in order:
        if providers[i] in seen:
            continue
        seen.add(providers[i])
        out.append(i)
        if limit is not None and len(out) >= limit:
            break
    return out


def match_linear(offers: Iterable[Offer], demand: Demand, now: float, *,
                 reputation: Reputation = _no_reputation, latency: Latency = _no_latency,
                 weights: Weights = Weights(), home_region: str = "",
                 limit: int | None = None) -> list[Match]:
    """The reference matcher: every offer checked one by one."""
    budget = demand.per_replica_budget
    cands: list[tuple[Offer, int]] = []
    for o in sorted(offers, key=lambda o: o.key):
        if o.service != demand.service or o.valid_until <= now:
            continue
        if not demand.filter.matches(o.properties()):
            continue
        cost = demand.cost(o)
        if cost is None or cost > budget:
            continue
        cands.append((o, cost))
    if not cands:
        return []
    min_cost = min(c for _, c in cands)
    reps = {o.peer: max(0.0, float(reputation(o.peer))) for o, _ in cands}
    best_rep = max(reps.values())
    scored = []
    for i, (o, cost) in enumerate(cands):
        p = 1.0 if cost == 0 else float(min_cost) / float(cost)
        r = reps[o.peer] / best_rep if best_rep > 0 else 0.0
        g = 1.0 if home_region and o.region == home_region else 0.0
        lat = _latency_score(latency(o.peer))
        s = weights.price * p + weights.reputation * r + weights.region * g + weights.latency * lat
        scored.append((-s, cost, i))
    scored.sort()
    score = {i: -neg for neg, _, i in scored}
    picked = _pick([i for _, _, i in scored], [o.provider for o, _ in cands], limit)
    return [Match(cands[i][0], cands[i][1], score[i]) for i in picked]


def build_columns(offers: Iterable[Offer]) -> dict[str, Columns]:
    """A column snapshot per service of `offers`; pure (a worker thread may run it). The first
    call imports numpy and columns.py."""
    from fognode.protocols.market.columns import Columns

    by_service: dict[str, list[Offer]] = {}
    for o in offers:
        by_service.setdefault(o.service, []).append(o)
    return {s: Columns(v) for s, v in by_service.items()}


class Matcher:
    """Matches demands against `book` on a cached column snapshot (one per service).

    The snapshot is rebuilt when the book changed and it is at least `snapshot_age` seconds
    old (0: on every change). Between rebuilds a match never returns an offer that has left
    the book or been replaced since (each candidate is checked against the live book), but
    does not see offers that arrived since (rows whose key changed are marked dead from the
    book's change log, `OrderBook.changes_since`): matching sees the book as of at most
    `snapshot_age` seconds ago. Gossip changes a large book several times a second, and a
    rebuild costs about as much as a linear scan (tools/bench/market.py), so rebuilding on
    every change would throw the snapshot's advantage away.

    Reputation and latency are read once per provider and kept for `score_ttl` seconds of
    `now` (EigenTrust recomputes every 30 s by default); with `score_ttl` = 0 they are read
    for every demand, for the candidate providers only."""

    def __init__(self, book: OrderBook, *, reputation: Reputation = _no_reputation,
                 latency: Latency = _no_latency, weights: Weights = Weights(),
                 home_region: str = "", score_ttl: float = 10.0,
                 snapshot_age: float = 1.0) -> None:
        self.book = book
        self.reputation = reputation
        self.latency = latency
        self.weights = weights
        self.home_region = home_region
        self.score_ttl = score_ttl
        self.snapshot_age = snapshot_age
        self._version = -1          # the book version the snapshot was built from
        self._applied = -1          # the book version whose changes `dead` reflects
        self._built_at = float("-inf")
        self._cols: dict[str, Columns] = {}
        self._scores: dict[str, tuple[float, np.ndarray, np.ndarray]] = {}

    def rebuild_due(self, now: float) -> bool:
        """Whether a match at `now` would rebuild the snapshot (class docstring)."""
        return self._version != self.book.version and (
            self.book.changes_since(self._applied) is None
            or not 0 <= now - self._built_at < self.snapshot_age)

    def install(self, cols: dict[str, Columns], version: int, now: float | None) -> None:
        """Use `cols` (`build_columns` of the book at `version`) as the snapshot taken at `now`;
        the book's changes since `version` are applied at the next match. An older build than
        the one held is dropped."""
        if version < self._version:
            return
        self._cols, self._scores = cols, {}
        self._version = self._applied = version
        self._built_at = now if now is not None else float("-inf")

    def columns(self, service: str, now: float | None = None) -> Columns:
        """The snapshot of `service` (rebuilt as the class docstring says; `now` None: rebuild
        on any change)."""
        from fognode.protocols.market.columns import Columns

        stale = self._version != self.book.version
        changes = self.book.changes_since(self._applied) if stale else []
        if stale and (now is None or changes is None
                      or not 0 <= now - self._built_at < self.snapshot_age):
            self.install(build_columns(self.book), self.book.version, now)
        elif changes:
            for key in changes:
                for cols in self._cols.values():
                    row = cols.row_of.get(key)
                    if row is not None:
                        cols.dead[row] = True
            self._applied = self.book.version
        return self._cols.get(service) or Columns([])

    def _provider_scores(self, service: str, cols: Columns, codes: np.ndarray,
                         now: float) -> tuple[np.ndarray, np.ndarray]:
        """(reputation, latency score) per row of `codes` (provider codes)."""
        import numpy as np

        if self.score_ttl <= 0:
            uniq, inv = np.unique(codes, return_inverse=True)
            peers = [cols.providers[u] for u in uniq]
            reps = np.array([max(0.0, float(self.reputation(p))) for p in peers])
            lats = np.array([_latency_score(self.latency(p)) for p in peers])
            return reps[inv], lats[inv]
        cached = self._scores.get(service)
        if cached is None or now - cached[0] >= self.score_ttl or now < cached[0]:
            reps = np.array([max(0.0, float(self.reputation(p))) for p in cols.providers])
            lats = np.array([_latency_score(self.latency(p)) for p in cols.providers])
            cached = self._scores[service] = (now, reps, lats)
        return cached[1][codes], cached[2][codes]

    def _eligible(self, cols: Columns, demand: Demand, now: float) -> np.ndarray:
        """The rows whose live offer passes `demand`'s filter and prices every unit it uses."""
        mask = cols.mask(demand.filter.root)
        mask &= cols.valid_until > now
        mask &= ~cols.dead
        for unit, qty in demand.usage:
            if qty:
                mask &= cols.has_price[unit]
        return mask

    def match(self, demand: Demand, now: float, limit: int | None = None) -> list[Match]:
        import numpy as np

        cols = self.columns(demand.service, now)
        if cols.n == 0:
            return []
        mask = self._eligible(cols, demand, now)
        used = [(u, q) for u, q in demand.usage if q]
        budget = demand.per_replica_budget
        if sum(q for _, q in used) * MAX_PRICE < 2**62:      # int64 cannot overflow: exact
            cost = np.zeros(cols.n, dtype=np.int64)
            for unit, qty in used:
                cost += cols.int_price[unit] * qty
            mask &= cost <= budget
            idx = np.flatnonzero(mask)
            costs = cost[idx]
        else:                                                 # huge quantities: Python ints
            idx = np.flatnonzero(mask)
            exact = [demand.cost(cols.offers[i]) for i in idx]
            keep = [k for k, c in enumerate(exact) if c is not None and c <= budget]
            idx, costs = idx[keep], np.array([exact[k] for k in keep], dtype=object)
        if not len(idx):
            return []
        return self._rank(demand.service, cols, idx, costs, now, limit)

    def costs_beyond_budget(self, demand: Demand, now: float, *, exclude: bytes) -> list[int]:
        """What one replica would cost at each live offer that passes `demand`'s filter and
        prices every unit it uses, whatever its budget, cheapest first (providers `exclude`d:
        the customer's own): why a demand matched too few offers. Off the hot path."""
        import numpy as np

        cols = self.columns(demand.service, now)
        if cols.n == 0:
            return []
        offers = [cols.offers[i] for i in np.flatnonzero(self._eligible(cols, demand, now))]
        return sorted(c for o in offers if o.provider != exclude and (c := demand.cost(o)) is not None)

    def _rank(self, service: str, cols: Columns, idx: np.ndarray, costs: np.ndarray, now: float,
              limit: int | None) -> list[Match]:
        """`costs` are exact (int64, or Python ints in an object array)."""
        import numpy as np

        w = self.weights
        c = costs.astype(float) if costs.dtype != object else np.array([float(x) for x in costs])
        min_cost = float(costs.min())
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(c == 0, 1.0, min_cost / c)
        pcodes = cols.provider_codes[idx]
        reps, lats = self._provider_scores(service, cols, pcodes, now)
        best = reps.max()
        r = reps / best if best > 0 else np.zeros(len(idx))
        if self.home_region:
            rc = cols.text["region"]
            home = np.array([v == self.home_region for v in rc.values])[rc.codes[idx]]
            g = home.astype(float)
        else:
            g = np.zeros(len(idx))
        # same operation order as match_linear, so the floats (and the ranking) are identical
        s = w.price * p + w.reputation * r + w.region * g + w.latency * lats
        order = np.lexsort((idx, c, -s))
        # one row per provider: its first (best) row in ranking order
        _, first = np.unique(pcodes[order], return_index=True)
        picked = order[np.sort(first)]
        if limit is not None:
            picked = picked[:limit]
        return [Match(cols.offers[idx[k]], int(costs[k]), float(s[k])) for k in picked]
