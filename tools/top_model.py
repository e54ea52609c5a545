"""What `fognode-cli top` shows, computed from the daemon's answers: no terminal, no socket.

`TopModel.ingest(reading)` takes one poll (a dict of method -> result, or -> an exception
text) and keeps what the view needs: the node, its roles' health, peers, rates and event-loop
lag over the last interval (from two `monitor.figures` readings, cumulative like Prometheus
counters), short histories for sparklines, the FL rounds as they complete (from `fl.sessions`
and each live session's compact `fl.status`), the network's nodes and the firing alerts (when
the node has `monitor.alerts`), and the newest value of each series the monitor records
(`monitor.metrics`: the harvest, market and onion lines). Standard library only.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

HISTORY = 60            # points kept per sparkline
ROUND_LOG = 200         # FL round lines kept


def delta_lag(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float] | None:
    """(mean, p99 upper bound) in seconds of the loop-lag probes between two cumulative
    histogram readings ({count, sum, buckets: [[le or None, cumulative]]}); None if none ran."""
    n = b["count"] - a["count"]
    if n <= 0:
        return None
    before = {le: c for le, c in a["buckets"]}
    p99: float | None = None
    last_finite = 0.0
    for le, c in b["buckets"]:
        if le is not None:
            last_finite = le
        if p99 is None and c - before.get(le, 0) >= 0.99 * n:
            p99 = last_finite if le is None else le
    return (b["sum"] - a["sum"]) / n, (last_finite if p99 is None else p99)


@dataclass
class RoundLine:
    at: float
    session: str
    row: dict[str, Any]


@dataclass
class TopModel:
    info: dict[str, Any] = field(default_factory=dict)
    peers: list[dict[str, Any]] = field(default_factory=list)
    network: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] | None = None          # None: the node has no monitor.alerts
    rates: dict[str, float] = field(default_factory=dict)  # gossip_in/out/drops, rpc per s, cpu %
    lag: tuple[float, float] | None = None
    history: dict[str, deque[float]] = field(default_factory=dict)
    rounds: deque[RoundLine] = field(default_factory=lambda: deque(maxlen=ROUND_LOG))
    sessions: list[dict[str, Any]] = field(default_factory=list)
    recorded: dict[str, float] = field(default_factory=dict)   # series -> newest value (monitor.metrics)
    errors: dict[str, str] = field(default_factory=dict)   # method -> why it failed this poll
    polls: int = 0
    updated: float = 0.0
    _figures: dict[str, Any] | None = None
    _seen_rounds: dict[str, int] = field(default_factory=dict)

    def _push(self, key: str, value: float) -> None:
        self.history.setdefault(key, deque(maxlen=HISTORY)).append(value)

    def ingest(self, reading: dict[str, Any], now: float | None = None) -> None:
        """Take one poll: {method: result} (a str value under "errors" names failed calls)."""
        now = time.time() if now is None else now
        self.polls += 1
        self.updated = now
        self.errors = dict(reading.get("errors", {}))
        self.info = reading.get("node.info") or self.info
        self.peers = reading.get("node.peers", self.peers) or []
        self.network = reading.get("monitor.network", self.network) or []
        if "monitor.alerts" in reading:
            a = reading["monitor.alerts"]
            self.alerts = list(a.get("firing", [])) if isinstance(a, dict) else []   # {firing, recent, rules}
        if isinstance(reading.get("monitor.metrics"), list):
            self.recorded = {s["name"]: s["value"] for s in reading["monitor.metrics"] if s.get("value") is not None}
        f = reading.get("monitor.figures")
        if f is not None:
            self._figures_in(f)
        self._push("peers", float(len(self.peers)))
        sessions = reading.get("fl.sessions")
        if sessions is not None:
            self.sessions = sessions
        for sid, status in (reading.get("fl.status") or {}).items():
            rows = status.get("rounds_table") or []
            seen = self._seen_rounds.get(sid)
            if seen is None:        # first look: the rounds done so far, then the new ones
                seen = 0
            for row in rows[seen:]:
                self.rounds.append(RoundLine(now, sid, row))
            self._seen_rounds[sid] = max(seen, len(rows))

    def _figures_in(self, f: dict[str, Any]) -> None:
        prev, self._figures = self._figures, f
        if prev is None:
            return
        dt = f["t"] - prev["t"]
        if dt <= 0:
            return
        for key in ("gossip_in", "gossip_out", "gossip_drops", "rpc_requests"):
            d = f[key] - prev[key]
            if d >= 0:
                self.rates[key] = d / dt
                self._push(key, d / dt)
        cpu = (f["cpu_s"] - prev["cpu_s"]) / dt * 100
        if cpu >= 0:
            self.rates["cpu"] = cpu
            self._push("cpu", cpu)
        lag = delta_lag(prev["loop_lag"], f["loop_lag"])
        if lag is not None:
            self.lag = lag
            self._push("lag_ms", lag[0] * 1000)

    def role_lines(self) -> list[tuple[str, str, str]]:
        """(role, state, figures) of the harvest, market and onion series recorded so far."""
        r, out = self.recorded, []

        def part(key: str, text: str) -> list[str]:
            return [text.format(r[key])] if key in r else []

        if "harvest.running" in r:
            out.append(("harvest", "running" if r["harvest.running"] >= 1 else "suspended", " · ".join(
                part("harvest.cpu_rate", "cpu {:.3g} cores") + part("harvest.fuel_rate", "fuel {:.3g}/s")
                + part("harvest.suspensions_rate", "suspensions {:.3g}/s"))))
        if "market.offers" in r:
            out.append(("market", f"{r['market.offers']:.0f} offers", " · ".join(
                part("market.contracts_active", "{:.0f} contracts") + part("market.paid_rate", "paid {:.3g} µ/s")
                + part("market.fuel_rate", "fuel {:.3g}/s") + part("market.rejected_rate", "refused {:.3g}/s"))))
        if "onion.circuits_open" in r or "onion.relay_circuits" in r:
            out.append(("onion", f"{r.get('onion.circuits_open', 0):.0f} circuits", " · ".join(
                part("onion.relay_circuits", "relays {:.0f}") + part("onion.build_mean", "build {:.3g} s")
                + part("onion.cells_rate", "cells {:.3g}/s") + part("onion.link_bytes_rate", "{:.3g} B/s")
                + part("onion.socks_rate", "socks {:.3g}/s"))))
        return out

    def live_sessions(self, limit: int = 3) -> list[str]:
        """Sessions worth a `fl.status` this poll: running ones, and those whose rounds moved."""
        out = [s["session_id"] for s in self.sessions
               if s.get("state") == "running" or self._seen_rounds.get(s["session_id"], -1) < s.get("rounds_done", 0)]
        return out[:limit]


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Any, width: int = 30) -> str:
    """The last `width` values as block characters scaled from 0 to their maximum."""
    vals = list(values)[-width:]
    if not vals:
        return ""
    top = max(vals) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int(v / top * (len(SPARKS) - 1) + 0.5))] if v > 0 else " " for v in vals)
