"""The market state machine (sans-IO): the one object the role's trio adapter drives.

It ties the order book, the matcher, the negotiations, the reverse auctions and the price
tracker together with the settings of `MarketConfig`. Inputs, each with `now` (unix s)::

    on_gossip(topic, origin, data, now)   OFFERS_TOPIC: offers and withdrawals -> order book
                                          DEMANDS_TOPIC: auction demands -> we may bid
    on_stream(peer, data, now)            a frame of the market stream: a bid (auction) or a
                                          negotiation message (by its "t" tag)
    tick(now)                             expiry, negotiation timeouts, auction windows,
                                          republishing our offers before they lapse
    publish_offer / withdraw_offer / withdraw_all / request / open_auction / stats / suggest

Outputs are actions (`actions.py`): `Publish`, `Send`, `Refused` (charge when
`reason.charged`), `Concluded` (an agreement both parties signed: escrow is next),
`NegotiationFailed`, `AuctionClosed`, `OffersExpired`. Our own offers carry sequence numbers
max(last + 1, now in ms), so they keep increasing across restarts, and are re-signed and
published again once less than half of their lifetime is left.

`request` matches a demand against the book and opens one negotiation per chosen provider
(`replication` of them, distinct); `open_auction` publishes the demand and, when the window
closes, negotiates with the winners at their bid (the offer's prices, `max_total` = the bid).
Providers bid on demands heard on gossip from their cheapest fitting offer.

Pricing (`MarketConfig.pricing`). The operator's prices are the offer's *base* prices
(`base_prices`). With "fixed" they are what the offer asks. With "dynamic" every unit price is
the base price times one factor: the suggestion for the service's reference unit
(`PriceTracker.suggest`: the reference price times the demand/supply pressure, within
[`price_min_factor`, `price_max_factor`] of the base) divided by its base price. The
suggestion is computed without our own influence: the book's percentiles count other
providers' offers only and the EWMA only agreements we did not sell, while our offers do count
as supply; so a fixed market gives a fixed price, with no feedback through our own asks.
`tick` re-prices every `reprice_interval` seconds and republishes an offer only when its
reference price would move by at least `reprice_step` (a fraction), so a small drift does not
flood the offers topic.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict

from nacl.signing import SigningKey

from fognode.ledger.amounts import format_amount
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import digest, unpack
from fognode.protocols.market.actions import (Action, AuctionClosed, Concluded, Publish, Refused,
                                              Send)
from fognode.protocols.market.agreement import SLA, Terms
from fognode.protocols.market.auction import Auction, make_bid
from fognode.protocols.market.config import MarketConfig
from fognode.protocols.market.errors import MarketError, Rejected, RejectReason
from fognode.protocols.market.matching import Latency, Matcher, Reputation, Weights
from fognode.protocols.market.messages import (MAX_DEMAND_BYTES, Demand, Offer, decode_demand,
                                               sign_offer, sign_withdraw)
from fognode.protocols.market.negotiation import (Negotiations, Policy, customer_policy,
                                                  provider_policy, terms_for)
from fognode.protocols.market.orderbook import OrderBook
from fognode.protocols.market.pricing import REFERENCE_UNIT, MarketStats, PriceTracker

OFFERS_TOPIC = "fognode/market/offers/1"
DEMANDS_TOPIC = "fognode/market/demands/1"
MAX_AUCTIONS = 64            # our open auctions
MAX_SEEN_DEMANDS = 4096      # demand ids heard on gossip (we bid once per demand)
BID_VALIDITY = 60.0          # seconds a bid stays valid past the auction window's end


class MarketCore:
    def __init__(self, key: SigningKey, config: MarketConfig, *, region: str,
                 reputation: Reputation, latency: Latency) -> None:
        self.key = key
        self.pubkey = bytes(key.verify_key)
        self.config = config
        self.region = region
        self.reputation = reputation
        self.book = OrderBook(max_offers=config.max_offers,
                              max_per_provider=config.max_offers_per_provider,
                              max_clock_skew=config.max_clock_skew)
        self.matcher = Matcher(self.book, reputation=reputation, latency=latency,
                               weights=Weights(config.weight_price, config.weight_reputation,
                                               config.weight_region, config.weight_latency),
                               home_region=region, snapshot_age=config.match_snapshot_age)
        self.negotiations = Negotiations(key, timeout=config.negotiation_timeout,
                                         max_rounds=config.max_rounds,
                                         provider_policy_for=self._policy_for,
                                         max_active=config.max_negotiations,
                                         max_per_peer=config.max_negotiations_per_peer)
        self.pricing = PriceTracker(window=config.stats_window, alpha=config.price_ewma_alpha,
                                    elasticity=config.price_elasticity,
                                    min_factor=config.price_min_factor,
                                    max_factor=config.price_max_factor)
        self.own: dict[str, tuple[Offer, int]] = {}          # offer id -> (offer, ttl)
        self.base_prices: dict[str, dict[str, int]] = {}     # offer id -> the operator's prices
        self._repriced_at = float("-inf")
        self._last_seq = 0
        self.auctions: dict[bytes, tuple[Auction, SLA, int]] = {}
        self._seen_demands: OrderedDict[bytes, None] = OrderedDict()

    # ---- provider: our offers ---------------------------------------------------------------

    def _next_seq(self, now: float) -> int:
        self._last_seq = max(self._last_seq + 1, int(now * 1000))
        return self._last_seq

    def publish_offer(self, *, id: str, service: str, cores: int, memory_mib: int, disk_mib: int,
                      prices: dict[str, int], uptime_bp: int, ttl: int, now: float) -> list[Action]:
        """Sign and publish an offer (a new one, or a new version of offer `id`) at `prices`,
        its base prices (the offer asks them, or the dynamic prices derived from them)."""
        offer = sign_offer(self.key, id=id, seq=self._next_seq(now), service=service, cores=cores,
                           memory_mib=memory_mib, disk_mib=disk_mib, region=self.region,
                           prices=self.priced(service, prices, now, adding=id not in self.own),
                           uptime_bp=uptime_bp,
                           issued=int(now), valid_until=int(now) + ttl)
        problem = self.book.add(offer, now)
        if problem is not None:
            raise MarketError(f"offer {id!r} refused by our own book: {problem[1]}")
        self.own[id] = (offer, ttl)
        self.base_prices[id] = dict(prices)
        return [Publish(OFFERS_TOPIC, offer.encode())]

    def withdraw_offer(self, id: str, now: float) -> list[Action]:
        if id not in self.own:
            raise MarketError(f"no offer {id!r} of ours")
        del self.own[id]
        self.base_prices.pop(id, None)
        w = sign_withdraw(self.key, id=id, seq=self._next_seq(now), issued=int(now))
        self.book.withdraw(w, now)
        return [Publish(OFFERS_TOPIC, w.encode())]

    def withdraw_all(self, now: float) -> list[Action]:
        """Take every offer of ours off the market (the harvest policy suspended us)."""
        out: list[Action] = []
        for oid in list(self.own):
            out += self.withdraw_offer(oid, now)
        return out

    def _policy_for(self, terms: Terms) -> Policy | None:
        held = self.own.get(terms.offer)
        return provider_policy(held[0]) if held is not None else None

    # ---- customer: requests and auctions ----------------------------------------------------

    def _negotiate(self, demand: Demand, offer: Offer, sla: SLA, debit_interval: int,
                   now: float, max_total: int | None = None) -> list[Action]:
        nonce = digest(demand.demand_id + offer.provider + offer.id.encode())[:16]
        terms = terms_for(demand, offer, nonce=nonce, now=now, sla=sla,
                          debit_interval=debit_interval)
        if max_total is not None:
            terms = dataclasses.replace(terms, max_total=max_total)
        if (offer.peer, nonce) in self.negotiations.active:
            raise MarketError(f"a negotiation for demand {demand.id!r} with offer {offer.id!r} "
                              "is already open")
        policy = customer_policy(demand.per_replica_budget, sla.uptime_bp)
        return self.negotiations.start(offer.peer, terms, policy, now)

    def request(self, demand: Demand, *, sla: SLA, debit_interval: int,
                now: float) -> list[Action]:
        """Match `demand` against the book and negotiate with the best `replication`
        providers; MarketError when fewer match."""
        if demand.customer != self.pubkey:
            raise MarketError("the demand is not signed by this node")
        self.pricing.observe_demand(self.region, demand.service, now)
        matches = [m for m in self.matcher.match(demand, now, limit=demand.replication + 1)
                   if m.offer.provider != self.pubkey][:demand.replication]   # not ourselves
        if len(matches) < demand.replication:
            raise MarketError(self._no_match(demand, len(matches), now))
        out: list[Action] = []
        for m in matches:
            out += self._negotiate(demand, m.offer, sla, debit_interval, now)
        return out

    def _no_match(self, demand: Demand, matched: int, now: float) -> str:
        """Why `demand` matched `matched` offers, fewer than it needs: too few pass its filter,
        or the budget (split evenly between the replicas) is short of the offers' prices."""
        n = demand.replication
        costs = self.matcher.costs_beyond_budget(demand, now, exclude=self.pubkey)
        head = f"{matched} offer(s) match within the budget, {n} needed"
        if len(costs) < n:
            return (f"{head}: only {len(costs)} offer(s) of other providers pass the filter and price "
                    f"what the demand uses")
        return (f"{head}: the budget gives each of the {n} replica(s) {format_amount(demand.per_replica_budget)}, "
                f"and the {n} cheapest offers cost {format_amount(costs[n - 1])} at most for this usage "
                f"(a budget of {format_amount(costs[n - 1] * n)} would do; or ask for less)")

    def open_auction(self, demand: Demand, *, sla: SLA, debit_interval: int,
                     now: float) -> list[Action]:
        """Publish `demand` for bids; the window closes `auction_window` s from now."""
        if demand.customer != self.pubkey:
            raise MarketError("the demand is not signed by this node")
        if len(self.auctions) >= MAX_AUCTIONS:
            raise MarketError(f"{MAX_AUCTIONS} auctions are already open")
        self.pricing.observe_demand(self.region, demand.service, now)
        auction = Auction(demand, opens=now, window=self.config.auction_window,
                          reputation=self.reputation,
                          reputation_floor=self.config.reputation_floor,
                          max_bids=self.config.max_bids)
        self.auctions[demand.demand_id] = (auction, sla, debit_interval)
        return [Publish(DEMANDS_TOPIC, demand.encode())]

    def _auction_closed(self, closed: AuctionClosed, now: float) -> list[Action]:
        auction, sla, debit_interval = self.auctions.pop(closed.demand)
        # the winners' offers are looked up in our book (a winner whose offer left it is skipped)
        out: list[Action] = [closed]
        for bid in closed.winners:
            offer = self.book.get(bid.provider, bid.offer)
            if offer is not None:
                out += self._negotiate(auction.demand, offer, sla, debit_interval, now,
                                       max_total=bid.price)
        return out

    # ---- from the network -------------------------------------------------------------------

    def on_gossip(self, topic: str, origin: str, data: bytes, now: float) -> list[Action]:
        if topic == OFFERS_TOPIC:
            return self.book.receive(origin, data, now)
        if topic == DEMANDS_TOPIC:
            return self._on_demand(origin, data, now)
        return []

    def _on_demand(self, origin: str, data: bytes, now: float) -> list[Action]:
        try:
            demand = decode_demand(data, peer=origin)
        except Rejected as e:
            return [Refused("demand", e.reason, origin, str(e))]
        if demand.peer != origin:
            return [Refused("demand", RejectReason.SPOOFED_ORIGIN, origin,
                            f"demand signed by {demand.peer} arrived from origin {origin}")]
        did = demand.demand_id
        if did in self._seen_demands or demand.deadline <= now or demand.customer == self.pubkey:
            return []
        self._seen_demands[did] = None
        while len(self._seen_demands) > MAX_SEEN_DEMANDS:
            self._seen_demands.popitem(last=False)
        self.pricing.observe_demand(self.region, demand.service, now)
        bids = [b for o, _ in self.own.values()
                if (b := make_bid(self.key, o, demand, seq=self._next_seq(now), now=now,
                                  valid_for=self.config.auction_window + BID_VALIDITY))]
        if not bids:
            return []
        best = min(bids, key=lambda b: (b.price, b.offer))
        return [Send(demand.peer, best.encode())]

    def on_stream(self, peer: str, data: bytes, now: float) -> list[Action]:
        """A frame of the market stream from `peer`: a bid or a negotiation message."""
        try:
            raw = unpack(data, max_size=MAX_DEMAND_BYTES, what="market stream frame")
        except RemoteProtocolError as e:
            return [Refused("negotiation", RejectReason.MALFORMED, peer, str(e))]
        if isinstance(raw, dict) and raw.get("t") == "bid":
            demand_id = raw.get("demand")
            held = self.auctions.get(demand_id) if isinstance(demand_id, bytes) else None
            if held is None:
                return [Refused("bid", RejectReason.EXPIRED, peer,
                                "bid for an auction we do not hold (closed or unknown)")]
            return held[0].receive(peer, data, now)
        return self._observe(self.negotiations.receive(peer, data, now), now)

    def _observe(self, actions: list[Action], now: float) -> list[Action]:
        """Feed concluded agreements to the price tracker."""
        for a in actions:
            if isinstance(a, Concluded):
                t = a.agreement.terms
                price = dict(t.prices).get(REFERENCE_UNIT[t.service])
                offer = self.book.get(t.provider, t.offer)
                if price is not None and offer is not None:
                    self.pricing.observe_agreement(offer.region, t.service, price, now,
                                                   ours=t.provider == self.pubkey)
        return actions

    # ---- time -------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = list(self.book.tick(now))
        out += self._observe(self.negotiations.tick(now), now)
        for auction, _, _ in list(self.auctions.values()):
            for a in auction.tick(now):
                out += self._auction_closed(a, now) if isinstance(a, AuctionClosed) else [a]
        reprice = (self.config.pricing == "dynamic"
                   and now - self._repriced_at >= self.config.reprice_interval)
        if reprice:
            self._repriced_at = now
        for oid, (offer, ttl) in list(self.own.items()):
            base = self.base_prices.get(oid, dict(offer.prices))
            if offer.valid_until - now < ttl / 2 or (reprice and self._moved(offer, base, now)):
                out += self.publish_offer(id=oid, service=offer.service, cores=offer.cores,
                                          memory_mib=offer.memory_mib, disk_mib=offer.disk_mib,
                                          prices=base, uptime_bp=offer.uptime_bp, ttl=ttl,
                                          now=now)
        return out

    def _moved(self, offer: Offer, base: dict[str, int], now: float) -> bool:
        """Whether re-pricing would move `offer`'s reference price by `reprice_step` or more."""
        unit = REFERENCE_UNIT[offer.service]
        current = offer.price(unit)
        new = self.priced(offer.service, base, now).get(unit)
        if current is None or new is None:
            return False
        return abs(new - current) >= self.config.reprice_step * max(current, 1)

    # ---- statistics -------------------------------------------------------------------------

    def stats(self, region: str, service: str, now: float) -> MarketStats:
        return self.pricing.stats(self.book, region, service, now)

    def suggest_price(self, service: str, base_price: int, now: float, *,
                      adding: bool = False) -> int:
        """The unit price to offer `service` at here (`pricing` = fixed | dynamic), judged
        without our own influence (see the module docstring); `adding`: one more offer of
        ours is about to join the supply."""
        others = (o for o in self.book if o.provider != self.pubkey)
        ours = adding + sum(1 for o, _ in self.own.values()
                            if o.service == service and o.valid_until > now)
        view = self.pricing.stats(others, self.region, service, now, own_supply=ours,
                                  own_agreements=False)
        return self.pricing.suggest(view, base_price, self.config.pricing)

    def priced(self, service: str, prices: dict[str, int], now: float, *,
               adding: bool = False) -> dict[str, int]:
        """The prices an offer of `service` with base `prices` asks now: the base prices, or
        under dynamic pricing each scaled by the reference unit's suggested factor."""
        base = prices.get(REFERENCE_UNIT[service])
        if self.config.pricing == "fixed" or not base:
            return dict(prices)
        factor = self.suggest_price(service, base, now, adding=adding) / base
        return {unit: int(round(p * factor)) for unit, p in prices.items()}


