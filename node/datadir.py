"""The data dir: identity key, node.toml copy, genesis, lock file, control socket.

Layout of `<datadir>` (default `~/.fognode`, or FOGNODE_DATADIR):
    identity.key    32-byte Ed25519 seed, mode 0600 (the libp2p peer id derives from it)
    node.toml       the node's config (a copy of the documented defaults at init)
    genesis.json    the network's genesis (shared by every node of a network)
    fognode.lock    held (flock) by the running daemon; holds its pid
    fognode.sock    the JSON-RPC control socket, mode 0600
    <role>/         each role's own files (LevelDB stores, keystores, models)
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from fognode.node.errors import DataDirError

IDENTITY = "identity.key"
CONFIG = "node.toml"
GENESIS = "genesis.json"
LOCK = "fognode.lock"
SOCKET = "fognode.sock"
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the terminating NUL


def resolve_datadir(arg: str | os.PathLike[str] | None) -> Path:
    """--datadir, else $FOGNODE_DATADIR, else ~/.fognode (absolute, not created)."""
    raw = arg or os.environ.get("FOGNODE_DATADIR") or "~/.fognode"
    return Path(raw).expanduser().absolute()


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` so that a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def default_config_text() -> str:
    """The documented node.toml shipped with the package (the repo root's node.toml)."""
    return (resources.files("fognode.node") / "node.toml").read_text(encoding="utf-8")


def create_identity(datadir: Path) -> SigningKey:
    key = SigningKey.generate()
    write_atomic(datadir / IDENTITY, bytes(key), 0o600)
    return key


def load_identity(datadir: Path) -> SigningKey:
    """Read the node's Ed25519 key; DataDirError if missing, malformed or readable by others."""
    path = datadir / IDENTITY
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataDirError(f"{path} does not exist: run `fognode init --datadir {datadir}` first") from None
    except PermissionError:
        raise DataDirError(f"{path}: permission denied") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise DataDirError(f"{path} is readable by other users (mode {oct(stat.S_IMODE(st.st_mode))}); "
                           f"run `chmod 600 {path}`")
    if len(data) != 32:
        raise DataDirError(f"{path} is {len(data)} bytes; an identity key is a 32-byte Ed25519 seed")
    return SigningKey(data)


def read_genesis(datadir: Path) -> dict[str, Any]:
    path = datadir / GENESIS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataDirError(f"{path} does not exist: run `fognode init --datadir {datadir}` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataDirError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DataDirError(f"{path}: a genesis is a JSON object")
    return data


def write_genesis(datadir: Path, genesis: dict[str, Any]) -> None:
    write_atomic(datadir / GENESIS, (json.dumps(genesis, indent=2, sort_keys=True) + "\n").encode(), 0o644)


def socket_path(datadir: Path, configured: str = "") -> Path:
    """The control socket path (`configured` relative to the data dir unless absolute);
    DataDirError if it is over the 107-byte sun_path limit."""
    path = datadir / Path(configured).expanduser() if configured else datadir / SOCKET  # relative: to datadir
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise DataDirError(f"control socket path {path} is {len(os.fsencode(path))} bytes, over the "
                           f"{SUN_PATH_MAX}-byte limit of unix sockets; use a shorter --datadir or set rpc.socket")
    return path


@dataclass
class DataDirLock:
    """Exclusive lock on `<datadir>/fognode.lock` for the daemon's lifetime (flock, released on exit)."""

    datadir: Path
    fd: int = -1

    def acquire(self) -> None:
        """Raises DataDirError naming the pid of the daemon already using this data dir."""
        path = self.datadir / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            try:
                pid = os.pread(fd, 32, 0).decode().strip() or "?"
            finally:
                os.close(fd)
            raise DataDirError(f"another fognode daemon (pid {pid}) is already running on {self.datadir}; "
                               f"stop it first or use another --datadir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            try:
                os.ftruncate(self.fd, 0)
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = -1

    def __enter__(self) -> "DataDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def ensure_datadir(datadir: Path) -> None:
    if datadir.exists() and not datadir.is_dir():
        raise DataDirError(f"{datadir} exists and is not a directory")
    datadir.mkdir(mode=0o700, parents=True, exist_ok=True)
