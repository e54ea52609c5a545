"""Reputation quality simulator: does EigenTrust keep requests away from malicious peers?

Sans-IO and synchronous: N peers in cycles; each cycle every peer requests a service from one
of `candidates` random peers, picked either uniformly at random or by EigenTrust global trust
(proportional to trust, with `explore` probability of a uniform pick; uniform when no
candidate has trust yet, as in Kamvar et al. 2003). Honest peers serve well with probability
`honest_quality`; malicious peers always serve badly. Requesters rate each transaction
(+1 / -1 local trust). Malicious peers also lie:
- "independent": they rate every transaction they receive as bad (smearing);
- "collusive": they additionally form one group that rates each other highly every cycle
  (fake transactions of weight `collusion_weight`);
- "camouflage" (the paper's threat model D): half of them are front peers that serve well and
  rate honestly, but also vouch for the other half (fake transactions of weight
  `collusion_weight` every cycle), which always serve badly.
Global trust is recomputed every cycle with the role's own EigenTrust
(`fognode.protocols.registry.eigentrust`), `pretrusted` honest peers anchoring it.

The figure: the share of honest peers' requests served (badly) by malicious peers.

    python -m fognode.tools.reputation_sim                  # N = 1,000; 10/30/50 % malicious
    python -m fognode.tools.reputation_sim --peers 200 --cycles 15
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from fognode.protocols.registry.eigentrust import global_trust_indexed

BEHAVIOURS = ("independent", "collusive", "camouflage")


@dataclass(frozen=True)
class SimConfig:
    peers: int = 1000
    malicious: float = 0.3
    behaviour: str = "collusive"          # "independent" | "collusive" | "camouflage"
    policy: str = "trust"                 # "trust" | "random"
    cycles: int = 20
    candidates: int = 10
    pretrusted: int = 10
    honest_quality: float = 0.95
    explore: float = 0.1
    alpha: float = 0.15
    collusion_weight: float = 10.0
    seed: int = 1


@dataclass(frozen=True)
class SimResult:
    config: SimConfig
    honest_requests: int
    served_by_malicious: int
    seconds: float

    @property
    def share(self) -> float:
        return self.served_by_malicious / self.honest_requests if self.honest_requests else 0.0


def simulate(cfg: SimConfig) -> SimResult:
    if cfg.behaviour not in BEHAVIOURS:
        raise ValueError(f"behaviour must be one of {BEHAVIOURS}, got {cfg.behaviour!r}")
    if cfg.policy not in ("trust", "random"):
        raise ValueError(f"policy must be trust or random, got {cfg.policy!r}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    n = cfg.peers
    n_bad = int(round(cfg.malicious * n))
    bad = np.zeros(n, dtype=bool)
    bad[rng.choice(n, size=n_bad, replace=False)] = True
    honest_idx = np.flatnonzero(~bad)
    bad_idx = np.flatnonzero(bad)
    front = np.zeros(n, dtype=bool)               # malicious peers that serve well (camouflage)
    if cfg.behaviour == "camouflage":
        front[bad_idx[: n_bad // 2]] = True
    serves_bad = bad & ~front
    front_idx, worker_idx = np.flatnonzero(front), np.flatnonzero(serves_bad)
    pre = honest_idx[: max(1, min(cfg.pretrusted, honest_idx.size))]
    s = np.zeros((n, n), dtype=np.float64)          # local trust s_ij
    trust = np.full(n, 1.0 / n)
    requesters = np.arange(n)
    honest_requests = served_bad = 0
    k = cfg.candidates
    for _ in range(cfg.cycles):
        if cfg.behaviour == "collusive" and n_bad > 1:
            s[np.ix_(bad_idx, bad_idx)] += cfg.collusion_weight
            s[bad_idx, bad_idx] = 0.0
        if cfg.behaviour == "camouflage" and front_idx.size and worker_idx.size:
            s[np.ix_(front_idx, worker_idx)] += cfg.collusion_weight
        cand = rng.integers(0, n - 1, size=(n, k))
        cand += cand >= requesters[:, None]          # never oneself
        if cfg.policy == "random":
            pick = rng.integers(0, k, size=n)
        else:
            w = trust[cand]
            tot = w.sum(axis=1)
            u = rng.random(n) * tot
            pick = np.argmax(np.cumsum(w, axis=1) > u[:, None], axis=1)
            uniform = (tot <= 0) | (rng.random(n) < cfg.explore)
            pick[uniform] = rng.integers(0, k, size=int(uniform.sum()))
        prov = cand[requesters, pick]
        ok = ~serves_bad[prov] & (rng.random(n) < cfg.honest_quality)
        rating = np.where(ok, 1.0, -1.0)
        rating[serves_bad] = -1.0                   # malicious requesters smear
        np.add.at(s, (requesters, prov), rating)
        hon = ~bad
        honest_requests += int(hon.sum())
        served_bad += int((serves_bad[prov] & hon).sum())
        if cfg.policy == "trust":
            rows, cols = np.nonzero(s)
            trust, _, _ = global_trust_indexed(n, rows, cols, s[rows, cols], pre.tolist(),
                                               alpha=cfg.alpha)
    return SimResult(cfg, honest_requests, served_bad, time.perf_counter() - t0)


def report(peers: int, fractions: list[float], cycles: int, seed: int) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for behaviour in BEHAVIOURS:
        for frac in fractions:
            res = {pol: simulate(SimConfig(peers=peers, malicious=frac, behaviour=behaviour,
                                           policy=pol, cycles=cycles, seed=seed))
                   for pol in ("random", "trust")}
            rows.append((str(peers), f"{frac:.0%}", behaviour,
                         f"{res['random'].share:.1%}", f"{res['trust'].share:.1%}",
                         f"{res['random'].seconds + res['trust'].seconds:.1f}"))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--fractions", type=str, default="0.1,0.3,0.5")
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    fr = [float(x) for x in a.fractions.split(",") if x]
    head = ("peers", "malicious", "behaviour", "random pick", "EigenTrust pick", "seconds")
    rows = report(a.peers, fr, a.cycles, a.seed)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("share of honest peers' requests served (badly) by malicious peers")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
