"""SLA monitoring of a service contract on a real 4-node devnet (`fognode run` processes, RPC over
the unix socket).

Node 1 offers `fog.hosting` priced per GB-hour; node 0 buys it for about a minute with an SLA
(75 % of probes answered within 2 s in every 6-second window, 1 token per breached window from
2.5 tokens of collateral; node 1 risks at most 3 tokens, so a first request asking 5 is refused
before anything is escrowed). Once the first windows are judged compliant, node 1 is frozen
(SIGSTOP) until the customer has judged two windows breached, then thawed (SIGCONT). After the
deadline the customer slashes each breached window with a witness-signed breach report and
refunds the rest: the escrow's `slashed` is exactly min(penalty x breached windows, collateral),
every balance moves exactly by the escrow's payouts, slashes and fees, the provider's reputation
for `market.service` gets a bad outcome, and `ledger.verify` passes on every node.
"""
from __future__ import annotations

import os
import signal
from decimal import Decimal
from typing import Any

import pytest

from fognode.node.errors import RpcError
from fognode.tools.devnet import Devnet, DevnetNode, wait_until

pytestmark = pytest.mark.slow

FEE = 1000                  # micro-units (genesis fee 0.001)
SECONDS = 60
WINDOW = 6
SETTINGS = ["--set", "protocols.market.debit_interval=3", "--set", "protocols.market.debit_deadline=40",
            "--set", "protocols.market.escrow_wait=20", "--set", "protocols.market.sla_probe_interval=0.5",
            "--set", "protocols.registry.eigentrust_interval=1"]


def micro(text: str) -> int:
    return int(Decimal(text) * 1_000_000)


def balance(n: DevnetNode, address: str) -> int:
    return micro(n.rpc("wallet.balance", {"address": address})["balance"])


def test_a_frozen_provider_breaches_its_sla_and_its_collateral_is_slashed(node_factory: Any) -> None:
    net: Devnet = node_factory(4, extra_args=SETTINGS, start=False)
    net.nodes[1].args = ["--set", "protocols.market.sla_max_collateral=3000000"]
    net.start_all(timeout=90)
    c, p = net.nodes[0], net.nodes[1]
    p.rpc("market.offer", {"id": "host", "service": "fog.hosting", "price": "0", "price_gb_h": "4"})
    wait_until(lambda: c.rpc("market.offers", {"filter": "(service=fog.hosting)"}) or None,
               timeout=90, what="the hosting offer in the customer's book")
    wallet = {n.index: n.rpc("wallet.address")["address"] for n in (c, p)}
    before = {i: balance(c, a) for i, a in wallet.items()}

    terms = {"service": "fog.hosting", "budget": "4", "seconds": SECONDS, "gb_hours": 1, "uptime": 75,
             "max_response_ms": 2000, "penalty": "1", "window": WINDOW}
    with pytest.raises(RpcError) as refused:           # more collateral than the provider risks
        c.rpc("market.service", {**terms, "collateral": "5"}, timeout=90)
    assert refused.value.code == 305 and "sla_max_collateral" in str(refused.value), refused.value
    assert balance(c, wallet[0]) == before[0]          # refused before any escrow was opened

    view = c.rpc("market.service", {"service": "fog.hosting", "budget": "4", "seconds": SECONDS,
                                    "gb_hours": 1, "uptime": 75, "max_response_ms": 2000, "penalty": "1",
                                    "collateral": "2.5", "window": WINDOW}, timeout=90)
    cid = view["id"]
    assert view["state"] == "running" and view["collateral"] == "2.5", view
    esc = c.rpc("ledger.escrow", [view["escrow"]])
    assert micro(esc["collateral"]) == 2_500_000 and esc["uptime_ppm"] == 750_000 and micro(esc["penalty"]) == 10**6
    assert len(esc["witnesses"]) == 1 and esc["threshold"] == 1

    def kept() -> dict[str, Any] | None:          # a loaded machine may slow a window's probes down
        s = c.rpc("market.sla", [cid])
        return s if any(w["judged"] and not w["breached"] for w in s["windows"]) else None
    sla = wait_until(kept, timeout=40, what="a first window judged and kept", interval=0.5)
    assert sla["probes"] >= 3 and sla["rtt_max_ms"] < 2000, sla
    # the customer's views show what the escrow paid while the contract runs (they showed 0
    # until the settlement)
    esc_paid = wait_until(lambda: micro(c.rpc("ledger.escrow", [view["escrow"]])["paid"]) or None,
                          timeout=15, what="a first payout from the escrow", interval=0.5)
    mine = c.rpc("market.contract", [cid])
    assert mine["state"] == "running" and micro(mine["paid"]) >= esc_paid, (esc_paid, mine)
    assert micro(c.rpc("market.sla", [cid])["paid"]) >= esc_paid

    assert p.proc is not None
    os.kill(p.proc.pid, signal.SIGSTOP)
    try:
        sla = wait_until(lambda: (s if len((s := c.rpc("market.sla", [cid]))["breached_windows"]) >= 2 else None),
                         timeout=45, what="two windows judged breached", interval=0.5)
    finally:
        os.kill(p.proc.pid, signal.SIGCONT)
    assert not sla["compliant"]

    done = wait_until(lambda: (v if (v := c.rpc("market.contract", [cid]))["state"] == "settled" else None),
                      timeout=SECONDS + 90, what="the service contract settled", interval=0.5)
    sla = c.rpc("market.sla", [cid])
    breached = sla["breached_windows"]
    assert len(breached) >= 2 and not sla["probing"] and sla["windows_judged"] == sla["windows_total"], sla
    for w in sla["windows"]:
        if w["window"] in breached:
            assert w["probes"] >= 3 and (w["probes"] - w["failures"]) * 4 < 3 * w["probes"], w
    print(f"SLA account: {sla['probes']} probes, {sla['failures']} failed, rtt mean {sla['rtt_mean_ms']} ms "
          f"max {sla['rtt_max_ms']} ms, windows judged {sla['windows_judged']}/{sla['windows_total']}, "
          f"breached {breached}, slashed {done['slashed']}, paid {done['paid']}, refunded {done['refunded']}")
    want_slashed = min(10**6 * len(breached), 2_500_000)
    esc = c.rpc("ledger.escrow", [done["escrow"]])
    assert esc["closed"] and micro(esc["slashed"]) == want_slashed, (esc, breached)
    assert micro(done["slashed"]) == want_slashed and micro(sla["penalty_due"]) == want_slashed
    slashes = min(len(breached), 3)               # the third slash takes the last 0.5 of collateral
    paid = micro(esc["paid"])
    assert 0 < paid <= 4_000_000 and micro(done["refunded"]) == 4_000_000 - paid
    payouts = esc["next_sequence"] - 3 - slashes  # open 0, collateral 1, payouts, slashes, refund
    assert payouts >= 1
    expect = {0: before[0] - paid + want_slashed - FEE * (2 + slashes),
              1: before[1] + paid - want_slashed - FEE * (1 + payouts)}
    wait_until(lambda: all(balance(n, wallet[i]) == expect[i] for n in (c, p) for i in (0, 1)) or None,
               timeout=30, what="exact balances on both parties' replicas")
    for n in net.nodes:
        v = n.rpc("ledger.verify")
        assert v["ok"], v
    prov = p.rpc("market.contract", [cid])
    assert prov["role"] == "provider" and micro(prov["paid"]) == paid, prov
    assert "SLA breach by" in c.log_path.read_text(errors="replace")
    # the bad outcome is recorded (a single observation against a pre-trusted devnet peer need not
    # move its EigenTrust score below average: tests/registry covers the aggregation)
    wait_until(lambda: "market.service" in c.rpc("reputation.show", {"peer": p.peer_id})["scores"] or None,
               timeout=30, what="the provider's market.service outcome in the customer's reputation")
