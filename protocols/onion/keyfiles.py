"""The onion role's key files in the data dir.

Layout of `<datadir>/onion/` (directories mode 0700, secrets mode 0600, every write atomic:
tmp + fsync + rename + directory fsync, node.datadir.write_atomic)::

    onion_keys                         the relay's onion keyring (onionkey.OnionKeyring.encode)
    services/<name>/hs_ed25519_secret_key   a hidden service's 32-byte Ed25519 seed
    services/<name>/hostname           its `.fog` address and a newline (0644, for operators,
                                       like Tor's HiddenServiceDir/hostname; never read back)

A secret readable by group or others is refused (as node.datadir.load_identity does), with
the chmod that fixes it. Errors are `ServiceError` naming the path.
"""
from __future__ import annotations

import stat
from pathlib import Path

from nacl.signing import SigningKey

from fognode.node.datadir import write_atomic
from fognode.node.errors import RemoteProtocolError
from fognode.protocols.onion.address import address_from_pubkey
from fognode.protocols.onion.hs_errors import ServiceError
from fognode.protocols.onion.onionkey import OnionKeyring
from fognode.protocols.onion.service_ports import NAME_RE

ONION_DIR = "onion"
SERVICES_DIR = "services"
SECRET_KEY_FILE = "hs_ed25519_secret_key"
HOSTNAME_FILE = "hostname"
ONION_KEYS_FILE = "onion_keys"


def _ensure_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(0o700)


def _read_secret(path: Path, size: int) -> bytes:
    try:
        st = path.stat()
        data = path.read_bytes()
    except PermissionError:
        raise ServiceError(f"{path}: permission denied") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ServiceError(f"{path} is readable by other users (mode {oct(stat.S_IMODE(st.st_mode))}); "
                           f"run `chmod 600 {path}`")
    if size and len(data) != size:
        raise ServiceError(f"{path} is {len(data)} bytes; expected {size}")
    return data


def service_dir(datadir: Path, name: str) -> Path:
    if not NAME_RE.match(name):
        raise ServiceError(f"service name {name!r} must be 1-64 of a-z, 0-9, '_', '-' (starting "
                           "with a letter or digit)")
    return datadir / ONION_DIR / SERVICES_DIR / name


def load_or_create_service_key(datadir: Path, name: str) -> SigningKey:
    """The Ed25519 key of service `name`, made (and its hostname file written) on first use."""
    d = service_dir(datadir, name)
    path = d / SECRET_KEY_FILE
    if path.exists():
        key = SigningKey(_read_secret(path, 32))
    else:
        _ensure_dir(d)
        key = SigningKey.generate()
        write_atomic(path, bytes(key), 0o600)
    host = address_from_pubkey(bytes(key.verify_key)).host
    hostname = d / HOSTNAME_FILE
    if not hostname.exists() or hostname.read_text(encoding="ascii", errors="replace").strip() != host:
        write_atomic(hostname, (host + "\n").encode("ascii"), 0o644)
    return key


def remove_service_keys(datadir: Path, name: str) -> bool:
    """Delete service `name`'s key files (its address is gone for good); False if none."""
    d = service_dir(datadir, name)
    found = False
    for f in (SECRET_KEY_FILE, HOSTNAME_FILE):
        try:
            (d / f).unlink()
            found = True
        except FileNotFoundError:
            pass
    try:
        d.rmdir()
    except OSError:
        pass
    return found


def load_onion_keyring(datadir: Path, identity: SigningKey, *, rotation: int, overlap: int) -> OnionKeyring:
    """The relay's keyring from its file, or an empty one (the first `tick` makes a key)."""
    path = datadir / ONION_DIR / ONION_KEYS_FILE
    if not path.exists():
        return OnionKeyring(identity, rotation=rotation, overlap=overlap)
    data = _read_secret(path, 0)
    try:
        return OnionKeyring.decode(identity, data, rotation=rotation, overlap=overlap)
    except (RemoteProtocolError, ValueError) as e:
        raise ServiceError(f"{path} is not a valid onion keyring of this node ({e}); move it away "
                           "and restart to make a new one") from None


def save_onion_keyring(datadir: Path, ring: OnionKeyring) -> None:
    d = datadir / ONION_DIR
    _ensure_dir(d)
    write_atomic(d / ONION_KEYS_FILE, ring.encode(), 0o600)
