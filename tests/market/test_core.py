"""MarketCore end to end in memory: providers publish offers on gossip, a customer requests
(matching + negotiation) or runs a reverse auction, both sides end with the same agreement;
offers are republished before they lapse and withdrawn on suspend; bad gossip is charged."""
from __future__ import annotations

import pytest

from fognode.protocols.market.actions import (Action, AuctionClosed, Concluded, Publish, Refused,
                                              Send)
from fognode.protocols.market.agreement import SLA
from fognode.protocols.market.config import MarketConfig
from fognode.protocols.market.core import DEMANDS_TOPIC, OFFERS_TOPIC, MarketCore
from fognode.protocols.market.errors import MarketError, RejectReason
from tests.market.helpers import NOW, demand, key, peer


class Net:
    """Delivers Publish to every other core and Send to its peer, until quiet."""

    def __init__(self, names: list[str], **cfg: object) -> None:
        self.keys = {n: key(n) for n in names}
        self.peers = {n: peer(k) for n, k in self.keys.items()}
        self.by_peer = {p: n for n, p in self.peers.items()}
        config = MarketConfig(**cfg)
        self.cores = {n: MarketCore(k, config, region="eu-west" if n != "far" else "us-east",
                                    reputation=lambda p: 0.5, latency=lambda p: None)
                      for n, k in self.keys.items()}
        self.outcomes: list[tuple[str, Action]] = []

    def run(self, src: str, actions: list[Action], now: float) -> None:
        queue = [(src, a) for a in actions]
        for _ in range(10_000):
            if not queue:
                return
            frm, a = queue.pop(0)
            if isinstance(a, Publish):
                for n, core in self.cores.items():
                    if n != frm:
                        queue += [(n, x) for x in core.on_gossip(a.topic, self.peers[frm], a.data, now)]
            elif isinstance(a, Send):
                to = self.by_peer[a.peer]
                queue += [(to, x) for x in self.cores[to].on_stream(self.peers[frm], a.data, now)]
            else:
                self.outcomes.append((frm, a))
        raise AssertionError("the network did not settle")

    def offer(self, name: str, price: int, *, id: str = "o1", ttl: int = 600, now: float = NOW,
              cores: int = 4) -> None:
        self.run(name, self.cores[name].publish_offer(
            id=id, service="compute.wasm", cores=cores, memory_mib=4096, disk_mib=1000,
            prices={"fuel": price}, uptime_bp=9900, ttl=ttl, now=now), now)

    def concluded(self) -> list[tuple[str, Concluded]]:
        return [(n, a) for n, a in self.outcomes if isinstance(a, Concluded)]


def test_request_matches_negotiates_and_both_sides_agree() -> None:
    net = Net(["cust", "p1", "p2", "p3", "far"])
    for name, price in [("p1", 12), ("p2", 10), ("p3", 30), ("far", 9), ("cust", 1)]:
        net.offer(name, price)
    assert all(len(c.book) == 5 for c in net.cores.values())
    d = demand(net.keys["cust"], "(region=eu-*)", usage={"fuel": 100}, budget=5000,
               replication=2)
    net.run("cust", net.cores["cust"].request(d, sla=SLA(9900, 500, 10), debit_interval=120,
                                              now=NOW + 1), NOW + 1)
    done = net.concluded()
    providers = sorted(n for n, _ in done if n != "cust")
    assert providers == ["p1", "p2"]          # the two cheapest in eu-* but the customer itself
    by_side: dict[bytes, set[str]] = {}
    for n, c in done:
        assert c.agreement.is_valid()
        by_side.setdefault(c.agreement.agreement_id, set()).add(n)
    assert sorted(map(sorted, by_side.values())) == [["cust", "p1"], ["cust", "p2"]]
    stats = net.cores["cust"].stats("eu-west", "compute.wasm", NOW + 2)
    assert (stats.supply, stats.demand, stats.agreements) == (4, 1, 2)
    assert stats.ewma is not None and 10 <= stats.ewma <= 12
    slow = Net(["cust", "p1"])
    slow.offer("p1", 10)
    d1 = demand(slow.keys["cust"], usage={"fuel": 100}, budget=5000)
    slow.cores["cust"].request(d1, sla=SLA(), debit_interval=60, now=NOW)   # never delivered
    with pytest.raises(MarketError, match="already open"):
        slow.cores["cust"].request(d1, sla=SLA(), debit_interval=60, now=NOW)
    with pytest.raises(MarketError, match="0 offer.*only 0 offer.*pass the filter"):
        net.cores["cust"].request(demand(net.keys["cust"], "(cores>=64)", id="d2"),
                                  sla=SLA(), debit_interval=60, now=NOW + 2)


def test_a_demand_short_of_budget_is_told_what_the_offers_cost() -> None:
    """'0 offer(s) match within the budget, 2 needed' said nothing of why: the refusal now gives
    each replica's share of the budget and what the offers cost for the usage asked."""
    net = Net(["cust", "p1", "p2", "p3"])
    for name, price in [("p1", 20), ("p2", 15), ("p3", 30)]:
        net.offer(name, price)
    short = demand(net.keys["cust"], usage={"fuel": 100}, budget=3000, replication=2)   # 1500 each
    with pytest.raises(MarketError) as e:
        net.cores["cust"].request(short, sla=SLA(), debit_interval=60, now=NOW + 1)
    # the 2 cheapest cost 1500 and 2000 micro-units: a budget of 4000 would do
    assert str(e.value) == ("1 offer(s) match within the budget, 2 needed: the budget gives each of the 2 "
                            "replica(s) 0.0015, and the 2 cheapest offers cost 0.002 at most for this usage "
                            "(a budget of 0.004 would do; or ask for less)")
    net.cores["cust"].request(demand(net.keys["cust"], usage={"fuel": 100}, budget=4000, replication=2,
                                     id="d3"), sla=SLA(), debit_interval=60, now=NOW + 1)


def test_reverse_auction() -> None:
    net = Net(["cust", "p1", "p2", "p3"], auction_window=5.0)
    for name, price in [("p1", 20), ("p2", 15), ("p3", 18)]:
        net.offer(name, price)
    d = demand(net.keys["cust"], usage={"fuel": 100}, budget=4000, replication=2)
    cust = net.cores["cust"]
    net.run("cust", cust.open_auction(d, sla=SLA(9900, 500, 0), debit_interval=60, now=NOW), NOW)
    assert len(cust.auctions[d.demand_id][0].bids) == 3
    net.run("cust", cust.tick(NOW + 4), NOW + 4)
    assert not net.concluded()
    net.run("cust", cust.tick(NOW + 5), NOW + 5)
    closed = [a for _, a in net.outcomes if isinstance(a, AuctionClosed)]
    assert [b.price for b in closed[0].winners] == [1500, 1800]
    winners = sorted(n for n, _ in net.concluded() if n != "cust")
    assert winners == ["p2", "p3"] and not cust.auctions
    ag = next(c.agreement for n, c in net.concluded() if n == "p2")
    assert ag.terms.max_total == 1500
    # a late bid is refused without blame
    acts = cust.on_stream(net.peers["p1"], b"\x82\xa1t\xa3bid\xa6demand\xc4\x20" + d.demand_id,
                          NOW + 6)
    assert acts[0].reason is RejectReason.EXPIRED and not acts[0].reason.charged


def test_republish_and_withdraw_all() -> None:
    net = Net(["a", "b"])
    net.offer("a", 10, ttl=100)
    first = net.cores["b"].book.get(bytes(net.keys["a"].verify_key), "o1")
    net.run("a", net.cores["a"].tick(NOW + 40), NOW + 40)
    assert net.cores["b"].book.get(first.provider, "o1").seq == first.seq   # not yet
    net.run("a", net.cores["a"].tick(NOW + 51), NOW + 51)
    again = net.cores["b"].book.get(first.provider, "o1")
    assert again.seq > first.seq and again.valid_until == int(NOW + 51) + 100
    net.offer("a", 11, id="o2", now=NOW + 52)
    net.run("a", net.cores["a"].withdraw_all(NOW + 53), NOW + 53)
    assert len(net.cores["b"].book) == 0 and not net.cores["a"].own
    with pytest.raises(MarketError, match="no offer 'o1'"):
        net.cores["a"].withdraw_offer("o1", NOW + 54)


def test_bad_gossip_is_charged_and_a_spoofed_demand_refused() -> None:
    net = Net(["a", "b"])
    core = net.cores["a"]
    acts = core.on_gossip(OFFERS_TOPIC, net.peers["b"], b"\x81\xa1v\x01", NOW)
    assert isinstance(acts[0], Refused) and acts[0].reason.charged
    d = demand(net.keys["b"], "(cores>=1)")
    acts = core.on_gossip(DEMANDS_TOPIC, peer(key("mallory")), d.encode(), NOW)
    assert acts[0].reason is RejectReason.SPOOFED_ORIGIN
    hostile = demand(net.keys["b"], id="d9").encode().replace(b"compute.wasm", b"compute.wasX")
    acts = core.on_gossip(DEMANDS_TOPIC, net.peers["b"], hostile, NOW)
    assert acts[0].reason.charged
    acts = core.on_stream(net.peers["b"], b"\xc1", NOW)
    assert acts[0].reason is RejectReason.MALFORMED


def test_suggested_price() -> None:
    net = Net(["a", "b"], pricing="dynamic", price_elasticity=1.0)
    net.offer("b", 40)
    core = net.cores["a"]
    # b prices dynamically too: no other offer, its base 40 * (0 + 1) / (1 + 1) = 20 (at b's
    # floor, 0.5 x 40); a sees b's ask 20 * 1 / 2 = 10, kept within [0.5, 2] x 30 -> 15
    assert dict(net.cores["b"].own["o1"][0].prices) == {"fuel": 20}
    assert core.suggest_price("compute.wasm", 30, NOW) == 15
    assert core.suggest_price("compute.wasm", 16, NOW) == 10
    fixed = Net(["a"]).cores["a"]
    assert fixed.suggest_price("compute.wasm", 30, NOW) == 30
