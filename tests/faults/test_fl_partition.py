"""A federated-learning session with rewards across a network partition of five real daemons,
each in its own network namespace: round 1 runs on one network, the next rounds with the
network split 3/2 (the starter, and 6/8 of the stake, on the larger side) until a round
planned during the split completed without the smaller side (at most SPLIT_TIMEOUT), the last
after the heal. No fallback coordinator cut off with the minority takes the session over. The
session ends cleanly (completed, or failed with a reason), every node learns how it ended
(the cut-off ones included: fl/session/quorum.py's answers), and each round's rewards are
paid at most once: every replica converges to one state root, `ledger.verify` passes, and
each wallet's reward payouts (from the session's funded pool) are a part of what the
coordinator's adopted rounds owe it (a round paid twice, by two aggregators or two tries, or a
round a fallback coordinator cut off with the minority planned on its own, would exceed it:
the split brain a takeover quorum rules out)."""
from __future__ import annotations

import inspect
from collections import Counter
from typing import Any

import pytest

from fognode.ledger.amounts import parse_amount
from fognode.ledger.api import LedgerApi
from fognode.tools.devnet import Devnet, DevnetNode, wait_until

from tests.faults.conftest import HEAL_TIMEOUT
from tests.faults.netns import Fabric
from tests.faults.workload import Client, Op, certificates, check_history, converged, merged

pytestmark = pytest.mark.slow

ROUNDS = 4
BUDGET = 4_000_000            # micro-units for the session: 1 token per round
SPLIT_TIMEOUT = 60.0         # how long the split lasts at most: until a round planned during it completed
SESSION_TIMEOUT = 150.0      # 6 tries of round 1 at most 2 x 8 + 5 s each, with opt-ins


def owed_per_round(st: dict[str, Any], wallet_of: dict[str, str]) -> dict[str, Counter[int]]:
    """What the adopted rounds of the coordinator's history owe each wallet, one amount per
    (round, accepted participant other than the round's aggregator)."""
    reward = BUDGET // ROUNDS
    owed: dict[str, Counter[int]] = {}
    for h in st["history"]:
        for peer, w in h["weights"].items():
            if peer != h["aggregator"]:
                owed.setdefault(wallet_of[peer], Counter())[reward * int(w * 1_000_000) // 1_000_000] += 1
    return owed


def tried_to_pay(net: Devnet, i: int, round_no: int) -> bool:
    """Whether node i's log says it paid round `round_no` (or could not: the mint stays in
    flight or was refused); one FL session runs on this devnet."""
    log = net.nodes[i].log_path.read_text(errors="replace")
    return f"fl: round {round_no} rewards paid" in log or f"fl: rewards of round {round_no} not paid" in log


def reward_mints(net: Devnet, wallets: list[str]) -> dict[str, Counter[int]]:
    """The fl_update reward payouts (from the session's reward pool) node 0's replica holds,
    by recipient wallet."""
    out: dict[str, Counter[int]] = {}
    for w in wallets:
        for h in net.nodes[0].rpc("wallet.history", {"address": w, "limit": 1000, "verbose": True}):
            if (h["status"] == "final" and h["kind"] == "pool_pay" and h["recipient"] == w
                    and h["receipt"]["kind"] == "fl_update"):
                out.setdefault(w, Counter())[parse_amount(h["amount"])] += 1
    return out


def last_certified(node: DevnetNode, wallet: str) -> list[Op]:
    """The last order `wallet` sent that `node`'s replica holds as final (a reward payout
    pays its fee from the aggregator's wallet), as a final operation for check_history."""
    mine = [h for h in node.rpc("wallet.history", {"address": wallet, "limit": 1000, "verbose": True})
            if h["status"] == "final" and h["sender"] == wallet]
    if not mine:
        return []
    h = max(mine, key=lambda h: int(h["sequence"]))
    return [Op(node.index, 0.0, 0.0, "final", h["tx"], int(h["sequence"]))]


def test_fl_session_across_a_3_2_split_ends_cleanly_and_pays_once(netns_devnet: Devnet, fabric: Fabric,
                                                                  wallets: list[str]) -> None:
    net = netns_devnet
    coord = net.nodes[0]
    others = {n.peer_id for n in net.nodes[1:]}
    # opt-ins travel by gossip: start once the registry's gossip brought every device here
    wait_until(lambda: {d["peer"] for d in coord.rpc("registry.devices", {"online": True})} >= others,
               timeout=HEAL_TIMEOUT, interval=0.25, what="node 0 to know every other device")
    before = merged([certificates(coord, wallets)])
    out = coord.rpc("fl.start", {"task": "synthetic", "rounds": ROUNDS, "min_participants": 3,
                                 "participants": 5, "deadline": 8.0, "max_retries": 5, "fallbacks": 1,
                                 "local_epochs": 1, "lr": 0.05,
                                 "optin_seconds": 6.0, "reward_budget": BUDGET,
                                 "task_params": {"alpha": 0.5, "beta": 0.5, "max_samples": 200}}, timeout=90)
    sid = out["session_id"]

    def status() -> dict[str, Any]:
        """The session as its acting coordinator sees it (the starter, unless a fallback
        coordinator took the session over)."""
        st: dict[str, Any] = coord.rpc("fl.status", [sid, True])
        if st["role"] != "coordinator":
            acting = next(n for n in net.nodes if n.peer_id == st["acting_coordinator"])
            st = acting.rpc("fl.status", [sid, True])
        return st

    def rounds_done() -> int:
        st = status()
        return ROUNDS + 1 if st["state"] != "running" else len(st["history"])

    wait_until(lambda: rounds_done() >= 1, timeout=SESSION_TIMEOUT, interval=0.2,
               what="round 1 to complete on the whole network")
    split_before_round_1 = status()["state"] != "running"
    cur = status()["current"]
    fabric.partition([[0, 1, 2], [3, 4]])
    # a round planned after the split goes on without the cut-off side: its members miss the
    # deadline (dropped) or, elected aggregator, are failed over; the session must not wait
    split_round = cur["round"] if cur else ROUNDS
    # the split lasts until a round planned during it completed on the majority's side, or
    # SPLIT_TIMEOUT (progress during a split is not what is checked: plans cross a mesh whose
    # cut-off peers still look connected, slowly; under load a round can take longer)
    try:
        wait_until(lambda: rounds_done() > split_round, timeout=SPLIT_TIMEOUT, interval=0.2,
                   what=f"round {split_round + 1} to complete while the network is split")
    except TimeoutError as e:
        print(f"no progress during the split: {e}")
    # no fallback coordinator cut off with the minority took the session over
    cut_off = {net.nodes[3].peer_id, net.nodes[4].peer_id}
    # ... unless the split left the minority a majority of the running round's participants:
    # the known defect of the README's FL takeover paragraph (reproduced deterministically by
    # tests/fl/test_partition.py's xfail test), which this scenario then cannot check
    exposed = cur is not None and len(cut_off & set(cur["participants"])) > len(cur["participants"]) // 2
    for n in net.nodes[3:]:
        if n.rpc("fl.status", [sid, True])["role"] == "coordinator":
            if exposed:
                pytest.skip(f"known defect hit: node {n.index} took over with a majority of round "
                            f"{cur['round']}'s participants {cur['participants']} (README, FL takeover)")
            raise AssertionError(f"node {n.index} took the session over")
    for h in status().get("history", []):
        if h["round"] > split_round and isinstance(h["accepted"], list):
            assert not cut_off & set(h["accepted"]), f"round {h['round']} accepted an update from the cut-off side"
    fabric.heal()

    wait_until(lambda: status()["state"] != "running", timeout=SESSION_TIMEOUT, interval=0.2,
               what="the session to end after the heal")
    st = status()
    assert st["state"] in ("completed", "failed"), st
    if st["state"] == "completed":
        assert [h["round"] for h in st["history"]] == list(range(1, ROUNDS + 1)), st["history"]
        assert all(len(h["accepted"]) >= 3 for h in st["history"])
    else:
        assert st["reason"], st
    assert st["acting_coordinator"] not in cut_off, st   # the majority's coordinator
    # every node, the cut-off ones included, learns how the session ended
    for n in net.nodes[1:]:
        wait_until(lambda n=n: n.rpc("fl.status", [sid, True])["state"] == st["state"], timeout=HEAL_TIMEOUT,
                   interval=0.25, what=f"node {n.index} to see the session {st['state']}")

    # rewards: each adopted round's aggregator tried to pay it (paid, or not: in flight or
    # refused); then every node sends once, which drives its wallet's order in flight first
    # (a send that times out leaves both in flight: check_history accepts that, never another
    # certificate in their place)
    # An aggregator pays once it learns its round was adopted (the next plan, or the session's
    # end): one cut off before the next plan learns it at the heal, and its first payout may
    # then wait out its whole timeout (pay_from_pool's) while the connections come back. So the
    # wait covers that timeout; with HEAL_TIMEOUT alone (60 s, the same figure) it lost the
    # race by a second once (session 31).
    pay_wait = HEAL_TIMEOUT + inspect.signature(LedgerApi.pay_from_pool).parameters["timeout"].default
    for h in st["history"]:
        agg = next(n for n in net.nodes if n.peer_id == h["aggregator"])
        wait_until(lambda: tried_to_pay(net, agg.index, h["round"]), timeout=pay_wait, interval=0.25,
                   what=f"node {agg.index} to pay round {h['round']}")
    drives = [Client(n, wallets[0], amount="0.001") for n in net.nodes]
    for c in drives:
        # the checker starts from the wallet's last certified order (its reward payouts)
        c.ops.extend(last_certified(c.node, wallets[c.node.index]))
        c.ops.append(c.send_once(timeout=30.0))
        assert c.ops[-1].outcome != "error", c.ops[-1]
    # paid at most once per (round, participant); the ledger converges and verifies
    wait_until(lambda: converged(net), timeout=HEAL_TIMEOUT, interval=0.2,
               what="every replica to converge to one state root")
    check_history(net, wallets, drives)
    wallet_of = {n.peer_id: wallets[n.index] for n in net.nodes}
    owed = owed_per_round(st, wallet_of)
    paid = reward_mints(net, wallets)
    if any(set(h["accepted"]) - {h["aggregator"]} for h in st["history"]):
        assert paid, f"no round reward was paid: {st}"
    # a payout the final history does not explain: a round paid by an aggregator whose model
    # the coordinator did not adopt, or planned by a coordinator the majority never followed
    unexplained = []
    for w, amounts in paid.items():
        over = amounts - owed.get(w, Counter())
        if over:
            unexplained.append(f"{w} was paid {dict(over)} beyond the final history's "
                               f"{dict(owed.get(w, {}))}")
    assert sum(a * k for c in paid.values() for a, k in c.items()) <= BUDGET
    # nothing the split held up was certified as something else
    after = merged([certificates(n, wallets) for n in net.nodes])
    assert all(after[k] == v for k, v in before.items())
    assert not unexplained, unexplained
    if split_before_round_1:   # as test_daemon.py: the scenario did not happen, say so
        pytest.skip(f"the session ended before the split ({st['reason']}): an overloaded machine; "
                    "it ended cleanly and paid nothing twice, but the split was not exercised")
