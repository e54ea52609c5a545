"""Marketplace (issue 13; DESIGN.md "Harvest and market"): sans-IO cores and wire messages.

One concern per module, no IO (the trio adapter `protocol.py` comes with the role):
- `errors`: MarketError, ConstraintError, Rejected/RejectReason, RPC codes 3xx.
- `wirecommon`: limits, units, services and the signed-map decode step shared by the codecs.
- `messages`: signed offers, withdrawals, demands and auction bids, one decoder each.
- `agreement`: agreement terms, SLA, the negotiation messages and their decoder.
- `constraints`: the filter language over offer properties (tokenizer, recursive-descent
  parser with limits, evaluation).
- `orderbook`: the gossip-fed order book (expiry, replacement, per-provider cap, eviction).
- `columns`: a column snapshot of the book and vectorised filter evaluation (numpy).
- `matching`: demand matching and ranking (price, reputation, region, latency).
- `auction`: the reverse auction (customer side) and bid making (provider side).
- `negotiation`: proposal / counter / accept state machines, both sides, with timeouts.
- `pricing`: supply, demand, fill ratio, price percentiles and EWMA price suggestions.
- `core`: `MarketCore`, the one state machine the adapter drives (gossip, stream, tick).
- `actions`: what the cores ask the adapter to do; `config`: `[protocols.market]`.

The role (trio, IO):
- `protocol`: `MarketRole`, the adapter (gossip, negotiation streams, clock) and `market.*` RPC.
- `service`: `MarketService`, the dispatch table of the core's actions and the operations.
- `jobwire`: the job stream's messages; `provider` / `customer`: its two sides (escrow,
  blobs, tasks through the harvest executor, replicated results, debit notes); `contracts`:
  this node's agreements; `api`: `MarketApi` for other roles; `events`, `metrics`.
"""
