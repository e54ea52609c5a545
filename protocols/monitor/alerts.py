"""Alert rules on the sampled series, in the manner of Prometheus alerting rules (sans-IO).

A rule (one `[[protocols.monitor.alerts]]` table) names a series, a comparison and a threshold,
how long the condition must hold (`for`) and a severity. `parse_rules` checks every field and
refuses a rule naming a series the monitor does not record, naming it and the known ones.

`AlertEngine.observe(values, now)` compares each rule with the newest value of its series: the
condition true starts a pending period; true for `for` seconds fires the alert (once); false
again resolves it. A series with no value this interval leaves its rules as they are. It returns
the alerts that fired or resolved; `firing()`, `pending()` and `recent()` list them for
`monitor.alerts`.

`state(now)` is the engine's state as JSON (the firing alerts with their `since`, the pending
conditions with theirs, the recent ones), which the role writes to the data dir whenever it
changes; `restore(data, now)` takes it back after a restart, so a firing alert stays the same
alert (no second AlertFired) and a `for` period keeps its progress. It refuses a malformed
state with ValueError naming the field, drops what belongs to rules no longer configured (or
changed), and drops the pending periods when the state is older than OUTAGE_TOLERANCE (the
condition was not watched meanwhile; Prometheus's default for-outage-tolerance is the same hour).
"""
from __future__ import annotations

import math
import operator
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping

from fognode.node.errors import ConfigError
from fognode.protocols.monitor.series import parse_duration

OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}
SEVERITIES = ("info", "warning", "critical")
STATE_VERSION = 1
OUTAGE_TOLERANCE = 3600.0
RULE_KEYS = {"name", "metric", "op", "threshold", "for", "severity"}


@dataclass(frozen=True)
class AlertRule:
    name: str
    metric: str
    op: str
    threshold: float
    for_s: float
    severity: str

    def holds(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)

    def describe(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}" + (f" for {self.for_s:g} s" if self.for_s else "")


@dataclass(frozen=True)
class Alert:
    rule: str
    metric: str
    severity: str
    condition: str
    value: float
    state: str                 # "firing" | "resolved"
    since: float               # when it fired
    resolved_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "metric": self.metric, "severity": self.severity,
                "condition": self.condition, "value": self.value, "state": self.state,
                "since": self.since, "resolved_at": self.resolved_at}


def parse_rules(raw: Iterable[Any], known: Iterable[str], *, source: str | None = None) -> list[AlertRule]:
    """Validate `[[protocols.monitor.alerts]]` tables. Raises ConfigError naming the key."""
    known_set = set(known)
    rules: list[AlertRule] = []
    for i, r in enumerate(raw):
        key = f"protocols.monitor.alerts[{i}]"
        if not isinstance(r, Mapping):
            raise ConfigError(f"must be a table (metric, op, threshold, for, severity), got {r!r}",
                              source=source, key=key)
        unknown = sorted(set(r) - RULE_KEYS)
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(RULE_KEYS))}",
                              source=source, key=key)
        metric = r.get("metric")
        if not isinstance(metric, str) or metric not in known_set:
            raise ConfigError(f"unknown metric {metric!r}; the monitor records: {', '.join(sorted(known_set))}",
                              source=source, key=f"{key}.metric")
        op = r.get("op", ">")
        if op not in OPS:
            raise ConfigError(f"op must be one of {' '.join(OPS)}, got {op!r}", source=source, key=f"{key}.op")
        thr = r.get("threshold")
        if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(thr):
            raise ConfigError(f"threshold must be a number, got {thr!r}", source=source, key=f"{key}.threshold")
        dur = r.get("for", 0)
        try:
            for_s = float(dur) if isinstance(dur, (int, float)) and not isinstance(dur, bool) \
                else parse_duration(dur) if isinstance(dur, str) else -1.0
        except ValueError as e:
            raise ConfigError(str(e), source=source, key=f"{key}.for") from None
        if not 0 <= for_s <= 30 * 86400:
            raise ConfigError(f"for must be a duration between 0 and 30d, got {dur!r}", source=source,
                              key=f"{key}.for")
        sev = r.get("severity", "warning")
        if sev not in SEVERITIES:
            raise ConfigError(f"severity must be one of {', '.join(SEVERITIES)}, got {sev!r}", source=source,
                              key=f"{key}.severity")
        name = r.get("name", f"{metric} {op} {thr:g}")
        if not isinstance(name, str) or not 0 < len(name) <= 100:
            raise ConfigError("name must be a string of 1-100 characters", source=source, key=f"{key}.name")
        if any(x.name == name for x in rules):
            raise ConfigError(f"two rules are named {name!r}", source=source, key=f"{key}.name")
        rules.append(AlertRule(name, metric, op, float(thr), for_s, sev))
    return rules


def _alert(raw: Any, field: str, state: str) -> Alert:
    """An Alert from its to_dict() form. Raises ValueError naming the field."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{field}: not an object")
    for k in ("rule", "metric", "severity", "condition"):
        if not isinstance(raw.get(k), str):
            raise ValueError(f"{field}.{k}: not a string")
    for k in ("value", "since") + (("resolved_at",) if state == "resolved" else ()):
        v = raw.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (k != "value" and not math.isfinite(v)):
            raise ValueError(f"{field}.{k}: not a number")
    if raw.get("state") != state:
        raise ValueError(f"{field}.state: {raw.get('state')!r}, expected {state!r}")
    return Alert(raw["rule"], raw["metric"], raw["severity"], raw["condition"], float(raw["value"]), state,
                 float(raw["since"]), float(raw["resolved_at"]) if state == "resolved" else None)


class AlertEngine:
    def __init__(self, rules: list[AlertRule], *, keep: int = 100) -> None:
        self.rules = rules
        self._pending: dict[str, float] = {}      # rule -> since when the condition holds
        self._firing: dict[str, Alert] = {}
        self._recent: deque[Alert] = deque(maxlen=keep)
        self.dirty = False                        # changed since state() was last taken

    def observe(self, values: Mapping[str, float], now: float) -> list[Alert]:
        changed = []
        for rule in self.rules:
            v = values.get(rule.metric)
            if v is None:
                continue
            if rule.holds(v):
                if rule.name not in self._pending:
                    self._pending[rule.name] = now
                    self.dirty = True
                since = self._pending[rule.name]
                if rule.name not in self._firing and now - since >= rule.for_s:
                    fired = Alert(rule.name, rule.metric, rule.severity, rule.describe(), v, "firing", now)
                    self._firing[rule.name] = fired
                    changed.append(fired)
            else:
                if self._pending.pop(rule.name, None) is not None:
                    self.dirty = True
                a = self._firing.pop(rule.name, None)
                if a is not None:
                    done = replace(a, state="resolved", value=v, resolved_at=now)
                    self._recent.append(done)
                    changed.append(done)
        self.dirty |= bool(changed)
        return changed

    def firing(self) -> list[Alert]:
        return sorted(self._firing.values(), key=lambda a: a.since)

    def firing_count(self) -> int:
        """`len(firing())` without the sort (health_detail)."""
        return len(self._firing)

    def pending(self) -> list[dict[str, Any]]:
        """Conditions that hold but not yet for their rule's `for`: rule, since, for (s)."""
        fors = {r.name: r.for_s for r in self.rules}
        return [{"rule": name, "since": since, "for": fors[name]} for name, since in sorted(self._pending.items())
                if name not in self._firing]

    def recent(self) -> list[Alert]:
        return list(self._recent)

    def state(self, now: float) -> dict[str, Any]:
        """The engine's state as JSON-able data (see the module docstring); clears `dirty`."""
        self.dirty = False
        return {"v": STATE_VERSION, "saved_at": now, "pending": dict(self._pending),
                "firing": [a.to_dict() for a in self.firing()], "recent": [a.to_dict() for a in self._recent]}

    def restore(self, data: Any, now: float) -> list[str]:
        """Take back a `state()` saved earlier. Returns what was dropped, one line each; raises
        ValueError naming the field when `data` is not such a state (nothing is taken then)."""
        if not isinstance(data, Mapping) or data.get("v") != STATE_VERSION:
            raise ValueError(f"v: not a version {STATE_VERSION} alert state")
        saved = data.get("saved_at")
        if isinstance(saved, bool) or not isinstance(saved, (int, float)) or not math.isfinite(saved):
            raise ValueError("saved_at: not a number")
        pend = data.get("pending")
        if not isinstance(pend, Mapping) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for k, v in pend.items()):
            raise ValueError("pending: not an object of rule names to times")
        for key in ("firing", "recent"):
            if not isinstance(data.get(key), list):
                raise ValueError(f"{key}: not a list")
        firing = [_alert(a, f"firing[{i}]", "firing") for i, a in enumerate(data["firing"])]
        recent = [_alert(a, f"recent[{i}]", "resolved") for i, a in enumerate(data["recent"])]
        rules = {r.name: r for r in self.rules}
        dropped = []

        def same(a: Alert) -> bool:
            r = rules.get(a.rule)
            return r is not None and (r.metric, r.describe(), r.severity) == (a.metric, a.condition, a.severity)

        for a in firing:
            if same(a):
                self._firing[a.rule] = a
                self._pending.setdefault(a.rule, a.since)
            else:
                dropped.append(f"firing alert {a.rule!r}: its rule is no longer configured as it was")
        stale = now - saved > OUTAGE_TOLERANCE
        for name, since in pend.items():
            if name in self._pending:
                continue
            if name not in rules:
                dropped.append(f"pending {name!r}: no such rule now")
            elif stale:
                dropped.append(f"pending {name!r}: the state is {now - saved:.0f} s old, over "
                               f"{OUTAGE_TOLERANCE:g} s: the condition was not watched meanwhile")
            else:
                self._pending[name] = float(since)
        self._recent.extend(recent)
        return dropped
