"""Hosted data end to end on real daemons (issue 14 item 5): a 5-node devnet where nodes 1-4
offer fog.hosting (node 4 too dear to be picked). Node 0 deploys 1 MB at privacy level 1
(2-of-3 shards on three hosts, paid through ledger escrows from its budget); one host (n - k)
is SIGKILLed; node 4 accesses the `.fog` address through rendezvous circuits and gets the file
byte-identical, paying exactly the access fee, which the owner receives; `ledger.verify`
passes on every surviving node. A mistyped address and an access the wallet cannot pay are
refused with the reason. (5 nodes, not 7 at level 2: every node is a validator of equal
stake, so at most one of five or two of seven may die; five converge faster on a loaded
machine.)

Strict since session 22. It was a non-strict xfail: of 10 runs in session 21, 2 failed at the
deploy on the ledger's "not certified in time" (load 34-37). The cause was in the deploy, not
the ledger: an escrow order left in flight by a loaded committee failed the host, and the
retry's second order for the same agreement was refused (hosting/owner.py's module doc; the
fix is tested on its own in test_hosting_escrow.py). After the fix it passed 8 runs of 8 at
load 16-38 (deploy 2.8-19.2 s, access 5.4-10.0 s).
"""
from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from fognode.node.errors import RpcError
from fognode.protocols.onion.address import address_from_pubkey
from fognode.tools.devnet import Devnet, DevnetNode, wait_until

pytestmark = pytest.mark.slow

FEE = "0.5"
FEE_MICRO = 500_000
ORDER_FEE = 1000


def micro(text: str) -> int:
    return int(Decimal(text) * 1_000_000)


def balance(n: DevnetNode, address: str) -> int:
    return micro(n.rpc("wallet.balance", {"address": address})["balance"])


N = 5
LEVEL, K, NSHARDS = 1, 2, 3


def test_deploy_lose_hosts_access_pay(node_factory: Any, tmp_path: Path) -> None:
    net: Devnet = node_factory(N, start=False)
    for node in net.nodes:
        node.args += ["--set", "protocols.onion.hosting_interval=300"]
        if node.index:
            price = 10**12 if node.index == N - 1 else 1_000_000 * node.index
            node.args += ["--set", "protocols.onion.hosting_quota_mib=8",
                          "--set", f"protocols.onion.hosting_price={price}"]
    net.start_all(timeout=120)
    owner, accessor = net.nodes[0], net.nodes[N - 1]

    def ready() -> bool | None:
        if not all(n.rpc("onion.stats")["relays_known"] >= N for n in net.nodes):
            return None
        if len(owner.rpc("market.offers", {"filter": "(service=fog.hosting)"})) < N - 1:
            return None
        return all(any(s["name"] == "fog-hosting" and s["published"] for s in n.rpc("onion.services"))
                   for n in net.nodes[1:]) or None
    wait_until(ready, timeout=480, what="relays, fog.hosting offers and the hosts' services", interval=1)

    data = os.urandom(1_000_000)
    src = tmp_path / "data.bin"
    src.write_bytes(data)
    wallet = {n.index: n.rpc("wallet.address")["address"] for n in net.nodes}
    owner_before_deploy = balance(owner, wallet[0])
    dep = owner.rpc("onion.deploy", {"file": str(src), "budget": "5", "privacy_level": LEVEL, "fee": FEE,
                                     "hours": 1}, timeout=400)
    assert dep["address"].endswith(".fog") and (dep["privacy"]["k"], dep["privacy"]["n"]) == (K, NSHARDS)
    assert len(set(dep["hosts"])) == NSHARDS
    ev = owner.rpc("monitor.events", {"type": ["HiddenServiceDeployed"]})
    assert [e["data"]["address"] for e in ev] == [dep["address"]] and ev[0]["data"]["shards"] == NSHARDS
    # the hosting was paid through escrows: the owner's balance went down by their amounts and fees
    wait_until(lambda: balance(owner, wallet[0]) == owner_before_deploy - micro(dep["hosting_cost"]) or None,
               timeout=60, what="the owner's escrows applied")
    host_of = {n.rpc("onion.stats")["hosting"]["address"]: n for n in net.nodes[1:]}
    hosts = [host_of[a] for a in dep["hosts"]]
    assert accessor not in hosts and all(h.rpc("onion.stats")["hosting"]["shards"] == 1 for h in hosts)

    # an access the wallet cannot pay, and a mistyped address, are refused with the reason
    with pytest.raises(RpcError, match="address: .*checksum"):
        accessor.rpc("onion.access", {"address": dep["address"][:10] + ("a" if dep["address"][10] != "a" else "b")
                                      + dep["address"][11:], "out": str(tmp_path / "x")})
    poor = accessor.rpc("wallet.new", {"label": "poor"})["address"]
    with pytest.raises(RpcError, match="refused: wallet .* cannot pay the access fee of 500000"):
        accessor.rpc("onion.access", {"address": dep["address"], "out": str(tmp_path / "x"), "wallet": poor},
                     timeout=120)
    assert not (tmp_path / "x").exists()

    # lose as many hosts as the code tolerates (n - k)
    victims = hosts[K:]
    for v in victims:
        net.kill(v.index)
    alive = [n for n in net.nodes if n not in victims]
    # the network notices: the registry marks them offline (offline_after), the directory drops
    # them as relays, so the accessor's circuits avoid them (their shards are still listed)
    wait_until(lambda: all(n.rpc("onion.stats")["relays_known"] <= N - len(victims) for n in alive) or None,
               timeout=180, what="the killed hosts gone from the relay directories", interval=1)
    dead = {v.peer_id for v in victims}

    def republished() -> bool | None:   # the surviving hosts moved their introduction points off the dead
        return all(s["published"] and s["intro_points"] and not dead & set(s["intro_points"])
                   for h in hosts if h not in victims for s in h.rpc("onion.services")
                   if s["name"] == "fog-hosting") or None
    wait_until(republished, timeout=180, what="the surviving hosts' services re-established", interval=1)

    acc_before, owner_before = balance(accessor, wallet[N - 1]), balance(owner, wallet[0])
    out = tmp_path / "out.bin"
    got = accessor.rpc("onion.access", {"address": dep["address"], "out": str(out)}, timeout=600)
    assert out.read_bytes() == data
    print(f"deploy {dep['seconds']} s, access {got['seconds']} s (1 MB, {K} of {NSHARDS}, {len(victims)} host(s) killed)")
    assert got["fee_paid"] == FEE and len(got["shards_used"]) == K
    # the accessor paid exactly the fee (plus the ledger's order fee); the owner received it
    assert balance(accessor, wallet[N - 1]) == acc_before - FEE_MICRO - ORDER_FEE
    wait_until(lambda: balance(owner, wallet[0]) == owner_before + FEE_MICRO or None, timeout=60,
               what="the fee at the owner")
    stats = wait_until(lambda: (s if (s := owner.rpc("onion.stats", {"service": dep["address"]}))["accesses"] == 1
                                else None), timeout=60, what="the access counted by the owner")
    assert stats["fees_received"] == FEE     # amounts in tokens, as given
    served = sum(h.rpc("onion.stats")["hosting"]["services"].get(dep["service_id"], {}).get("shards_served", 0)
                 for h in hosts if h not in victims)
    assert served == K
    assert accessor.rpc("onion.stats", {"service": dep["address"]})["my_fees_paid"] == FEE

    for n in alive:
        v = n.rpc("ledger.verify")
        assert v["ok"], (n.index, v)


def test_cli_paths_of_deploy_and_access_are_taken_from_where_the_cli_runs(node_factory: Any, tmp_path: Path) -> None:
    """The README's `fognode-cli onion deploy ./report.pdf ...` and `onion access ADDRESS --out
    ./report.pdf`: a relative FILE or OUT is the operator's, resolved by fognode-cli (FilePath),
    not the daemon's working directory (deploy answered 630 "cannot read report.pdf: No such
    file or directory" for a file right there)."""
    net: Devnet = node_factory(1)
    node = net.nodes[0]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fognode.tools.cli", "--datadir", str(node.datadir), *args],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)

    (tmp_path / "report.pdf").write_bytes(os.urandom(1000))
    r = cli("onion", "deploy", "./report.pdf", "20", "--privacy-level", "2", "--fee", "0.5", "--hours", "48")
    assert r.returncode == 1 and "error 631: privacy level 2 needs 5 hosts" in r.stderr, r.stderr   # read, then no hosts
    address = address_from_pubkey(bytes(SigningKey.generate().verify_key)).host
    r = cli("onion", "access", address, "--out", "./report.pdf")
    assert r.returncode == 1 and f"out: {tmp_path / 'report.pdf'} exists (not overwritten)" in r.stderr, r.stderr
    with pytest.raises(RpcError) as e:          # over raw JSON-RPC a relative path is refused, naming the param
        node.rpc("onion.deploy", {"file": "report.pdf", "budget": "20"})
    assert "param 'file' must be an absolute path" in str(e.value)
