from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from fognode.ledger.address import decode_address, encode_address
from fognode.ledger.errors import WalletError
from fognode.ledger.genesis import DEV_FUNDING, DEV_STAKE, Genesis, dev_genesis
from fognode.ledger.wallet import Keystore, default_wallet_address, init_wallet, resolve_passphrase


def test_create_unlock_and_file_mode(tmp_path: Path) -> None:
    ks = Keystore(tmp_path)
    pub = ks.create("correct horse", "main")
    p = tmp_path / "wallet" / f"{encode_address(pub)}.json"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "wallet").stat().st_mode) == 0o700
    doc = json.loads(p.read_text())
    assert doc["kdf"] == "argon2id" and not doc["dev"] and "seed" not in doc
    # the seed is not in the file in clear
    assert bytes(SigningKey(bytes(32))).hex() not in p.read_text()
    fresh = Keystore(tmp_path)
    sk = fresh.unlock(pub, "correct horse")
    assert bytes(sk.verify_key) == pub
    assert [w.address for w in fresh.list()] == [encode_address(pub)] and fresh.list()[0].default
    assert not list((tmp_path / "wallet").glob(".*tmp*"))


def test_wrong_or_missing_passphrase(tmp_path: Path) -> None:
    pub = Keystore(tmp_path).create("right")
    with pytest.raises(WalletError, match="wrong passphrase"):
        Keystore(tmp_path).unlock(pub, "wrong")
    with pytest.raises(WalletError, match="locked"):
        Keystore(tmp_path).unlock(pub, None)


def test_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    pub = Keystore(tmp_path).create("x")
    os.chmod(tmp_path / "wallet" / f"{encode_address(pub)}.json", 0o644)
    with pytest.raises(WalletError, match="readable by others"):
        Keystore(tmp_path).unlock(pub, "x")


def test_dev_keystore_is_marked_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fognode.ledger.wallet"):
        addr = init_wallet(tmp_path, "")
    assert "EMPTY passphrase" in caplog.text
    assert Keystore(tmp_path).list()[0].dev
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fognode.ledger.wallet"):
        Keystore(tmp_path).unlock(decode_address(addr), "")
    assert "DEV wallet" in caplog.text


def test_init_wallet_is_idempotent_and_default_is_public(tmp_path: Path) -> None:
    a = init_wallet(tmp_path, "pw")
    assert init_wallet(tmp_path, "other") == a
    assert default_wallet_address(tmp_path) == a
    assert default_wallet_address(tmp_path / "nothing") is None
    ks = Keystore(tmp_path)
    second = ks.create("pw", "second")
    assert ks.default() == decode_address(a)
    ks.set_default(second)
    assert default_wallet_address(tmp_path) == encode_address(second)


def test_init_wallet_without_any_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FOGNODE_PASSPHRASE", raising=False)
    with pytest.raises(WalletError, match="FOGNODE_PASSPHRASE"):
        init_wallet(tmp_path, None)   # stdin is not a terminal under pytest
    monkeypatch.setenv("FOGNODE_PASSPHRASE", "from-env")
    addr = init_wallet(tmp_path, None)
    Keystore(tmp_path).unlock(decode_address(addr), "from-env")


def test_resolve_passphrase() -> None:
    assert resolve_passphrase({"FOGNODE_PASSPHRASE": ""}) == ""
    assert resolve_passphrase({"FOGNODE_PASSPHRASE": "p"}) == "p"
    assert resolve_passphrase({}) is None


def test_bad_label(tmp_path: Path) -> None:
    with pytest.raises(WalletError, match="label"):
        Keystore(tmp_path).create("", "x" * 65)


def test_dev_genesis_is_valid_json_and_funds_wallets() -> None:
    nodes = [SigningKey.generate() for _ in range(4)]
    wallets = [SigningKey.generate() for _ in range(4)]
    doc = dev_genesis("fog-dev-1", [(bytes(k.verify_key), DEV_STAKE) for k in nodes],
                      {bytes(w.verify_key): DEV_FUNDING for w in wallets})
    g = Genesis.from_node_genesis(json.loads(json.dumps({"ledger": doc})))
    assert len(g.committee.members) == 4 and all(a == DEV_FUNDING for _, a in g.balances)
    assert g.chain_id == "fog-dev-1"
