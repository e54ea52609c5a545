"""Alert rules: validation naming the key, the pending -> firing -> resolved cycle, and the
state written to a real file and read back (a restart), a corrupt file discarded with a
WARNING naming it."""
from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from fognode.node.errors import ConfigError
from fognode.protocols.monitor.alertfile import load_alert_state, save_alert_state
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
    assert eng.firing_count() == 1                             # node.info's alerts_firing, without the sort
    assert eng.observe({"node.peers": 0}, 130) == []          # fires once
    (done,) = eng.observe({"node.peers": 3}, 140)
    assert done.state == "resolved" and done.resolved_at == 140 and eng.firing() == []
    assert eng.firing_count() == 0
    assert eng.recent() == [done]
    assert eng.observe({"node.peers": 0}, 150) == []          # pending again from zero


def test_state_survives_a_restart_of_the_engine(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rules = parse_rules([{"name": "lonely", "metric": "node.peers", "op": "<", "threshold": 1},
                         {"name": "long", "metric": "node.peers", "op": "<", "threshold": 1, "for": "1h"},
                         {"name": "lag", "metric": "node.loop_lag_p99", "threshold": 1}], BY_NAME)
    eng = AlertEngine(rules)
    eng.observe({"node.peers": 0, "node.loop_lag_p99": 2}, 1000)          # lonely, lag fire; long pends
    eng.observe({"node.loop_lag_p99": 0.1}, 1010)                          # lag resolves
    assert eng.dirty
    path = tmp_path / "alerts.json"
    save_alert_state(path, eng.state(1020))
    assert not eng.dirty and stat.S_IMODE(path.stat().st_mode) == 0o600

    again = AlertEngine(rules)
    assert load_alert_state(path, again, 1500)
    assert [(a.rule, a.since) for a in again.firing()] == [("lonely", 1000)] and again.firing_count() == 1
    assert again.pending() == [{"rule": "long", "since": 1000, "for": 3600.0}]
    assert [a.rule for a in again.recent()] == ["lag"]
    assert again.observe({"node.peers": 0}, 1510) == []                    # the same alert: no second firing
    (fired,) = again.observe({"node.peers": 0}, 4600)                      # the hour counted from 1000
    assert (fired.rule, fired.since) == ("long", 4600)

    # over an hour later: the pending period is dropped (not watched meanwhile), the firing kept
    late = AlertEngine(rules)
    assert load_alert_state(path, late, 1020 + 3601)
    assert [a.rule for a in late.firing()] == ["lonely"] and late.pending() == []
    # a rule changed in the config: its firing alert is not restored
    changed = AlertEngine(parse_rules([{"name": "lonely", "metric": "node.peers", "op": "<", "threshold": 2}], BY_NAME))
    assert changed.restore(json.loads(path.read_text()), 1500) == [
        "firing alert 'lonely': its rule is no longer configured as it was", "pending 'long': no such rule now"]
    assert changed.firing() == []

    # a corrupt or malformed file: discarded with a WARNING naming the path and what is wrong
    bad = [b"{\"v\": 1, \"saved_at\": 10, \"pending\": {}, \"fir", json.dumps({"v": 2}).encode(),
           json.dumps({**json.loads(path.read_text()), "firing": [{"rule": "lonely"}]}).encode(), b"\xff\xfe"]
    for raw, why in zip(bad, ["Unterminated string", "v: not a version 1", "firing[0].metric: not a string", "Expecting value"]):
        path.write_bytes(raw)
        caplog.clear()
        eng3 = AlertEngine(rules)
        with caplog.at_level(logging.WARNING, logger="fognode.monitor"):
            assert not load_alert_state(path, eng3, 1500)
        assert eng3.firing() == [] and eng3.pending() == []
        (rec,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert str(path) in rec.getMessage() and why in rec.getMessage() and "discarding" in rec.getMessage()
    assert not load_alert_state(tmp_path / "none.json", AlertEngine(rules), 0)   # no file: nothing to say
