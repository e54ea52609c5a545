"""The critical path of FL rounds, read from the daemons' own round timelines.

    .venv/bin/python -m fognode.tools.bench.fl --part rounds --timeline /tmp/tl.json
    .venv/bin/python -m fognode.tools.bench.fl_timeline /tmp/tl.json

The file holds every node's `fl.status` of the measured session; its "marks" are the steps of
each round at that node, wall-clock (all daemons share one clock): `plan_in` (the plan passed
the node's gossip check, the fl role's validator, as it arrived), `plan` (the plan reached the
node's core, after the gossip layer's inbox and handler tasks), `fetch` / `model` (base model
fetch asked / arrived), `train` / `trained` (the call to the task process sent / returned),
`send` / `delivered` (update pushed / acknowledged), `update_in` (an update accepted at the
aggregator), `aggregate` / `aggregated`, `publish_result`, `push` / `pushed` (the aggregator's
push of the result and model to the coordinator started / taken), `result` (the result reached
the node: gossiped or pushed), and at the coordinator `publish_plan` and `round_done` (the new
model is there). For each round from 2 on it prints, in ms after the coordinator published the
plan, the steps of the coordinator, of the round's aggregator and of its slowest participant
(the last update the aggregator accepted), the median participant's, then the mean of each step
over the rounds; then the plan's way to the participants (the bench's "selection + plan gossip"
row) in three parts: at the coordinator from the step that made the plan (its own `plan` mark)
to its publish task (`publish_plan`); the gossip fan-out to the participants' checks
(`plan_in`: first, median, last); and at each participant from the check to its core (`plan` -
`plan_in`: median, max).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from typing import Any

STEPS = ("plan_in", "plan", "fetch", "model", "train", "trained", "send", "delivered", "update_in",
         "aggregate", "aggregated", "publish_result", "push", "pushed", "result", "round_done",
         "publish_plan")


def steps_of(status: dict[str, Any], round_no: int) -> dict[str, list[tuple[float, str]]]:
    """step -> [(time, peer)] of `round_no` at one node, the last try's only."""
    marks = [m for m in status.get("marks", []) if m[1] == round_no]
    last_try = max((m[2] for m in marks if m[3] == "plan"), default=0)
    out: dict[str, list[tuple[float, str]]] = {}
    for t, _, try_no, step, peer in marks:
        if try_no == last_try or step == "round_done":
            out.setdefault(step, []).append((t, peer))
    return out


def first(steps: dict[str, list[tuple[float, str]]], step: str) -> float | None:
    got = steps.get(step)
    return got[0][0] if got else None


def timeline(nodes: list[dict[str, Any]]) -> list[dict[str, dict[str, float]]]:
    """Per round from 2 on: {who: {step: ms after the plan's publication}}."""
    coord = nodes[0]
    rounds = sorted({m[1] for m in coord.get("marks", []) if m[3] == "publish_plan"})
    out = []
    for r in rounds:
        if r < 2:
            continue
        c = steps_of(coord, r)
        t0 = first(c, "publish_plan")
        agg_node = next((n for n in nodes if "publish_result" in steps_of(n, r)), None)
        if t0 is None or agg_node is None or "round_done" not in c:
            continue
        a = steps_of(agg_node, r)
        ins = sorted(a.get("update_in", []))
        rel = {k: {} for k in ("coordinator", "aggregator", "slowest", "median")}   # type: dict[str, dict[str, float]]
        for k, s in (("coordinator", c), ("aggregator", a)):
            for step in STEPS:
                v = first(s, step)
                if v is not None:
                    rel[k][step] = 1000 * (v - t0)
        if ins:
            rel["aggregator"]["first update_in"] = 1000 * (ins[0][0] - t0)
            rel["aggregator"]["last update_in"] = 1000 * (ins[-1][0] - t0)
            slow = next((n for n in nodes if n["peer_id"] == ins[-1][1]), None)
            if slow is not None:
                for step in STEPS:
                    v = first(steps_of(slow, r), step)
                    if v is not None:
                        rel["slowest"][step] = 1000 * (v - t0)
        for step in STEPS:
            vs = [first(steps_of(n, r), step) for n in nodes]
            got = [1000 * (v - t0) for v in vs if v is not None]
            if got:
                rel["median"][step] = statistics.median(got)
        rel["coordinator"]["round"] = r
        out.append(rel)
    return out


def print_timeline(rounds: list[dict[str, dict[str, float]]]) -> None:
    whos = ("coordinator", "aggregator", "slowest", "median")
    steps = STEPS[:8] + ("first update_in", "last update_in") + STEPS[8:]
    head = "ms after publish_plan".ljust(18) + "".join(
        f"{'r' + str(int(x['coordinator']['round'])) + ' ' + w[:5]:>11}" for x in rounds for w in whos[:3])
    print(head)
    for step in steps:
        line = step.ljust(18)
        for x in rounds:
            for w in whos[:3]:
                v = x[w].get(step)
                line += f"{v:11.1f}" if v is not None else f"{'-':>11}"
        print(line)
    print()
    print("mean over rounds".ljust(18) + "".join(f"{w:>13}" for w in whos))
    for step in steps:
        line = step.ljust(18)
        for w in whos:
            vs = [x[w][step] for x in rounds if step in x[w]]
            line += f"{statistics.mean(vs):13.1f}" if vs else f"{'-':>13}"
        print(line)


def plan_way(nodes: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per round from 2 on, ms: the coordinator's step -> its publish task, publish -> the
    participants' gossip checks (first, median, last), and check -> core at a participant
    (median, max over the participants)."""
    coord = nodes[0]
    out = []
    for r in sorted({m[1] for m in coord.get("marks", []) if m[3] == "publish_plan"}):
        c = steps_of(coord, r)
        t0, made = first(c, "publish_plan"), first(c, "plan")
        if r < 2 or t0 is None or made is None:
            continue
        checks, hops = [], []
        for n in nodes[1:]:
            s = steps_of(n, r)
            got, core = first(s, "plan_in"), first(s, "plan")
            if got is not None:
                checks.append(1000 * (got - t0))
                if core is not None:
                    hops.append(1000 * (core - got))
        if not checks:
            continue
        out.append({"round": r, "step->publish": 1000 * (t0 - made), "first check": min(checks),
                    "median check": statistics.median(checks), "last check": max(checks),
                    "check->core median": statistics.median(hops) if hops else math.nan,
                    "check->core max": max(hops) if hops else math.nan})
    return out


def print_plan_way(rows: list[dict[str, float]]) -> None:
    if not rows:
        print("no plan_in marks: daemons from before they were noted")
        return
    keys = [k for k in rows[0] if k != "round"]
    print("plan's way, ms".ljust(22) + "".join(f"{'r' + str(int(x['round'])):>8}" for x in rows) + f"{'mean':>8}")
    for k in keys:
        print(k.ljust(22) + "".join(f"{x[k]:8.1f}" for x in rows)
              + f"{statistics.mean(x[k] for x in rows):8.1f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fognode.tools.bench.fl_timeline",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("timeline", help="the file `bench.fl --part rounds --timeline FILE` wrote")
    args = ap.parse_args(argv)
    try:
        with open(args.timeline) as f:
            nodes = json.load(f)
    except (OSError, ValueError) as e:
        ap.error(f"{args.timeline}: {e}")
    print_timeline(timeline(nodes))
    print()
    print_plan_way(plan_way(nodes))


if __name__ == "__main__":
    main()
