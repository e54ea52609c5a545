"""The market role's settings (`[protocols.market]` in node.toml).

The first group drives the sans-IO core (book, negotiation, matching, pricing); the second the
role: where earnings are paid, the debit-note rhythm, escrow timing, job limits, and two
TEST-ONLY fault injectors (`fault_corrupt_output`: a provider that lies about every result;
`fault_withhold_notes`: a customer that never pays; the daemon tests use them; never set them
on a real node).

`validate(source)` raises ConfigError naming the first bad key (`protocols.market.<key>`).
`node.load_config` builds and validates the section from TOML, env and --set like every role's.
"""
from __future__ import annotations

from dataclasses import dataclass

from fognode.ledger.address import is_address
from fognode.node.errors import ConfigError
from fognode.protocols.harvest.wasm_wire import MAX_MODULE
from fognode.protocols.market.pricing import PRICING_MODES


@dataclass(frozen=True)
class MarketConfig:
    max_offers: int = 10_000              # offers the order book holds (fair-share eviction beyond)
    max_offers_per_provider: int = 16     # offers one provider may hold in our book
    max_clock_skew: float = 300.0         # seconds an offer may be issued ahead of our clock
    negotiation_timeout: float = 30.0     # seconds we wait for each negotiation reply
    max_rounds: int = 6                   # proposal + counters before a negotiation fails
    max_negotiations: int = 1024          # open negotiations (both sides)
    max_negotiations_per_peer: int = 8    # open negotiations with one peer
    auction_window: float = 10.0          # seconds providers may bid in a reverse auction
    max_bids: int = 256                   # providers that may bid in one auction
    reputation_floor: float = 0.0         # bids from providers below this reputation lose
    weight_price: float = 0.5             # ranking weight of the price (cheapest = 1)
    weight_reputation: float = 0.3        # ranking weight of the reputation (best = 1)
    weight_region: float = 0.1            # ranking weight of being in our region
    weight_latency: float = 0.1           # ranking weight of the measured latency
    match_snapshot_age: float = 1.0       # seconds matching may work on a snapshot of the book
    pricing: str = "fixed"                # "fixed": offer at base prices; "dynamic": follow the market
    price_ewma_alpha: float = 0.2         # weight of each new agreed price in the EWMA
    price_elasticity: float = 0.5         # exponent of (demand + 1) / (supply + 1) in dynamic pricing
    price_min_factor: float = 0.5         # dynamic prices stay >= this times the base price
    price_max_factor: float = 2.0         # dynamic prices stay <= this times the base price
    reprice_interval: float = 60.0        # seconds between dynamic re-pricings of our offers
    reprice_step: float = 0.05            # re-publish an offer only when its price moves this fraction
    stats_window: float = 3600.0          # seconds of demands and agreements market stats count
    payee: str = ""                       # fog1 wallet of this node earnings are paid to ("": default)
    debit_interval: int = 120             # seconds between a provider's debit notes (Golem: 120)
    debit_deadline: float = 60.0          # seconds a provider waits for a co-signed note before it stops
    escrow_grace: int = 3600              # seconds after an agreement's deadline before the payee may close its escrow
    escrow_wait: float = 30.0             # seconds a provider waits for the customer's escrow to reach its replica
    job_deadline: int = 600               # default seconds from a request to its agreement's deadline
    max_blob_bytes: int = 16_777_216      # largest module or input blob taken over a job stream
    max_tasks: int = 10_000               # tasks one burst may hold
    sla_probe_interval: float = 10.0      # seconds between a customer's SLA probes of a service contract
    sla_max_collateral: int = 100_000_000  # micro-units of collateral this provider locks per service contract at most
    fault_corrupt_output: bool = False    # TEST ONLY fault injector: return a wrong output for every job
    fault_withhold_notes: bool = False    # TEST ONLY fault injector: as a customer, never co-sign a debit note

    def validate(self, source: str) -> None:
        """Raise ConfigError naming the first bad key."""
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(msg, source=source, key=f"protocols.market.{key}")

        if not 1 <= self.max_offers <= 1_000_000:
            raise bad("max_offers", "must be between 1 and 1,000,000")
        if not 1 <= self.max_offers_per_provider <= self.max_offers:
            raise bad("max_offers_per_provider", "must be between 1 and max_offers")
        if not 0 <= self.max_clock_skew <= 86_400:
            raise bad("max_clock_skew", "must be between 0 and 86400 s")
        if not 0.1 <= self.negotiation_timeout <= 3600:
            raise bad("negotiation_timeout", "must be between 0.1 and 3600 s")
        if not 1 <= self.max_rounds <= 100:
            raise bad("max_rounds", "must be between 1 and 100")
        if not 1 <= self.max_negotiations <= 100_000:
            raise bad("max_negotiations", "must be between 1 and 100,000")
        if not 1 <= self.max_negotiations_per_peer <= self.max_negotiations:
            raise bad("max_negotiations_per_peer", "must be between 1 and max_negotiations")
        if not 0.1 <= self.auction_window <= 3600:
            raise bad("auction_window", "must be between 0.1 and 3600 s")
        if not 1 <= self.max_bids <= 10_000:
            raise bad("max_bids", "must be between 1 and 10,000")
        if not 0.0 <= self.reputation_floor <= 1.0:
            raise bad("reputation_floor", "must be between 0 and 1")
        weights = ("weight_price", "weight_reputation", "weight_region", "weight_latency")
        for key in weights:
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise bad(key, "must be between 0 and 1")
        if sum(getattr(self, k) for k in weights) <= 0:
            raise bad("weight_price", "the four ranking weights must not all be 0")
        if not 0.0 <= self.match_snapshot_age <= 60.0:
            raise bad("match_snapshot_age", "must be between 0 and 60 s")
        if self.pricing not in PRICING_MODES:
            raise bad("pricing", f"must be one of {', '.join(PRICING_MODES)}, got {self.pricing!r}")
        if not 0.0 < self.price_ewma_alpha <= 1.0:
            raise bad("price_ewma_alpha", "must be in (0, 1]")
        if not 0.0 <= self.price_elasticity <= 4.0:
            raise bad("price_elasticity", "must be between 0 and 4")
        if not 0.0 < self.price_min_factor <= 1.0:
            raise bad("price_min_factor", "must be in (0, 1]")
        if not 1.0 <= self.price_max_factor <= 100.0:
            raise bad("price_max_factor", "must be between 1 and 100")
        if not 1.0 <= self.reprice_interval <= 86_400:
            raise bad("reprice_interval", "must be between 1 and 86400 s")
        if not 0.0 <= self.reprice_step <= 1.0:
            raise bad("reprice_step", "must be between 0 and 1")
        if not 1.0 <= self.stats_window <= 30 * 86_400:
            raise bad("stats_window", "must be between 1 s and 30 days")
        if self.payee and not is_address(self.payee):
            raise bad("payee", f"must be a fog1 address or empty, got {self.payee[:80]!r}")
        if not 1 <= self.debit_interval <= 86_400:
            raise bad("debit_interval", "must be between 1 and 86400 s")
        if not 0.5 <= self.debit_deadline <= 86_400:
            raise bad("debit_deadline", "must be between 0.5 and 86400 s")
        if not 1 <= self.escrow_grace <= 30 * 86_400:
            raise bad("escrow_grace", "must be between 1 s and 30 days")
        if not 0.5 <= self.escrow_wait <= 3600:
            raise bad("escrow_wait", "must be between 0.5 and 3600 s")
        if not 10 <= self.job_deadline <= 30 * 86_400:
            raise bad("job_deadline", "must be between 10 s and 30 days")
        if not 1024 <= self.max_blob_bytes <= MAX_MODULE:
            raise bad("max_blob_bytes", f"must be between 1024 and {MAX_MODULE}")
        if not 1 <= self.max_tasks <= 1_000_000:
            raise bad("max_tasks", "must be between 1 and 1,000,000")
        if not 0.1 <= self.sla_probe_interval <= 3600:
            raise bad("sla_probe_interval", "must be between 0.1 and 3600 s")
        if not 0 <= self.sla_max_collateral <= 2**63 - 1:
            raise bad("sla_max_collateral", "must be between 0 and 2^63-1 micro-units")
