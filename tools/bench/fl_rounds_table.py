"""The table of `python -m fognode.tools.bench.fl --part rounds` (tools/bench/fl_rounds.py runs
the daemons and measures): per round and for rounds 2+, each phase next to its bound measured in
the same run, the round's duration next to the critical-path bound, and (printed as rows of
their own, the filed bound unchanged) the same path with its three transfers on an open
transfer session, the coordinator's cycle (round r+1's `started_at` less round r's: work moved
from one round into the gap before the next shows there), the daemons' CPU per round and a
second critical-path bound that counts the machine's cores (`shared_core_path`), and the CPU
floor of the machine's cores (`cpu_floor`), below which no schedule can bring a round.

Why the second bound: the filed one adds single operations each measured alone on an idle
machine (the slowest training alone, one model fetch alone), while in a round N daemons on the
same machine train at once and N-1 updates stream into one aggregator at once, so those phases
cannot take less than their total work divided by the cores, nor less than the work one
process (the aggregator, a model source) does on its own core. Each phase of the second bound
is the larger of its filed bound and that work, from figures measured in the same run: the
trainings one at a time here (summed), and the CPU seconds one fetch costs the serving daemon
and the receiving host here.
"""
from __future__ import annotations

import numpy as np

from fognode.tools.bench.fl_rounds import IDLE_LAG, OPTIN, PHASES, TASK, Bounds, RoundsResult


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else float("nan")


def _f(x: float) -> str:
    return "-" if x != x else f"{x:.3f}"


def print_table(r: RoundsResult) -> None:
    """Per round (metrics scraped when the coordinator records each round), the mean of rounds
    2 and later (round 1 also pays each daemon's first torch use and the first dials), and
    the bound measured in the same run."""
    b = r.bounds
    rounds = [h["round"] for h in r.history]
    steady = list(range(1, len(rounds))) or list(range(len(rounds)))    # indexes of rounds 2..R
    mb = r.parameters * 4 / 1e6
    print()
    print(f"round time, {r.nodes} participants = {r.nodes} `fognode run` processes on 127.0.0.1 "
          f"({'full mesh' if r.mesh else 'star around node 0, other links dialled on demand'}) "
          f"(the starter trains too), {TASK} {r.parameters:,} parameters ({mb:.2f} MB float32), "
          f"{len(rounds)} rounds recorded, session {r.state}")
    unfinished = any(len(m) > len(rounds) for m in r.phases.values())
    head = "".join(f"{'round ' + str(k):>9}" for k in rounds) + (f"{'unfinished':>11}" if unfinished else "")
    label = "rounds 2+" if len(rounds) > 1 else "round 1" if rounds else "-"
    print(f"{'seconds':<44}{head}{label:>10}{'n':>5}{'bound':>9}  bound: measured in this run")

    def row(name: str, per_round: list[float], overall: float, n: int, bound: float, how: str) -> None:
        cells = "".join(f"{_f(x):>9}" for x in per_round[:len(rounds)])
        if unfinished:
            cells += f"{_f(per_round[len(rounds)]) if len(per_round) > len(rounds) else '-':>11}"
        print(f"{name:<44}{cells}{_f(overall):>10}{n:>5}{_f(bound):>9}  {how}")

    one_try = [i for i, h in enumerate(r.history) if h["tries"] == 1]
    d_mean = [_mean(r.plan_delays.get(h["round"], [])) if i in one_try else float("nan")
              for i, h in enumerate(r.history)]
    d_last = [max(r.plan_delays.get(h["round"], []) or [float("nan")]) if i in one_try else float("nan")
              for i, h in enumerate(r.history)]
    ok = [i for i in steady if i in one_try]
    row("selection + plan gossip, to a participant", d_mean, _mean([d_mean[i] for i in ok]),
        sum(len(r.plan_delays.get(r.history[i]["round"], [])) for i in ok), b.rtt,
        "one request/response on an open libp2p connection")
    row("  ... to the last participant", d_last, _mean([d_last[i] for i in ok]), len(ok), b.rtt, "")
    bounds = {"model fetch, participant <- coordinator": (b.fetch, "same bytes over one libp2p stream, daemons idle"),
              "local training (evaluate + 1 epoch)": (_mean(b.train), "the same trainings one at a time here"),
              "update transfer, participant -> aggregator": (b.fetch, "same bytes over one libp2p stream"),
              "aggregation (fedavg)": (b.fedavg, f"fedavg of {r.nodes} updates here"),
              "new model fetch, coordinator <- aggregator": (b.fetch, "same bytes over one libp2p stream"),
              "event-loop lag, mean of 0.25 s probes": (b.idle_lag, f"the same daemons idle ({IDLE_LAG:.0f} s)"),
              **{n: (b.rtt, "one request/response (n = streams opened)") for n in PHASES if n.startswith("stream")}}
    for name, means in r.phases.items():
        tot = r.steady[name]
        row(name, [m.mean for m in means], tot.mean, int(tot.count), *bounds[name])
    durations = [h["duration"] for h in r.history]
    path = b.rtt + b.fetch + max(b.train) + b.fetch + b.fedavg + b.rtt + b.fetch
    row("round duration at the coordinator", durations, _mean([durations[i] for i in steady]), len(steady),
        path, "sum of the bounds on the critical path*")
    session_path = b.rtt + b.session + max(b.train) + b.session + b.fedavg + b.rtt + b.session
    row("  ... against the path, transfers on a session", durations, _mean([durations[i] for i in steady]),
        len(steady), session_path, "the same path, each transfer on an open session***")
    starts = [h["started_at"] for h in r.history]
    cycles = [b2 - a for a, b2 in zip(starts, starts[1:])] + [float("nan")] * min(len(starts), 1)
    row("coordinator's cycle: next start - start", cycles, _mean([cycles[i] for i in steady if i < len(starts) - 1]),
        len([i for i in steady if i < len(starts) - 1]), path, "the filed critical path (a cycle holds a round)")
    shared, parts = shared_core_path(b, r.nodes, r.cores)
    row(f"  ... against the path on {r.cores} shared cores", durations, _mean([durations[i] for i in steady]),
        len(steady), shared, "the same path, each phase >= its total work / cores**")
    floor = cpu_floor(b, r.nodes, r.cores, r.idle_cpu)
    row(f"  ... against the CPU floor of {r.cores} cores", durations, _mean([durations[i] for i in steady]),
        len(steady), floor, "no schedule is faster: the round's measured work / free cores****")
    row("CPU s of all daemons + task processes", r.cpu, _mean([r.cpu[i] for i in steady if i < len(r.cpu)]),
        len(steady), r.idle_cpu * _mean([durations[i] for i in steady]), "the same daemons idle, as long")
    for topic, per_round in r.gossip.items():
        row(f"gossip msgs delivered: {topic}"[:44], per_round, r.steady_gossip.get(topic, float("nan")),
            len(steady), float("nan"), "summed over the nodes")
    print(f"{'tries / updates accepted of selected':<44}" + "".join(
        f"{str(h['tries']) + ' ' + str(len(h['accepted'])) + '/' + str(len(h['participants'])):>9}" for h in r.history))
    if r.scrape == "ends":
        print("  /metrics scraped before the session, when round 1 was recorded and after it (--scrape ends): "
              "'-' in a later round's column; --scrape rounds gives every column and adds ~4 ms of CPU per "
              "daemon per round")
    print(f"  warm-up session before (each daemon's first torch use, first streams): {r.warmup}")
    print(f"  session setup (announce, task load, opt-in {OPTIN:.0f} s) {r.setup:.1f} s; "
          f"{r.bytes_per_round / 1e6:.1f} MB of models and updates sent per round; plan gossip is "
          f"shown for rounds of one try")
    print(f"  the same bytes over plain TCP on loopback: {1000 * b.tcp:.1f} ms; slowest training alone "
          f"{max(b.train):.3f} s; first training in this process {b.first_train:.3f} s")
    for reason, count in sorted(r.problems.items(), key=lambda kv: -kv[1]):
        print(f"  update sends that failed ({count}x, daemon logs): {reason}")
    send, recv = b.fetch_cpu
    print(f"  one model fetch on a stream opened for it costs {1000 * send:.1f} ms CPU in the serving daemon "
          f"and {1000 * recv:.1f} ms in the receiving host (on an open session {1000 * b.session_cpu[0]:.1f} "
          f"and {1000 * b.session_cpu[1]:.1f} ms; wall {1000 * b.fetch:.1f} and {1000 * b.session:.1f} ms); "
          f"daemons idle use {r.idle_cpu:.2f} CPU s/s; {r.cores} cores")
    print(f"  the fetching host timed them once settled: {b.settled} (tools/bench/fl_fetch.py)")
    print("  ** phases of the shared-core path, s: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items())
          + " (tools/bench/fl_rounds_table.py: shared_core_path)")
    print("  * gossip hop + model fetch + slowest training + update transfer + fedavg + result gossip "
          "hop + new model fetch; n = observations averaged in the rounds-2+ column; '-' = nothing "
          "observed (the aggregator does not fetch its own model; a participant records a round's "
          "plan_at only if the round's result reaches it before the next plan; a round shorter than "
          "one scrape of all nodes can have its observations counted in the next column)")
    print("  *** the filed path with each of its three transfers on an open transfer session (no stream "
          "open, window grown), as rounds 2+ send them; the cycle's last round has no next start")
    path_ratio = floor / path if path > 0 else float("nan")
    print(f"  **** the trainings one at a time here ({sum(b.train):.3f} CPU s) and the round's "
          f"{_transfers(r.nodes)} transfers at an open session's CPU ({1000 * sum(b.session_cpu):.1f} ms "
          f"each), on {r.cores} cores less the idle daemons' {r.idle_cpu:.2f} CPU s/s, with every "
          f"transfer and training overlapped and nothing else (no gossip, no aggregation, no "
          f"scheduling): {floor:.3f} s, {path_ratio:.1f}x the filed path (tools/bench/fl_rounds_table.py: "
          f"cpu_floor)")


def _round_transfers(nodes: int) -> tuple[int, int]:
    """The fewest model fetches and updates any round 2+ needs: N-2 model fetches (the
    coordinator and the previous aggregator hold the base model) and N-1 updates into one
    aggregator (its own stays in memory); the new-model fetch comes on top."""
    return max(nodes - 2, 0), max(nodes - 1, 0)


def _transfers(nodes: int) -> int:
    """Every transfer of a round 2+: its fetches and updates, and the new-model fetch."""
    return sum(_round_transfers(nodes)) + 1


def cpu_floor(b: Bounds, nodes: int, cores: int, idle_cpu: float) -> float:
    """A lower bound on a round 2+ that no schedule can beat on `cores` CPUs: the round's
    measured work (every training, each as long as it took alone here, and every transfer at
    an open session's CPU at both ends) spread over the cores that the idle daemons leave
    free (they use `idle_cpu` CPU seconds a second whatever the round does). Unlike the two
    paths it lets every participant's fetch, training and update overlap with the others' and
    counts no gossip, aggregation or scheduling, so a round can only be longer."""
    work = sum(b.train) + _transfers(nodes) * sum(b.session_cpu)
    free = cores - idle_cpu
    return work / free if free > 0 else float("inf")


def shared_core_path(b: Bounds, nodes: int, cores: int) -> tuple[float, dict[str, float]]:
    """The critical path of a round 2+ with each phase at least its total work over `cores`
    and the work of its busiest process (module docstring); (seconds, phase -> seconds).
    Counted as few transfers as any round 2+ needs: N-2 model fetches (the coordinator and the
    previous aggregator hold the base model; the plan lists both as sources, so each serves
    half), N-1 updates into one aggregator (its own stays in memory), one new-model fetch."""
    send, recv = b.fetch_cpu
    per = send + recv
    fetches, updates = _round_transfers(nodes)
    parts = {
        "gossip hop (plan)": b.rtt,
        "model fetches": max(b.fetch, fetches * per / cores, fetches * send / 2),
        "trainings": max(max(b.train), sum(b.train) / cores),
        "update transfers": max(b.fetch, updates * per / cores, updates * recv),
        "fedavg": b.fedavg,
        "gossip hop (result)": b.rtt,
        "new model fetch": b.fetch,
    }
    return sum(parts.values()), parts
