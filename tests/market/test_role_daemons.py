"""The market role on a real 4-node devnet (`fognode run` processes, RPC over the unix socket).

Node 0 is the customer; nodes 1-3 offer `compute.wasm` (node 3 dearer, and lying: the test-only
fault injector `fault_corrupt_output`). One devnet, the phases overlapping in time so every
escrow's deadline passes once:

1. end to end: offer -> request (replication 1) -> agreement -> escrow -> job -> debit note paid
   -> refund after the deadline; the result is wasmtime's own, balances move exactly by the
   escrow's payouts and fees, `ledger.verify` passes on every node;
2. replication 3 with the liar: outvoted, not paid, reported to reputation, right result;
3. bad input: offers on gossip that are malformed, forged or spoofed (refused, counted, not in
   the book), a file that is not WASM (invalid_module, nothing paid), a job over its fuel
   (out_of_fuel, the fuel budget paid), over its memory (memory_limit), a filter that tries to
   be code (error 300);
4. node 3 as a customer that never co-signs a debit note (the test-only `fault_withhold_notes`):
   node 1 stops after `debit_deadline`, unpaid, and the escrow comes back whole;
5. a burst over nodes 1 and 2 with node 2 SIGKILLed mid-burst: its tasks re-assigned, every
   result returned, its unspent escrow refunded after the deadline.
"""
from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from fognode.node.errors import RpcError
from fognode.protocols.harvest.wasm_engine import WasmStatus, execute
from fognode.protocols.market.jobwire import task_cost
from fognode.node.rpc.client import RpcClient
from fognode.node.wire import pack, sign
from fognode.protocols.market.core import OFFERS_TOPIC
from fognode.protocols.market.messages import sign_offer
from fognode.tools.bench.attacks import hostile_peer
from fognode.tools.bench.attacks.invalid_gossip import send_valid
from fognode.tools.devnet import Devnet, DevnetNode, wait_until
from tests.market.wat import WORK_WAT, work_module

pytestmark = pytest.mark.slow

FEE = 1000                  # micro-units (genesis fee 0.001)
PRICE = 500_000             # micro-units per million fuel (0.5 token)
SECONDS = 25                # agreements' deadline from the request
ROUNDS = 300_000            # xorshift rounds of one burst task (7.8 M fuel, 3.9 tokens)
BURST = 32                  # tasks of the burst that loses a provider (enough to outlast a poll)
SETTINGS = ["--set", "protocols.harvest.market_nice=0", "--set", "protocols.market.debit_interval=1",
            "--set", "protocols.market.debit_deadline=6", "--set", "protocols.market.escrow_wait=20",
            "--set", "protocols.registry.eigentrust_interval=1"]


def micro(text: str) -> int:
    return int(Decimal(text) * 1_000_000)


def balance(n: DevnetNode, address: str) -> int:
    return micro(n.rpc("wallet.balance", {"address": address})["balance"])


def escrow_of(n: DevnetNode, contract: str) -> dict[str, Any]:
    return n.rpc("market.contract", [contract])


def settled(n: DevnetNode, contract: str) -> dict[str, Any]:
    return wait_until(lambda: (c if (c := escrow_of(n, contract))["state"] == "settled" else None),
                      timeout=SECONDS + 60, what=f"contract {contract[:12]} settled", interval=0.5)


async def inject_bad_offers(target: str) -> None:
    """A hostile peer gossips three bad offers to the customer: malformed (a field missing),
    forged (the signature does not check out), and signed by another key than its origin."""
    good = sign_offer(SigningKey(b"7" * 32), id="x", seq=1, service="compute.wasm", cores=1,
                      memory_mib=1, disk_mib=0, region="", prices={"fuel": 1}, uptime_bp=0,
                      issued=int(time.time()), valid_until=int(time.time()) + 600)
    body = good.body()
    del body["cores"]
    async with hostile_peer(target) as peer:
        own = sign_offer(peer.identity, id="y", seq=1, service="compute.wasm", cores=1,
                         memory_mib=1, disk_mib=0, region="", prices={"fuel": 1}, uptime_bp=0,
                         issued=int(time.time()), valid_until=int(time.time()) + 600)
        malformed = pack({**body, "sig": sign(peer.identity, body)})
        forged_own = bytearray(own.encode())
        forged_own[-1] ^= 0xFF
        await peer.overlay.pubsub.subscribe(OFFERS_TOPIC)
        for seq, data in enumerate((malformed, bytes(forged_own), good.encode()), 1):
            await send_valid(peer, OFFERS_TOPIC, seq, data)
        await trio.sleep(1)


def test_market_end_to_end_liar_bad_input_and_killed_provider(node_factory: Any, tmp_path: Path) -> None:
    net: Devnet = node_factory(4, extra_args=SETTINGS, start=False)
    net.nodes[3].args = ["--set", "protocols.market.fault_corrupt_output=true",
                         "--set", "protocols.market.fault_withhold_notes=true"]
    # node 2's harvest policy lets work run 10 % of the time (BOINC's CPU-time limit), so its
    # first burst task is still running when the test kills it, however fast the machine is
    # (with the persistent WASM worker a task takes milliseconds: the burst could end between
    # two polls)
    net.nodes[2].args = ["--set", "protocols.harvest.cpu_time_pct=10",
                         "--set", "protocols.harvest.idle_cpu_time_pct=10"]
    net.start_all(timeout=90)
    c, p1, p2, p3 = net.nodes
    wat = tmp_path / "work.wat"
    wat.write_text(WORK_WAT)
    for n, price in ((p1, "0.5"), (p2, "0.5"), (p3, "0.6")):
        n.rpc("market.offer", {"price": price, "cores": 1, "memory_mib": 512})
    wait_until(lambda: len(c.rpc("market.offers", {"filter": "(service=compute.wasm)"})) == 3 or None,
               timeout=90, what="three offers in the customer's book")
    with pytest.raises(RpcError) as e:
        c.rpc("market.offers", {"filter": "(cores>=__import__('os'))"})
    assert e.value.code == 300
    trio.run(inject_bad_offers, c.addr)
    refused = wait_until(lambda: (r if len(r := c.rpc("market.stats")["refused"]) >= 3 else None),
                         timeout=30, what="the bad offers refused")
    assert {"offer/malformed", "offer/bad_signature", "offer/spoofed_origin"} <= set(refused), refused
    assert len(c.rpc("market.offers")) == 3

    wallet = {n.index: n.rpc("wallet.address")["address"] for n in net.nodes}
    before = {i: balance(c, a) for i, a in wallet.items()}

    # 1. end to end, replication 1 (the cheap offers win)
    n_rounds = 50_000
    local = execute(work_module(), "work", args=(n_rounds,), fuel=10_000_000, memory_bytes=2**20, max_output=1024)
    r1 = c.rpc("market.request", {"module": str(wat), "export": "work", "args": [n_rounds],
                                  "fuel": 10_000_000, "budget": "5", "seconds": SECONDS},
               timeout=60)
    assert r1["status"] == "ok" and r1["results"] == list(local.results), r1
    assert r1["fuel"] == local.fuel_consumed and r1["liars"] == [] and len(r1["contracts"]) == 1

    # 2. replication 3: node 3 lies and is outvoted
    r3 = c.rpc("market.request", {"module": str(wat), "export": "work", "args": [n_rounds],
                                  "fuel": 10_000_000, "budget": "20", "replication": 3,
                                  "seconds": SECONDS}, timeout=60)
    assert r3["results"] == r1["results"] and r3["liars"] == [p3.peer_id], r3
    assert sorted(r3["providers"]) == sorted([p1.peer_id, p2.peer_id])

    # 3. bad input
    junk = tmp_path / "junk.wasm"
    junk.write_bytes(b"this is not a wasm module")
    cheap = "(price.fuel<=500000)"
    bad = c.rpc("market.request", {"module": str(junk), "export": "work", "args": [1],
                                   "fuel": 1_000_000, "budget": "1", "seconds": SECONDS,
                                   "filter": cheap}, timeout=60)
    assert bad["status"] == "invalid_module" and bad["fuel"] == 0, bad
    # ... replicated: node 3 lies about a result that cost no fuel, so it asks for no debit;
    # its rejected receipt comes all the same (checked with the harvest sessions below)
    bad3 = c.rpc("market.request", {"module": str(junk), "export": "work", "args": [1],
                                    "fuel": 1_000_000, "budget": "3", "replication": 3,
                                    "seconds": SECONDS}, timeout=60)
    assert bad3["status"] == "invalid_module" and bad3["liars"] == [p3.peer_id], bad3
    spin = c.rpc("market.request", {"module": str(wat), "export": "spin", "fuel": 2_000_000,
                                    "budget": "2", "seconds": SECONDS, "filter": cheap}, timeout=60)
    assert spin["status"] == "out_of_fuel" and spin["fuel"] == 2_000_000, spin
    hog = c.rpc("market.request", {"module": str(wat), "export": "hog", "fuel": 100_000_000,
                                   "memory_mib": 1, "budget": "60", "seconds": SECONDS,
                                   "filter": cheap}, timeout=60)
    assert hog["status"] == "memory_limit", hog

    # 4. node 3 as a customer that never co-signs a note: node 1 stops, unpaid, all refunded
    stiff = p3.rpc("market.burst", {"module": str(wat), "export": "work", "count": 40,
                                    "first": ROUNDS, "providers": 1, "fuel": 10_000_000,
                                    "budget": "200", "seconds": SECONDS,
                                    "filter": f"(provider={p1.peer_id})"}, timeout=120)
    assert len(stiff["contracts"]) == 1
    unpaid = p1.rpc("market.contract", [stiff["contracts"][0]])
    assert unpaid["state"] == "stopped" and "unpaid" in unpaid["detail"] and unpaid["paid"] == "0", unpaid

    # 5. a burst over nodes 1 and 2; node 2 is killed while it holds a task
    box: dict[str, Any] = {}
    seen: list[Any] = []

    def burst() -> None:
        try:
            with RpcClient(c.socket, timeout=120) as client:
                box["out"] = client.call("market.burst", {
                    "module": str(wat), "export": "work", "values": [ROUNDS + i for i in range(BURST)],
                    "providers": 2, "fuel": 10_000_000, "budget": str(10 * BURST), "seconds": SECONDS,
                    "filter": cheap}, on_progress=seen.append)
        except BaseException as ex:      # noqa: BLE001 - handed to the test thread
            box["error"] = ex

    t = threading.Thread(target=burst)
    t.start()
    # node 2 holds a burst task (its agreement is running; at 10 % duty its task is slow)
    wait_until(lambda: any(r["role"] == "provider" and r["state"] == "running"
                           for r in p2.rpc("market.contracts")) or None,
               timeout=60, what="node 2 running a burst task", interval=0.05)
    net.kill(2)
    t.join(150)
    assert "error" not in box, box.get("error")
    out = box["out"]
    assert [x["status"] for x in out["tasks"]] == ["ok"] * BURST, [x for x in out["tasks"] if x["status"] != "ok"]
    assert out["dead"] == [p2.peer_id]
    assert [v["done"] for v in seen] == list(range(1, BURST + 1)) and all(v["total"] == BURST for v in seen)
    for x in out["tasks"]:
        want = execute(work_module(), "work", args=(ROUNDS + x["index"],), fuel=10_000_000,
                       memory_bytes=2**20, max_output=1024)
        assert x["results"] == list(want.results) and x["fuel"] == want.fuel_consumed

    # settlement: every escrow refunded after its deadline, balances exact, ledger verified
    contracts = [*r1["contracts"], *r3["contracts"], *bad["contracts"], *bad3["contracts"], *spin["contracts"],
                 *hog["contracts"], *out["contracts"]]
    refund = settled(p3, stiff["contracts"][0])
    assert refund["paid"] == "0" and refund["refunded"] == refund["max_total"] == "200"
    views = [settled(c, k) for k in contracts]
    liar = next(v for v in views if v["peer"] == p3.peer_id)
    assert liar["paid"] == "0" and liar["refunded"] == liar["max_total"]
    assert micro(escrow_of(c, bad["contracts"][0])["paid"]) == 0
    assert micro(escrow_of(c, spin["contracts"][0])["paid"]) == task_cost(2_000_000, PRICE)
    assert micro(escrow_of(c, r1["contracts"][0])["paid"]) == task_cost(local.fuel_consumed, PRICE)
    killed = next(escrow_of(c, k) for k in out["contracts"] if escrow_of(c, k)["peer"] == p2.peer_id)
    assert micro(killed["refunded"]) == micro(killed["max_total"]) - micro(killed["paid"])

    paid_to = {i: 0 for i in wallet}
    fees = {i: 0 for i in wallet}
    fees[3] += 2 * FEE                               # node 3's escrow: open + refund, nothing paid
    for v in views:
        e = c.rpc("ledger.escrow", [v["escrow"]])
        idx = next(n.index for n in net.nodes if n.peer_id == v["peer"])
        payouts = e["next_sequence"] - 2            # open is 0, then payouts, then the refund
        paid_to[idx] += micro(e["paid"])
        fees[idx] += payouts * FEE
        fees[0] += 2 * FEE                           # open + refund
        paid_to[0] -= micro(e["paid"])
    wait_until(lambda: all(balance(c, wallet[i]) == before[i] + paid_to[i] - fees[i]
                           for i in (0, 1, 3)) or None, timeout=30, what="exact balances")
    for n in (c, p1, p3):
        v = n.rpc("ledger.verify")
        assert v["ok"], v

    # reputation: the liar's score on the customer is below the honest providers'
    def scores() -> dict[str, float] | None:
        s = {p.peer_id: c.rpc("reputation.show", {"peer": p.peer_id})["scores"].get("market.compute", 0.0)
             for p in (p1, p3)}
        return s if s[p3.peer_id] < s[p1.peer_id] else None
    wait_until(scores, timeout=30, what="the liar's reputation below the honest provider's")

    # harvest: every agreement a provider served is a `market` harvest session metered by its
    # harvest executor (the persistent runner's CPU and fuel), completed when paid in full and
    # credited by the customer's signed receipt; the liar's is a rejected credit, the unpaid
    # one abandoned with no credit
    def sessions(n: DevnetNode) -> dict[str, dict[str, Any]]:
        return {s["ref"]: s for s in n.rpc("harvest.sessions", {"kind": "market", "limit": 100})}

    mine = [v for v in views if v["peer"] == p1.peer_id]
    assert mine
    got = wait_until(lambda: (s if all(s.get(v["id"], {}).get("tokens") == micro(v["paid"])
                                       for v in mine) else None) if (s := sessions(p1)) else None,
                     timeout=30, what="node 1's receipts credited")
    for v in mine:
        s = got[v["id"]]
        served = p1.rpc("market.contract", [v["id"]])
        assert s["state"] == "completed" and (s["validated"], s["rejected"]) == (1, 0), s
        assert s["usage"]["fuel"] == served["fuel"] and s["usage"]["cpu_seconds"] > 0, s
    unpaid_s = got[stiff["contracts"][0]]
    assert unpaid_s["state"] == "abandoned" and "unpaid" in unpaid_s["reason"], unpaid_s
    assert (unpaid_s["validated"], unpaid_s["rejected"], unpaid_s["tokens"]) == (0, 0, 0)
    # the liar's rejected receipts may come late (once the others outvoted it): a bounded wait
    lies = [v["id"] for v in views if v["peer"] == p3.peer_id]
    assert len(lies) == 2
    done3 = wait_until(lambda: (s if all(s.get(k, {}).get("state") not in (None, "running")
                                         for k in lies) else None) if (s := sessions(p3)) else None,
                       timeout=SECONDS + 10, what="node 3's sessions ended")
    for k in lies:
        lied = done3[k]
        assert (lied["validated"], lied["rejected"], lied["tokens"]) == (0, 1, 0), lied
    totals = p1.rpc("harvest.status")["totals"]
    assert totals["tokens_by_kind"]["market_job"] == sum(micro(v["paid"]) for v in mine)
