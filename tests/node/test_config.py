from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fognode.node.config import defaults_as_toml_values, load_config, read_toml, section_types
from fognode.node.errors import ConfigError
from fognode.node.roles import discover_roles

REPO_TOML = Path(__file__).resolve().parents[2] / "node.toml"


def roles() -> dict[str, type]:
    return {c.name: c.Config for c in discover_roles()}


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "node.toml"
    p.write_text(text)
    return p


def test_repo_node_toml_documents_every_key_with_its_default() -> None:
    data = read_toml(REPO_TOML)
    for name, cls in section_types().items():
        assert data.get(name) == defaults_as_toml_values(cls), f"[{name}] in node.toml differs from the code"
    for name, cls in roles().items():
        table = dict(data.get("protocols", {}).get(name, {}))
        assert table.pop("enabled", None) is True, f"[protocols.{name}] must document enabled = true"
        assert table == defaults_as_toml_values(cls), f"[protocols.{name}] in node.toml differs from the code"


def test_repo_node_toml_loads() -> None:
    cfg = load_config(REPO_TOML, roles=roles(), environ={})
    assert cfg.node.log_level == "info"


def test_embedded_defaults_need_no_file() -> None:
    cfg = load_config(None, roles=roles(), environ={})
    assert cfg.source == "embedded defaults"
    assert all(r.enabled for r in cfg.protocols.values())


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    p = write(tmp_path, "[node]\nlog_levle = 'debug'\n")
    with pytest.raises(ConfigError, match=r"node\.toml: node: unknown key\(s\) log_levle"):
        load_config(p, roles=roles(), environ={})


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(write(tmp_path, "[nodes]\n"), roles=roles(), environ={})


def test_wrong_type_names_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rpc\.max_clients: must be an integer, got str"):
        load_config(write(tmp_path, "[rpc]\nmax_clients = 'many'\n"), roles=roles(), environ={})


def test_port_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"protocols\.monitor\.port: port 70000 is out of range"):
        load_config(write(tmp_path, "[protocols.monitor]\nport = 70000\n"), roles=roles(), environ={})


def test_bad_multiaddr_names_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"overlay\.listen"):
        load_config(write(tmp_path, "[overlay]\nlisten = ['/ip4/999.1.1.1/tcp/1']\n"), roles=roles(), environ={})


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[node\n"), roles=roles(), environ={})


def test_env_overrides_file_and_flags_override_env(tmp_path: Path) -> None:
    p = write(tmp_path, "[node]\nregion = 'file'\nlog_level = 'warning'\n")
    env = {"FOGNODE_NODE_REGION": "env", "FOGNODE_PROTOCOLS_MONITOR_PORT": "0", "FOGNODE_DATADIR": "/x"}
    cfg = load_config(p, roles=roles(), environ=env)
    assert cfg.node.region == "env" and cfg.node.log_level == "warning"
    assert cfg.protocols["monitor"].config.port == 0
    cfg = load_config(p, roles=roles(), environ=env, overrides=[("node.region", "flag", "--region")])
    assert cfg.node.region == "flag"


def test_env_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="env FOGNODE_RPC_MAX_CLIENTS: rpc.max_clients: must be an integer"):
        load_config(None, roles=roles(), environ={"FOGNODE_RPC_MAX_CLIENTS": "lots"})


def test_env_unknown_section() -> None:
    with pytest.raises(ConfigError, match="FOGNODE_NOPE_X"):
        load_config(None, roles=roles(), environ={"FOGNODE_NOPE_X": "1"})


def test_role_can_be_disabled() -> None:
    cfg = load_config(None, roles=roles(), environ={}, overrides=[("protocols.monitor.enabled", "false", "--set")])
    assert cfg.protocols["monitor"].enabled is False


def test_list_override_from_text() -> None:
    cfg = load_config(None, roles=roles(), environ={},
                      overrides=[("overlay.listen", "/ip4/127.0.0.1/tcp/0,/ip4/127.0.0.1/tcp/5000", "--set")])
    assert cfg.overlay.listen == ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/5000"]


def test_configs_are_frozen() -> None:
    cfg = load_config(None, roles=roles(), environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node.region = "x"  # type: ignore[misc]


def test_an_unknown_scheduling_policy_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.scheduling: must be one of batch, normal, got 'fast'"):
        load_config(write(tmp_path, "[node]\nscheduling = 'fast'\n"), roles=roles(), environ={})


def test_a_bad_value_from_a_flag_or_env_var_names_it_not_the_file(tmp_path: Path) -> None:
    """A section's own check (a multiaddr, a port range) names where the bad value came from:
    `fognode run --listen garbage` said "node.toml: overlay.listen: ..." before."""
    p = write(tmp_path, "[overlay]\nlisten = ['/ip4/127.0.0.1/tcp/0']\n")
    with pytest.raises(ConfigError, match=r"^--listen: overlay\.listen: 'garbage' is not a valid multiaddr"):
        load_config(p, roles=roles(), environ={}, overrides=[("overlay.listen", '["garbage"]', "--listen")])
    with pytest.raises(ConfigError, match=r"^--metrics-port: protocols\.monitor\.port: port 99999 is out of range"):
        load_config(p, roles=roles(), environ={}, overrides=[("protocols.monitor.port", "99999", "--metrics-port")])
    with pytest.raises(ConfigError, match=r"^env FOGNODE_OVERLAY_BOOTSTRAP: overlay\.bootstrap: .* must end in /p2p/"):
        load_config(p, roles=roles(), environ={"FOGNODE_OVERLAY_BOOTSTRAP": "/ip4/1.2.3.4/tcp/1"})
    # the file's own bad value still names the file
    bad = write(tmp_path, "[overlay]\nlisten = ['garbage']\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: overlay\.listen: 'garbage'"):
        load_config(bad, roles=roles(), environ={}, overrides=[("node.region", "x", "--region")])


@pytest.mark.parametrize(("env", "argv", "origin"), [
    ({"FOGNODE_OVERLAY_PEERS_LOW": "40"}, [], "env FOGNODE_OVERLAY_PEERS_LOW: overlay.peers_low: 40 is above"),
    ({"FOGNODE_PROTOCOLS_MONITOR_PORT": "70000"}, [],
     "env FOGNODE_PROTOCOLS_MONITOR_PORT: protocols.monitor.port: port 70000 is out of range"),
    ({}, ["--set", "overlay.listen=/ip4/1.2.3/tcp/1"],
     "--set overlay.listen=/ip4/1.2.3/tcp/1: overlay.listen: '/ip4/1.2.3/tcp/1' is not a valid multiaddr"),
    ({}, ["--metrics-port", "70000"], "--metrics-port: protocols.monitor.port: port 70000 is out of range"),
])
def test_a_value_a_section_refuses_names_the_variable_or_flag_that_set_it(
        tmp_path: Path, env: dict[str, str], argv: list[str], origin: str) -> None:
    """`fognode run` (a real process): a value refused by a section's own check (a range, a
    multiaddr, peers_low <= peers_high) names the variable or flag it came from, not the file,
    which holds another value (it named <datadir>/node.toml for all of them)."""
    d = tmp_path / "d"
    base = {**os.environ, "FOGNODE_PASSPHRASE": ""}
    run = [sys.executable, "-m", "fognode.tools.fognode"]
    subprocess.run([*run, "init", "--datadir", str(d)], env=base, check=True, capture_output=True, timeout=60)
    p = subprocess.run([*run, "run", "--datadir", str(d), *argv], env={**base, **env},
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert f"fognode: error: {origin}" in p.stderr, p.stderr


def test_a_value_the_file_sets_is_still_blamed_on_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, "[overlay]\npeers_low = 40\n")
    with pytest.raises(ConfigError, match=rf"^{p}: overlay\.peers_low: 40 is above peers_high \(32\)$"):
        load_config(p, roles=roles(), environ={})


def test_the_metrics_host_must_be_an_address_to_listen_on() -> None:
    """`protocols.monitor.host = "notanip"` started the daemon without its monitor role ("cannot
    be bound: Name or service not known; choose another port"): now refused at load, naming it."""
    with pytest.raises(ConfigError, match=r"^--set protocols.monitor.host=notanip: protocols\.monitor\.host: must be an IP"):
        load_config(None, roles=roles(), environ={},
                    overrides=[("protocols.monitor.host", "notanip", "--set protocols.monitor.host=notanip")])
    for ok in ("127.0.0.1", "0.0.0.0", "::", "::1", "localhost"):
        assert load_config(None, roles=roles(), environ={},
                           overrides=[("protocols.monitor.host", ok, "--set")]).protocols["monitor"].config.host == ok


def test_an_alert_hook_whose_program_is_missing_is_refused_at_load(tmp_path: Path) -> None:
    """It was found out at the first alert ("alert hook ... could not be started")."""
    with pytest.raises(ConfigError, match=r"protocols\.monitor\.alert_hook: program 'no-such-notifier' is not"):
        load_config(None, roles=roles(), environ={},
                    overrides=[("protocols.monitor.alert_hook", '["no-such-notifier", "--team", "ops"]', "--set")])
    for ok in (sys.executable, "true"):
        assert load_config(None, roles=roles(), environ={}, overrides=[
            ("protocols.monitor.alert_hook", json.dumps([ok, "-c", "pass"]), "--set")]).protocols["monitor"].config.alert_hook[0] == ok
