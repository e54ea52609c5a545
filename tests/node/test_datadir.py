from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fognode.node.datadir import (DataDirLock, create_identity, ensure_datadir, load_identity, socket_path)
from fognode.node.errors import DataDirError


def fognode(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fognode.tools.fognode", *args], capture_output=True, text=True,
                          env={**os.environ, "FOGNODE_PASSPHRASE": "", **(env or {})}, timeout=60)


def test_identity_is_stable_and_private(tmp_path: Path) -> None:
    ensure_datadir(tmp_path)
    key = create_identity(tmp_path)
    assert oct((tmp_path / "identity.key").stat().st_mode & 0o777) == "0o600"
    assert bytes(load_identity(tmp_path)) == bytes(key)


def test_identity_readable_by_others_is_refused(tmp_path: Path) -> None:
    create_identity(tmp_path)
    os.chmod(tmp_path / "identity.key", 0o644)
    with pytest.raises(DataDirError, match="chmod 600"):
        load_identity(tmp_path)


def test_truncated_identity_is_refused(tmp_path: Path) -> None:
    (tmp_path / "identity.key").write_bytes(b"short")
    os.chmod(tmp_path / "identity.key", 0o600)
    with pytest.raises(DataDirError, match="32-byte"):
        load_identity(tmp_path)


def test_lock_refuses_second_holder_naming_the_pid(tmp_path: Path) -> None:
    with DataDirLock(tmp_path):
        with pytest.raises(DataDirError, match=f"pid {os.getpid()}"):
            DataDirLock(tmp_path).acquire()
    with DataDirLock(tmp_path):  # released: can be taken again
        pass


def test_socket_path_over_limit_is_refused() -> None:
    with pytest.raises(DataDirError, match="over the 107-byte limit"):
        socket_path(Path("/tmp/" + "d" * 120))


def test_init_creates_the_data_dir(short_tmp: Path) -> None:
    d = short_tmp / "n"
    r = fognode("init", "--datadir", str(d))
    assert r.returncode == 0, r.stderr
    assert "peer id 12D3KooW" in r.stdout and "wallet  fog1" in r.stdout
    assert (d / "node.toml").read_text() == (Path(__file__).resolve().parents[2] / "node.toml").read_text()
    assert (d / "genesis.json").exists()
    assert oct(d.stat().st_mode & 0o777) == "0o700"
    again = fognode("init", "--datadir", str(d))
    assert again.returncode == 1 and "already initialised" in again.stderr


def test_init_without_passphrase_off_a_terminal_refuses_and_can_be_retried(short_tmp: Path) -> None:
    d = short_tmp / "n"
    env = {k: v for k, v in os.environ.items() if k != "FOGNODE_PASSPHRASE"}
    r = subprocess.run([sys.executable, "-m", "fognode.tools.fognode", "init", "--datadir", str(d)],
                       capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "FOGNODE_PASSPHRASE" in r.stderr
    assert not (d / "identity.key").exists()
    assert fognode("init", "--datadir", str(d), env={"FOGNODE_PASSPHRASE": "s3cret"}).returncode == 0


def test_init_uses_env_datadir(short_tmp: Path) -> None:
    d = short_tmp / "envdir"
    r = fognode("init", env={"FOGNODE_DATADIR": str(d)})
    assert r.returncode == 0, r.stderr
    assert (d / "identity.key").exists()


def test_run_on_uninitialised_datadir_says_what_to_do(short_tmp: Path) -> None:
    r = fognode("run", "--datadir", str(short_tmp / "nothing"))
    assert r.returncode == 1
    assert "fognode init --datadir" in r.stderr


def test_run_with_bad_config_names_key(short_tmp: Path) -> None:
    d = short_tmp / "n"
    assert fognode("init", "--datadir", str(d)).returncode == 0
    (d / "node.toml").write_text("[rpc]\nmax_clients = 'x'\n")
    r = fognode("run", "--datadir", str(d))
    assert r.returncode == 2
    assert "rpc.max_clients: must be an integer" in r.stderr and str(d / "node.toml") in r.stderr
