"""The wallet keystore: `<datadir>/wallet/`, one file per key, encrypted with a passphrase.

Each key file (`<fog1 address>.json`, mode 0600, written atomically: tmp + fsync + rename +
directory fsync, node.datadir.write_atomic)::

    {"v": 1, "address": "fog1...", "label": "default", "created": 1767225600,
     "kdf": "argon2id", "opslimit": 2, "memlimit": 67108864, "salt": "<hex 16>",
     "box": "<hex: SecretBox(nonce + ciphertext) of the 32-byte Ed25519 seed>", "dev": false}

The box key is Argon2id(passphrase, salt) (nacl.pwhash.argon2id, libsodium's INTERACTIVE
limits: about 0.1 s and 64 MiB per unlock, paid once per daemon start, as it starts:
ledger/submit.py `unlock_wallets`). The address is stored in clear so balances and addresses
work without the passphrase; only signing needs it.

Passphrase (daemons run unattended: `make run`, `fognode devnet`):
- `FOGNODE_PASSPHRASE` in the environment, when set, is the passphrase (also at `fognode init`);
- otherwise `fognode init` on a terminal prompts for it (twice);
- otherwise the wallet stays locked: reads work, `wallet.send` says how to unlock.
An EMPTY passphrase makes a *dev keystore*: the file says `"dev": true`, and every unlock logs a
WARNING that the key is protected by nothing. `fognode devnet` uses that (it sets
FOGNODE_PASSPHRASE=""), never for keys holding real value.

Writes that fail (disk full, read-only filesystem) raise WalletError naming the file and the
cause; the temporary file is removed and the file that was there before is left as it was.

`wallet/default` holds the address of the node's default wallet (the one `wallet.send`,
`wallet.address` and `wallet.balance` use when no address is given).
"""
from __future__ import annotations

import errno
import getpass
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import nacl.exceptions
import nacl.secret
import nacl.utils
from nacl.pwhash import argon2id
from nacl.signing import SigningKey

from fognode.ledger.address import decode_address, encode_address
from fognode.ledger.errors import AddressError, WalletError
from fognode.ledger.genesis import DEV_FUNDING, DEV_STAKE, dev_genesis
from fognode.node.datadir import write_atomic

__all__ = ["Keystore", "WalletInfo", "init_wallet", "default_wallet_address", "resolve_passphrase",
           "dev_genesis", "DEV_FUNDING", "DEV_STAKE", "PASSPHRASE_ENV"]

log = logging.getLogger("fognode.ledger.wallet")

WALLET_DIR = "wallet"
DEFAULT_FILE = "default"
PASSPHRASE_ENV = "FOGNODE_PASSPHRASE"
OPSLIMIT = argon2id.OPSLIMIT_INTERACTIVE
MEMLIMIT = argon2id.MEMLIMIT_INTERACTIVE
MAX_LABEL = 64


@dataclass(frozen=True)
class WalletInfo:
    address: str
    pubkey: bytes
    label: str
    created: int
    dev: bool
    default: bool


def _box_key(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase.encode("utf-8"), salt,
                        opslimit=opslimit, memlimit=memlimit)


class Keystore:
    """Key files under `<datadir>/wallet/`. Unlocked keys are cached in memory for the process."""

    def __init__(self, datadir: Path) -> None:
        self.dir = Path(datadir) / WALLET_DIR
        self._unlocked: dict[bytes, SigningKey] = {}

    def _ensure_dir(self) -> None:
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.dir, 0o700)
        except OSError as e:
            raise WalletError(f"could not create the keystore directory {self.dir}: {e.strerror or e}") from None

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        """Atomic write; WalletError (old file untouched) if it fails."""
        try:
            write_atomic(path, data)
        except OSError as e:
            full = " (the disk is full)" if e.errno == errno.ENOSPC else ""
            raise WalletError(f"could not write wallet file {path}: {e.strerror or e}{full}; "
                              f"the file that was there is unchanged") from None

    def _path(self, pubkey: bytes) -> Path:
        return self.dir / f"{encode_address(pubkey)}.json"

    # -- create / read ------------------------------------------------------------------------

    def create(self, passphrase: str, label: str = "", *, key: SigningKey | None = None) -> bytes:
        """Generate (or import `key`), encrypt and store a key; the first one becomes the
        default. Returns the public key. Raises WalletError if the label is too long or the key
        already exists."""
        if len(label) > MAX_LABEL or not label.isprintable():
            raise WalletError(f"a wallet label is at most {MAX_LABEL} printable characters")
        self._ensure_dir()
        sk = key or SigningKey.generate()
        pub = bytes(sk.verify_key)
        path = self._path(pub)
        if path.exists():
            raise WalletError(f"{path} already exists")
        salt = nacl.utils.random(argon2id.SALTBYTES)
        box = nacl.secret.SecretBox(_box_key(passphrase, salt, OPSLIMIT, MEMLIMIT))
        doc = {
            "v": 1, "address": encode_address(pub), "label": label, "created": int(time.time()),
            "kdf": "argon2id", "opslimit": OPSLIMIT, "memlimit": MEMLIMIT, "salt": salt.hex(),
            "box": bytes(box.encrypt(bytes(sk))).hex(), "dev": passphrase == "",
        }
        if passphrase == "":
            log.warning("wallet %s is a DEV keystore entry with an EMPTY passphrase: anyone who can read "
                        "%s can spend from it. Use FOGNODE_PASSPHRASE for keys that hold real value.",
                        encode_address(pub), path)
        self._write(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
        if self.default() is None:
            try:
                self.set_default(pub)
            except WalletError as e:
                raise WalletError(f"wallet {encode_address(pub)} was stored in {path}, but it could not be made "
                                  f"the default: {e}") from None
        self._unlocked[pub] = sk
        return pub

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            st = path.stat()
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise WalletError(f"no wallet file {path}") from None
        except (OSError, ValueError) as e:
            raise WalletError(f"wallet file {path} is unreadable: {e}") from None
        if st.st_mode & 0o077:
            raise WalletError(f"wallet file {path} is readable by others (mode {oct(st.st_mode & 0o777)}); "
                              f"chmod 600 it")
        if not isinstance(doc, dict) or doc.get("v") != 1 or doc.get("kdf") != "argon2id":
            raise WalletError(f"wallet file {path} is not a version-1 argon2id key file")
        return doc

    def list(self) -> list[WalletInfo]:
        if not self.dir.is_dir():
            return []
        default = self.default()
        out = []
        for p in sorted(self.dir.glob("fog1*.json")):
            doc = self._read(p)
            try:
                pub = decode_address(doc["address"])
            except (AddressError, KeyError):
                raise WalletError(f"wallet file {p} has no valid address") from None
            out.append(WalletInfo(doc["address"], pub, str(doc.get("label", "")), int(doc.get("created", 0)),
                                  bool(doc.get("dev")), pub == default))
        return out

    def has(self, pubkey: bytes) -> bool:
        return self._path(pubkey).exists()

    def default(self) -> bytes | None:
        p = self.dir / DEFAULT_FILE
        try:
            return decode_address(p.read_text().strip())
        except FileNotFoundError:
            return None
        except AddressError as e:
            raise WalletError(f"{p} does not hold a valid address: {e}") from None

    def set_default(self, pubkey: bytes) -> None:
        if not self.has(pubkey):
            raise WalletError(f"no wallet {encode_address(pubkey)} in {self.dir}")
        self._write(self.dir / DEFAULT_FILE, (encode_address(pubkey) + "\n").encode())

    # -- unlock -------------------------------------------------------------------------------

    def unlocked(self, pubkey: bytes) -> SigningKey | None:
        """The signing key of wallet `pubkey` if this process unlocked it already (no file
        read, no key derivation), else None."""
        return self._unlocked.get(pubkey)

    def unlock(self, pubkey: bytes, passphrase: str | None) -> SigningKey:
        """The signing key of wallet `pubkey`. Raises WalletError if there is no such wallet,
        no passphrase was given (None) or it is wrong."""
        sk = self._unlocked.get(pubkey)
        if sk is not None:
            return sk
        path = self._path(pubkey)
        doc = self._read(path)
        if passphrase is None:
            raise WalletError(f"wallet {doc['address']} is locked: start the daemon with {PASSPHRASE_ENV} set")
        try:
            salt = bytes.fromhex(doc["salt"])
            sealed = bytes.fromhex(doc["box"])
            key = _box_key(passphrase, salt, int(doc["opslimit"]), int(doc["memlimit"]))
            seed = nacl.secret.SecretBox(key).decrypt(sealed)
        except nacl.exceptions.CryptoError:
            raise WalletError(f"wrong passphrase for wallet {doc['address']}") from None
        except (KeyError, ValueError, TypeError) as e:
            raise WalletError(f"wallet file {path} is malformed: {e}") from None
        sk = SigningKey(seed)
        if bytes(sk.verify_key) != pubkey:
            raise WalletError(f"wallet file {path} holds a key for another address")
        if doc.get("dev"):
            log.warning("unlocked DEV wallet %s (empty passphrase: not protected)", doc["address"])
        self._unlocked[pubkey] = sk
        return sk

    def lock_all(self) -> None:
        self._unlocked.clear()


def resolve_passphrase(env: Mapping[str, str] | None = None, *, prompt: bool = False,
                       confirm: bool = True) -> str | None:
    """FOGNODE_PASSPHRASE if set (even empty: a dev keystore); else a terminal prompt when
    `prompt` and stdin is a TTY; else None (the wallet stays locked)."""
    env = os.environ if env is None else env
    if PASSPHRASE_ENV in env:
        return env[PASSPHRASE_ENV]
    if prompt and sys.stdin.isatty():
        p1 = getpass.getpass("wallet passphrase (empty = unprotected dev key): ")
        if confirm and getpass.getpass("again: ") != p1:
            raise WalletError("the two passphrases differ")
        return p1
    return None


def init_wallet(datadir: Path, passphrase: str | None) -> str:
    """Create the node's default wallet if it has none; return its fog1 address.

    `passphrase=None` resolves it (FOGNODE_PASSPHRASE, else a prompt on a terminal); raises
    WalletError when there is none (non-interactive without FOGNODE_PASSPHRASE).
    """
    ks = Keystore(datadir)
    existing = ks.default()
    if existing is not None:
        return encode_address(existing)
    if passphrase is None:
        passphrase = resolve_passphrase(prompt=True)
    if passphrase is None:
        raise WalletError(f"no passphrase for the node's wallet: set {PASSPHRASE_ENV} (empty for a dev "
                          f"keystore) or run `fognode init` on a terminal")
    return encode_address(ks.create(passphrase, "default"))


def default_wallet_address(datadir: Path) -> str | None:
    """The fog1 address of the data dir's default wallet (no passphrase needed), or None."""
    pub = Keystore(datadir).default()
    return None if pub is None else encode_address(pub)
