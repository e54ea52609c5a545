"""Alert rules on the sampled series, in the manner of Prometheus alerting rules (sans-IO).

A rule (one `[[protocols.monitor.alerts]]` table) names a series, a comparison and a threshold,
how long the condition must hold (`for`) and a severity. `parse_rules` checks every field and
refuses a rule naming a series the monitor does not record, naming it and the known ones.

`AlertEngine.observe(values, now)` compares each rule with the newest value of its series: the
condition true starts a pending period; true for `for` seconds fires the alert (once); false
again resolves it. A series with no value this interval leaves its rules as they are. It returns
the alerts that fired or resolved; `firing()` and `recent()` list them for `monitor.alerts`.
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


class AlertEngine:
    def __init__(self, rules: list[AlertRule], *, keep: int = 100) -> None:
        self.rules = rules
        self._pending: dict[str, float] = {}      # rule -> since when the condition holds
        self._firing: dict[str, Alert] = {}
        self._recent: deque[Alert] = deque(maxlen=keep)

    def observe(self, values: Mapping[str, float], now: float) -> list[Alert]:
        changed = []
        for rule in self.rules:
            v = values.get(rule.metric)
            if v is None:
                continue
            if rule.holds(v):
                since = self._pending.setdefault(rule.name, now)
                if rule.name not in self._firing and now - since >= rule.for_s:
                    fired = Alert(rule.name, rule.metric, rule.severity, rule.describe(), v, "firing", now)
                    self._firing[rule.name] = fired
                    changed.append(fired)
            else:
                self._pending.pop(rule.name, None)
                a = self._firing.pop(rule.name, None)
                if a is not None:
                    done = replace(a, state="resolved", value=v, resolved_at=now)
                    self._recent.append(done)
                    changed.append(done)
        return changed

    def firing(self) -> list[Alert]:
        return sorted(self._firing.values(), key=lambda a: a.since)

    def recent(self) -> list[Alert]:
        return list(self._recent)
