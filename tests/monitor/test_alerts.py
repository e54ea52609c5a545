"""Alert rules: validation naming the key, and the pending -> firing -> resolved cycle."""
from __future__ import annotations

import pytest

from fognode.node.errors import ConfigError
from fognode.protocols.monitor.alerts import AlertEngine, parse_rules
from fognode.protocols.monitor.sampled import BY_NAME


def test_rules_are_validated_naming_the_key() -> None:
    (r,) = parse_rules([{"metric": "node.peers", "op": "<", "threshold": 1, "for": "30s",
                         "severity": "critical"}], BY_NAME)
    assert (r.name, r.for_s, r.severity) == ("node.peers < 1", 30.0, "critical")
    cases = [
        ({"metric": "node.peer", "threshold": 1}, "alerts[0].metric", "node.peer"),
        ({"metric": "node.peers", "op": "=<", "threshold": 1}, "alerts[0].op", "=<"),
        ({"metric": "node.peers", "threshold": "one"}, "alerts[0].threshold", "one"),
        ({"metric": "node.peers", "threshold": 1, "for": "soon"}, "alerts[0].for", "soon"),
        ({"metric": "node.peers", "threshold": 1, "severity": "bad"}, "alerts[0].severity", "bad"),
        ({"metric": "node.peers", "threshold": 1, "treshold": 2}, "alerts[0]", "treshold"),
    ]
    for raw, key, word in cases:
        with pytest.raises(ConfigError) as e:
            parse_rules([raw], BY_NAME)
        assert e.value.key == f"protocols.monitor.{key}" and word in str(e.value), (raw, str(e.value))


def test_for_duration_fires_once_and_resolves() -> None:
    rules = parse_rules([{"metric": "node.peers", "op": "<", "threshold": 1, "for": 20}], BY_NAME)
    eng = AlertEngine(rules)
    assert eng.observe({"node.peers": 0}, 100) == []          # pending
    assert eng.observe({}, 110) == []                          # no sample: unchanged
    assert eng.observe({"node.peers": 0}, 115) == []
    (fired,) = eng.observe({"node.peers": 0}, 120)
    assert fired.state == "firing" and fired.since == 120 and eng.firing() == [fired]
    assert eng.observe({"node.peers": 0}, 130) == []          # fires once
    (done,) = eng.observe({"node.peers": 3}, 140)
    assert done.state == "resolved" and done.resolved_at == 140 and eng.firing() == []
    assert eng.recent() == [done]
    assert eng.observe({"node.peers": 0}, 150) == []          # pending again from zero
