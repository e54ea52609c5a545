"""[protocols.harvest]: node.toml documents every key with its default, and load_config reads it."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fognode.node.config import defaults_as_toml_values, load_config
from fognode.node.errors import ConfigError
from fognode.node.roles import discover_roles
from fognode.protocols.harvest.config import ROLE_KEYS, HarvestConfig
from fognode.protocols.harvest.policy import KNOBS, HarvestPolicy

REPO_TOML = Path(__file__).resolve().parents[2] / "node.toml"


def harvest_table() -> tuple[dict[str, Any], list[str]]:
    """The [protocols.harvest] table of node.toml and its key lines: the live table once the role
    is registered, else the commented block between the markers."""
    text = REPO_TOML.read_text()
    live = tomllib.loads(text).get("protocols", {}).get("harvest")
    if live is not None:
        start = text.index("[protocols.harvest]")
        block = text[start:].split("\n[", 1)[0]
    else:
        m = re.search(r"^# >>> protocols\.harvest\n(.*?)^# <<< protocols\.harvest$", text, re.S | re.M)
        assert m, "node.toml has neither a [protocols.harvest] table nor its commented block"
        block = "\n".join(line.removeprefix("# ") for line in m.group(1).splitlines())
    table = tomllib.loads(block)["protocols"]["harvest"]
    lines = [ln for ln in block.splitlines() if re.match(r"^[a-z_]+ = ", ln)]
    return table, lines


def roles() -> dict[str, type]:
    out = {c.name: c.Config for c in discover_roles()}
    out.setdefault("harvest", HarvestConfig)
    return out


def test_node_toml_documents_every_key_with_its_default_and_a_comment() -> None:
    table, lines = harvest_table()
    assert table.pop("enabled") is True
    assert table == defaults_as_toml_values(HarvestConfig)
    assert set(table) == set(KNOBS) | set(ROLE_KEYS)
    for ln in lines:
        if not ln.startswith("enabled"):
            assert re.search(r"\S\s+# \S", ln), f"no comment on: {ln}"


def test_node_toml_harvest_block_loads() -> None:
    table, _ = harvest_table()
    cfg = load_config(None, roles=roles(), environ={})
    assert cfg.protocols["harvest"].config == HarvestConfig()
    assert cfg.protocols["harvest"].config.policy() == HarvestPolicy()
    assert table["enabled"] is True


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "node.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("body,match", [
    ("min_battery_pct = 'low'", r"protocols\.harvest\.min_battery_pct: must be a number, got str"),
    ("min_battery_pct = -5", r"protocols\.harvest\.min_battery_pct: must be at least 0"),
    ("max_cpus_pct = 150", r"protocols\.harvest\.max_cpus_pct: must be above 0 and at most 100"),
    ("require_charging = 'yes'", r"protocols\.harvest\.require_charging: must be a boolean"),
    ("window_tue = '8-18'", r"protocols\.harvest\.window_tue: must be"),
    ("min_battery_pct = 97.0", r"protocols\.harvest\.battery_margin_pct: .*could never resume"),
    ("tick_interval = 0.0", r"protocols\.harvest\.tick_interval: must be between 0.1 and 3600"),
    ("trace_mode = 'rewind'", r"protocols\.harvest\.trace_mode: must be one of replay, follow"),
    ("sensors = ''", r"protocols\.harvest\.sensors: must be \"psutil\" or the path"),
    ("min_batery_pct = 5", r"protocols\.harvest: unknown key\(s\) min_batery_pct"),
    ("market_nice = -5", r"protocols\.harvest\.market_nice: must be an integer between 0 and 19"),
    ("manual_nice = 20", r"protocols\.harvest\.manual_nice: must be an integer between 0 and 19"),
    ("market_nice = 'low'", r"protocols\.harvest\.market_nice: must be an integer"),
    ("history_sessions = 5", r"protocols\.harvest\.history_sessions: must be an integer between 10"),
])
def test_bad_keys_name_file_and_key(tmp_path: Path, body: str, match: str) -> None:
    p = write(tmp_path, f"[protocols.harvest]\n{body}\n")
    with pytest.raises(ConfigError, match=match) as e:
        load_config(p, roles=roles(), environ={})
    assert str(p) in str(e.value)


def test_env_and_flags_reach_the_policy(tmp_path: Path) -> None:
    cfg = load_config(None, roles=roles(), environ={"FOGNODE_PROTOCOLS_HARVEST_REQUIRE_CHARGING": "false"},
                      overrides=[("protocols.harvest.window", "22:00-06:00", "--set"),
                                 ("protocols.harvest.enabled", "false", "--set")])
    hs = cfg.protocols["harvest"]
    assert hs.enabled is False
    policy = hs.config.policy()
    assert policy.require_charging is False and policy.window == "22:00-06:00"


def test_trace_path(tmp_path: Path) -> None:
    assert HarvestConfig().trace_path(tmp_path) is None
    assert HarvestConfig(sensors="traces/phone.jsonl").trace_path(tmp_path) == tmp_path / "traces/phone.jsonl"
    assert HarvestConfig(sensors="/abs/t.json").trace_path(tmp_path) == Path("/abs/t.json")
