"""`[[protocols.onion.services]]` entries, the service table and key files (services.py,
keyfiles.py), on a real data dir."""
from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from fognode.protocols.onion.address import parse_address
from fognode.protocols.onion.hs_errors import HsConnectError, ServiceConfigError, ServiceError, SocksReply
from fognode.protocols.onion.keyfiles import (load_onion_keyring, load_or_create_service_key,
                                              remove_service_keys, save_onion_keyring, service_dir)
from fognode.protocols.onion.service_ports import Target, parse_services
from fognode.protocols.onion.services import ServiceTable, add_service, load_services

TOML = """
[[protocols.onion.services]]
name = "web"
port = 80
target = "127.0.0.1:8080"

[[protocols.onion.services]]
name = "web"
port = 443
target = "[::1]:8443"

[[protocols.onion.services]]
name = "ssh"
port = 22
target = "localhost:22"
"""


def entries() -> list[Any]:
    return tomllib.loads(TOML)["protocols"]["onion"]["services"]


def test_parse_the_documented_form() -> None:
    ports = parse_services(entries())
    assert [(p.name, p.port, str(p.target)) for p in ports] == [
        ("web", 80, "127.0.0.1:8080"), ("web", 443, "[::1]:8443"), ("ssh", 22, "localhost:22")]


@pytest.mark.parametrize("change, key, words", [
    ({"port": 0}, "services[1].port", "1-65535"),
    ({"port": "80"}, "services[1].port", "port number"),
    ({"port": True}, "services[1].port", "port number"),
    ({"name": "Web Site"}, "services[1].name", "a-z"),
    ({"name": ""}, "services[1].name", "a-z"),
    ({"target": "example.com:80"}, "services[1].target", "not an IP address"),
    ({"target": "127.0.0.1"}, "services[1].target", "not host:port"),
    ({"target": "127.0.0.1:0"}, "services[1].target", "1-65535"),
    ({"target": "127.0.0.1:http"}, "services[1].target", "1-65535"),
    ({"target": "::1:80"}, "services[1].target", r"\[address\]:port"),
    ({"target": "[127.0.0.1]:80"}, "services[1].target", r"\[address\]:port"),
    ({"target": "[::1]80"}, "services[1].target", r"\[address\]:port"),
    ({"target": "0.0.0.0:80"}, "services[1].target", "cannot be connected"),
    ({"target": 8080}, "services[1].target", "string"),
    ({"extra": 1}, "services[1]", "unknown field"),
    ({"port": 80, "name": "web"}, "services[1].port", r"already mapped by protocols.onion.services\[0\]"),
])
def test_refusals_name_the_field(change: dict[str, Any], key: str, words: str) -> None:
    raw = entries()
    raw[1] = {**raw[1], **change}
    with pytest.raises(ServiceConfigError, match=words) as e:
        parse_services(raw)
    assert e.value.key == f"protocols.onion.services{key.removeprefix('services')}"


def test_missing_fields_and_shapes() -> None:
    with pytest.raises(ServiceConfigError) as e:
        parse_services([{"name": "a", "port": 1}])
    assert e.value.key == "protocols.onion.services[0].target"
    with pytest.raises(ServiceConfigError, match="table"):
        parse_services(["web:80"])
    with pytest.raises(ServiceConfigError, match="list"):
        parse_services({"name": "a"})


def test_key_files_are_private_atomic_and_stable(tmp_path: Path) -> None:
    key = load_or_create_service_key(tmp_path, "web")
    d = service_dir(tmp_path, "web")
    secret = d / "hs_ed25519_secret_key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert sorted(os.listdir(d)) == ["hostname", "hs_ed25519_secret_key"]   # no temp files left
    host = (d / "hostname").read_text().strip()
    assert parse_address(host).pubkey == bytes(key.verify_key)
    assert bytes(load_or_create_service_key(tmp_path, "web")) == bytes(key)     # same key on restart
    os.chmod(secret, 0o644)
    with pytest.raises(ServiceError, match="chmod 600"):
        load_or_create_service_key(tmp_path, "web")
    os.chmod(secret, 0o600)
    secret.write_bytes(b"short")
    os.chmod(secret, 0o600)
    with pytest.raises(ServiceError, match="5 bytes"):
        load_or_create_service_key(tmp_path, "web")
    with pytest.raises(ServiceError, match="service name"):
        service_dir(tmp_path, "../etc")
    assert remove_service_keys(tmp_path, "web") and not d.exists()
    assert not remove_service_keys(tmp_path, "web")


def test_onion_keyring_file(tmp_path: Path) -> None:
    node = SigningKey.generate()
    ring = load_onion_keyring(tmp_path, node, rotation=86400, overlap=3600)
    assert ring.current is None
    ring.tick(1_796_000_000)
    save_onion_keyring(tmp_path, ring)
    path = tmp_path / "onion" / "onion_keys"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_onion_keyring(tmp_path, node, rotation=86400, overlap=3600).keys == ring.keys
    with pytest.raises(ServiceError, match="not a valid onion keyring"):
        load_onion_keyring(tmp_path, SigningKey.generate(), rotation=86400, overlap=3600)


def test_load_services_and_lookups(tmp_path: Path) -> None:
    table = load_services(tmp_path, parse_services(entries()))
    web, ssh = table.get("web"), table.get("ssh")
    assert web is not None and ssh is not None and web.address != ssh.address
    assert table.target(web.address, 443) == Target("::1", 8443)
    assert [s.name for s in table.services()] == ["ssh", "web"]
    assert web.to_json() == {"name": "web", "address": web.address.host,
                             "ports": {"443": "[::1]:8443", "80": "127.0.0.1:8080"}}
    with pytest.raises(HsConnectError) as e:
        table.target(web.address, 81)
    assert e.value.reply is SocksReply.CONNECTION_REFUSED
    stranger = parse_address(load_services(tmp_path / "x", parse_services(
        [{"name": "other", "port": 1, "target": "127.0.0.1:1"}])).services()[0].address.host)
    with pytest.raises(HsConnectError) as e:
        table.target(stranger, 80)
    assert e.value.reply is SocksReply.HOST_UNREACHABLE
    # a restart gives the same addresses
    again = load_services(tmp_path, parse_services(entries()))
    assert again.get("web").address == web.address


def test_run_time_add_and_remove() -> None:
    table = ServiceTable()
    key = SigningKey.generate()
    svc = table.add("blog", key, 80, Target("127.0.0.1", 8000))
    with pytest.raises(ServiceError, match="already mapped"):
        table.add("blog", key, 80, Target("127.0.0.1", 8001))
    with pytest.raises(ServiceError, match="another key"):
        table.add("blog", SigningKey.generate(), 81, Target("127.0.0.1", 8001))
    with pytest.raises(ServiceError, match="already has that key"):
        table.add("copy", key, 80, Target("127.0.0.1", 8001))
    table.add("blog", key, 81, Target("127.0.0.1", 8001))
    table.remove("blog", 80)
    assert table.by_address(svc.address) is svc and list(svc.ports) == [81]
    with pytest.raises(ServiceError, match="does not map"):
        table.remove("blog", 80)
    table.remove("blog", 81)            # its last port: the service goes
    assert table.get("blog") is None and table.by_address(svc.address) is None
    with pytest.raises(ServiceError, match="no service"):
        table.remove("blog")


_values = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=40),
                    st.lists(st.integers(), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_values, st.dictionaries(st.sampled_from(["name", "port", "target", "x"]),
                                                   st.one_of(_values, st.sampled_from(
                                                       ["web", "127.0.0.1:80", "[::1]:1", "a:b:c", "[x]:1"])),
                                                   max_size=4)), max_size=4))
def test_arbitrary_entries_only_raise_service_config_error(raw: list[Any]) -> None:
    try:
        parse_services(raw)
    except ServiceConfigError as e:
        assert e.key is not None and e.key.startswith("protocols.onion.services")


def test_add_service_at_run_time(tmp_path: Path) -> None:
    table = load_services(tmp_path, parse_services(entries()))
    web = table.get("web")
    assert web is not None
    svc = add_service(tmp_path, table, {"name": "web", "port": 8080, "target": "127.0.0.1:9000"})
    assert svc is web and table.target(web.address, 8080) == Target("127.0.0.1", 9000)
    blog = add_service(tmp_path, table, {"name": "blog", "port": 80, "target": "127.0.0.1:9001"})
    assert (service_dir(tmp_path, "blog") / "hs_ed25519_secret_key").exists()
    assert table.by_address(blog.address) is blog
    assert table.count() == len(table.services()) == 3
    with pytest.raises(ServiceConfigError) as e:
        add_service(tmp_path, table, {"name": "blog", "port": 80, "target": "nowhere"})
    assert e.value.key == "params.target"
    with pytest.raises(ServiceError, match="already mapped"):
        add_service(tmp_path, table, {"name": "blog", "port": 80, "target": "127.0.0.1:1"})
    table.remove("blog")
    assert table.count() == len(table.services()) == 2
