"""SLA monitoring of one service contract, without IO: the customer's probe log, judged per
observation window against the agreement's SLA (agreement.SLA).

The customer probes the provider every `probe_interval` s (`next_probe`) and records each
probe with `record(sent, rtt_ms)`: `rtt_ms` is the round trip measured on the customer's own
monotonic clock, None when no answer came (timeout, refused stream, a pong that does not check
out). A probe fails when it got no answer or its answer took more than `max_response_ms`, so
response time and uptime fold into one count, the one the ledger's slash order can check.

Windows: window k covers [start + k*window, start + (k+1)*window) of the customer's wall
clock, for the windows that end by the deadline (`window_count`); a probe belongs to the
window of its send time. A window is judged once it is over and its last probe had time to
answer (`tick`, each window once): it is *breached* when it holds at least `min_probes` probes
and fewer than `uptime_bp` of them (basis points) succeeded, exactly the ledger's rule
`(probes - failures) * 10^6 < uptime_ppm * probes` with `uptime_ppm = 100 * uptime_bp`
(ledger/escrow.py). A window with fewer probes than `min_probes` (the customer was down or
busy) is not judged: too few probes prove nothing, and an unjudged window cannot be slashed.

`penalty_due()` is what the customer may claim: `penalty` per breached window, never more than
the collateral. The monitor is a plain record (`to_record` / `from_record`) so the customer's
contract store keeps it across restarts. Time is passed in; nothing here blocks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fognode.protocols.market.agreement import SLA

MIN_PROBES = 3                 # probes a window needs before it is judged
PPM = 1_000_000
MAX_WINDOWS_KEPT = 100_000


@dataclass(frozen=True)
class WindowVerdict:
    """One judged observation window."""

    window: int
    start: float
    end: float
    probes: int
    failures: int
    breached: bool
    judged: bool               # False: fewer than MIN_PROBES probes (nothing can be claimed)

    @property
    def uptime_bp(self) -> int:
        return (self.probes - self.failures) * 10_000 // self.probes if self.probes else 0

    def view(self) -> dict[str, Any]:
        return {"window": self.window, "start": self.start, "end": self.end, "probes": self.probes,
                "failures": self.failures, "uptime_bp": self.uptime_bp, "breached": self.breached,
                "judged": self.judged}


def breached(sla: SLA, probes: int, failures: int, min_probes: int = MIN_PROBES) -> bool:
    """The ledger's slashing rule (escrow.state_problem) on one window's counts."""
    if probes < max(1, min_probes):
        return False
    return (probes - failures) * PPM < sla.uptime_bp * 100 * probes


@dataclass
class SlaMonitor:
    sla: SLA
    start: float
    deadline: float
    probe_interval: float
    min_probes: int = MIN_PROBES
    counts: dict[int, list[int]] = field(default_factory=dict)   # window -> [probes, failures]
    rtt_sum_ms: int = 0
    rtt_max_ms: int = 0
    answered: int = 0
    judged_upto: int = 0           # windows below this index were judged (tick)
    last_probe: float | None = None

    def __post_init__(self) -> None:
        if self.probe_interval <= 0:
            raise ValueError("probe_interval must be positive")
        if self.deadline <= self.start:
            raise ValueError("deadline must be after start")

    # ---- windows ------------------------------------------------------------------------------

    @property
    def window_count(self) -> int:
        """Windows that end by the deadline (the only ones judged)."""
        return min(MAX_WINDOWS_KEPT, int((self.deadline - self.start) // self.sla.window))

    def window_of(self, t: float) -> int | None:
        if t < self.start:
            return None
        k = int((t - self.start) // self.sla.window)
        return k if k < self.window_count else None

    def bounds(self, k: int) -> tuple[float, float]:
        s = self.start + k * self.sla.window
        return s, s + self.sla.window

    def settle_time(self, k: int) -> float:
        """When window k can be judged: its end plus the last probe's answer time."""
        return self.bounds(k)[1] + self.sla.max_response_ms / 1000

    # ---- probes -------------------------------------------------------------------------------

    def next_probe(self) -> float:
        """When the next probe is due (the start, then every probe_interval s)."""
        return self.start if self.last_probe is None else self.last_probe + self.probe_interval

    def done(self, now: float) -> bool:
        """No window is left to probe."""
        return self.window_of(now) is None and now >= self.start

    def record(self, sent: float, rtt_ms: int | None) -> bool:
        """Record a probe sent at `sent` (wall clock) that took `rtt_ms` (None: no answer);
        returns whether it failed. Probes outside every window are not counted."""
        self.last_probe = sent if self.last_probe is None else max(self.last_probe, sent)
        failed = rtt_ms is None or rtt_ms > self.sla.max_response_ms
        if rtt_ms is not None:
            self.answered += 1
            self.rtt_sum_ms += rtt_ms
            self.rtt_max_ms = max(self.rtt_max_ms, rtt_ms)
        k = self.window_of(sent)
        if k is not None and k >= self.judged_upto:
            c = self.counts.setdefault(k, [0, 0])
            c[0] += 1
            c[1] += int(failed)
        return failed

    def verdict(self, k: int) -> WindowVerdict:
        probes, failures = self.counts.get(k, (0, 0))
        s, e = self.bounds(k)
        return WindowVerdict(k, s, e, probes, failures, breached(self.sla, probes, failures, self.min_probes),
                             probes >= self.min_probes)

    def tick(self, now: float) -> list[WindowVerdict]:
        """The windows that became judgeable since the last call (each once, in order)."""
        out = []
        while self.judged_upto < self.window_count and now >= self.settle_time(self.judged_upto):
            out.append(self.verdict(self.judged_upto))
            self.judged_upto += 1
        return out

    # ---- the account --------------------------------------------------------------------------

    def windows(self) -> list[WindowVerdict]:
        """Every judged window, in order."""
        return [self.verdict(k) for k in range(self.judged_upto)]

    def breaches(self) -> list[WindowVerdict]:
        return [v for v in self.windows() if v.breached]

    def penalty_due(self) -> int:
        """penalty per breached window, capped by the collateral."""
        return min(self.sla.penalty * len(self.breaches()), self.sla.collateral)

    def compliance(self, now: float) -> dict[str, Any]:
        """The contract's SLA account so far (what `market.sla` shows)."""
        probes = sum(c[0] for c in self.counts.values())
        failures = sum(c[1] for c in self.counts.values())
        wins = self.windows()
        bad = [v.window for v in wins if v.breached]
        return {"uptime_bp_guaranteed": self.sla.uptime_bp, "max_response_ms": self.sla.max_response_ms,
                "window": self.sla.window, "windows_total": self.window_count, "windows_judged": len(wins),
                "probes": probes, "failures": failures,
                "uptime_bp_observed": (probes - failures) * 10_000 // probes if probes else None,
                "rtt_mean_ms": self.rtt_sum_ms // self.answered if self.answered else None,
                "rtt_max_ms": self.rtt_max_ms if self.answered else None,
                "breached_windows": bad, "compliant": not bad,
                "penalty": self.sla.penalty, "collateral": self.sla.collateral,
                "penalty_due": self.penalty_due(), "probing": not self.done(now),
                "windows": [v.view() for v in wins[-20:]]}

    # ---- persistence --------------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        return {"start": self.start, "deadline": self.deadline, "probe_interval": self.probe_interval,
                "min_probes": self.min_probes, "counts": [[k, p, f] for k, (p, f) in sorted(self.counts.items())],
                "rtt_sum_ms": self.rtt_sum_ms, "rtt_max_ms": self.rtt_max_ms, "answered": self.answered,
                "judged_upto": self.judged_upto, "last_probe": self.last_probe}

    @classmethod
    def from_record(cls, sla: SLA, rec: dict[str, Any]) -> "SlaMonitor":
        """Rebuild from `to_record` output (our own file; KeyError/TypeError/ValueError if not)."""
        m = cls(sla, float(rec["start"]), float(rec["deadline"]), float(rec["probe_interval"]),
                int(rec["min_probes"]))
        m.counts = {int(k): [int(p), int(f)] for k, p, f in rec["counts"]}
        m.rtt_sum_ms, m.rtt_max_ms, m.answered = int(rec["rtt_sum_ms"]), int(rec["rtt_max_ms"]), int(rec["answered"])
        m.judged_upto = int(rec["judged_upto"])
        lp = rec["last_probe"]
        m.last_probe = float(lp) if lp is not None else None
        return m


def prorata_due(cost: int, start: float, deadline: float, now: float) -> int:
    """What a service contract owes at `now`: its whole `cost` spread evenly over
    [start, deadline], rounded down (the provider's debit requests and the customer's check)."""
    if now <= start:
        return 0
    return cost * int(min(now, deadline) - start) // int(deadline - start)


def note_to_sign(asked: int, signed: int, cost: int, max_total: int, start: float, deadline: float,
                 now: float, margin: float) -> int:
    """The customer's answer to a debit request of `asked`: what is due by its own clock plus
    `margin` at most (a provider whose clock runs ahead gets what ours says), never less than
    what it `signed` before (notes are cumulative), never over `max_total`."""
    limit = min(max_total, prorata_due(cost, start, deadline, now + margin))
    return max(min(asked, limit), signed)


def answers_request(due: int, requested: int, cost: int, start: float, deadline: float, asked_at: float,
                    margin: float) -> bool:
    """Whether a co-signed note for `due` answers the provider's request for `requested` made at
    `asked_at` (its clock): all of it, or what the time served cost two margins before it asked,
    so a customer whose clock is behind by up to `margin` still pays in time, and one that
    underpays by more is treated as not paying."""
    return due >= min(requested, prorata_due(cost, start, deadline, asked_at - 2 * margin))
