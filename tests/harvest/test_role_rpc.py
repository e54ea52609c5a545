"""The harvest role in a real `fognode run` process, through its RPC socket: bad policies are
refused naming the field and the old policy stays; pause/resume reach the device record; a
forged or foreign receipt is refused; a one-node FL session's training is lent to a harvest
session, stops (SIGSTOP) while harvest work is paused and finishes once resumed, metered;
sessions, the accepted policy change and the pause survive a restart."""
from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest
from nacl.signing import SigningKey

from fognode.node.errors import RpcError
from fognode.node.wire import pack, unpack
from fognode.protocols.harvest.receipts import Outcome, sign_work_receipt
from fognode.tools.devnet import wait_until

from tests.conftest import NodeFactory


def on_mains(path: Path) -> None:
    rec = {"time": 1.0, "power_plugged": True, "cpu_count": 4, "owner_cpu_pct": 0.0,
           "memory_available_bytes": 6 << 30, "memory_total_bytes": 8 << 30}
    path.write_text(json.dumps(rec) + "\n")


def rpc_error(node, method: str, params: object) -> RpcError:
    with pytest.raises(RpcError) as e:
        node.rpc(method, params)
    return e.value


@pytest.mark.slow
def test_policy_pause_receipts_and_restart(node_factory: NodeFactory, short_tmp: Path) -> None:
    trace = short_tmp / "mains.jsonl"
    on_mains(trace)
    net = node_factory(1, extra_args=["--set", f"protocols.harvest.sensors={trace}",
                                      "--set", "protocols.harvest.tick_interval=0.5"])
    n = net.nodes[0]
    st = n.rpc("harvest.status")
    assert st["state"] == "running" and st["announced"]["available"] is True
    assert st["announced"]["free_cores"] == 2          # 50 % of the trace's 4 CPUs
    before = n.rpc("harvest.policy")["policy"]

    # bad input: wrong types, negative, out of range, unknown knobs
    for changes, field in [({"min_battery_pct": "high"}, "min_battery_pct"),
                           ({"min_battery_pct": -5}, "min_battery_pct"),
                           ({"max_cpus_pct": 150}, "max_cpus_pct"),
                           ({"require_charging": 1}, "require_charging"),
                           ({"thermal_backoff_s": float("1e9")}, "thermal_backoff_s"),
                           ({"min_run_s": 10, "no_such_knob": 1}, "no_such_knob")]:
        e = rpc_error(n, "harvest.set_policy", {"changes": changes})
        assert e.code == 400 and e.data == {"field": field} and field in e.message, (changes, e)
        assert n.rpc("harvest.policy")["policy"] == before
    e = rpc_error(n, "harvest.set_policy", {"changes": [1, 2]})
    assert e.code == -32602 and "changes" in e.message
    e = rpc_error(n, "harvest.sessions", {"limit": 0})
    assert e.code == 404 and "limit" in e.message
    got = n.rpc("harvest.set_policy", {"changes": {"min_battery_pct": 35}})
    assert got["policy"]["min_battery_pct"] == 35.0 and got["overrides"] == {"min_battery_pct": 35.0}

    def shown() -> tuple[str, list[str], int]:      # node.info's harvest facts (memoised per decision)
        h = n.rpc("node.info")["roles"]["harvest"]
        return h["state"], h["reasons"], h["running_sessions"]
    assert shown() == ("running", [], 0)

    # pause: the device record says so at once; resume lifts it
    st = n.rpc("harvest.pause")
    assert st["state"] == "suspended" and st["reasons"] == ["operator_pause"]
    assert shown() == ("suspended", ["operator_pause"], 0)
    [row] = n.rpc("registry.devices", {})
    assert row["harvest"] == "suspended: operator_pause"
    assert n.rpc("registry.devices", {"available": True}) == []
    assert n.rpc("harvest.resume")["state"] == "running"
    assert shown() == ("running", [], 0)
    assert [r["peer"] for r in n.rpc("registry.devices", {"available": True})] == [n.peer_id]

    # receipts: a customer's genuine one for a job this device never ran is refused (the market
    # role credits the receipts of the jobs it runs: tests/market/test_role_daemons.py), and so
    # are one for another device, a forged one and junk
    customer = SigningKey(b"c" * 32)
    job = b"\5" * 32
    def receipt(worker: str, key: SigningKey = customer, tokens: int = 70) -> str:
        return sign_work_receipt(key, worker=worker, job=job, outcome=Outcome.VALIDATED,
                                 tokens=tokens, cpu_seconds=2.0, fuel=10, time=1.0).encode().hex()
    good = receipt(n.peer_id)
    for bad, reason in [(good, "foreign"),
                        (receipt("12D3KooWRhN3eSDAuzVNsHzEXbSQg6Wb87iDrxs48dbFQEELxkgL"), "foreign"),
                        (pack({**unpack(bytes.fromhex(good)), "tokens": 7000}).hex(), "bad_signature"),
                        ("zz", None)]:
        e = rpc_error(n, "harvest.credit", {"kind": "market_job", "receipt": bad})
        if reason is None:
            assert e.code == 404
        else:
            assert e.code == 403 and e.data == {"reason": reason}, (reason, e)
    assert "ran no market job" in rpc_error(n, "harvest.credit", {"kind": "market_job",
                                                                  "receipt": good}).message
    assert n.rpc("harvest.status")["totals"]["tokens_by_kind"]["market_job"] == 0

    # a one-node FL session: its training is lent to a harvest session, stops while the
    # operator pauses harvest work (SIGSTOP of the task process), continues, and is metered
    sid = n.rpc("fl.start", {"task": "synthetic", "rounds": 1, "min_participants": 1,
                             "participants": 1, "optin_seconds": 0.5, "deadline": 300.0,
                             "local_epochs": 300, "task_params": {"max_samples": 300}})["session_id"]

    def lent() -> dict | None:
        return next((w for w in n.rpc("harvest.status")["work"] if w["adopted"]), None)
    w = wait_until(lent, timeout=120, interval=0.05, what="the training to be lent to harvest")
    assert w["session_id"] and w["name"].startswith("fl task process")
    assert shown()[2] == 1                          # the FL session's harvest session runs
    n.rpc("harvest.pause")
    task = psutil.Process(w["pid"])
    wait_until(lambda: task.status() == psutil.STATUS_STOPPED, timeout=10, interval=0.02,
               what="the task process to stop")
    frozen = task.cpu_times()
    time.sleep(0.5)                    # a measurement window: no CPU time in it
    assert task.cpu_times()[:2] == frozen[:2]
    assert n.rpc("fl.status", [sid])["state"] == "running"
    n.rpc("harvest.resume")
    wait_until(lambda: n.rpc("fl.status", [sid])["state"] != "running", timeout=240,
               interval=0.25, what="the one-node FL session to end")
    assert n.rpc("fl.status", [sid])["state"] == "completed"
    wait_until(lambda: n.rpc("harvest.sessions", {"kind": "fl"}), timeout=10, what="the harvest session")
    [hs] = n.rpc("harvest.sessions", {"kind": "fl"})
    assert hs["ref"] == sid and hs["state"] == "completed" and shown()[2] == 0
    assert hs["usage"]["cpu_seconds"] > 0 and hs["usage"]["peak_memory_bytes"] > 0
    assert hs["usage"]["suspended_seconds"] >= 0.5
    assert hs["validated"] == 0       # a node's own aggregation is not a receipt for it

    # sessions, the policy overrides and the operator's pause survive a restart
    sessions = n.rpc("harvest.sessions")
    n.rpc("harvest.pause")
    net.stop(0)
    net.start(0)
    assert n.rpc("harvest.policy")["overrides"] == {"min_battery_pct": 35.0}
    assert n.rpc("harvest.status")["reasons"] == ["operator_pause"]
    assert n.rpc("harvest.resume")["state"] == "running"
    assert n.rpc("harvest.sessions") == sessions
    assert n.rpc("harvest.status")["totals"]["completed"] == 1
