"""The market's contracts on disk: one atomically written file per contract in
`<datadir>/market/contracts/<agreement id hex>.contract` (contracts.py says what a record holds).

Rules (DESIGN.md storage): a record is written (write to a temporary file, fsync, rename, fsync
the directory: node.datadir.write_atomic) *before* the node acts on it: the customer saves a
contract before it opens the escrow and before it sends a co-signed debit note; the provider
saves the customer's co-signed note before it pays it out or runs more work. A write that fails
raises `ContractStoreError` (logged at ERROR): the caller stops what it was doing rather than
act on state a restart would not know. Reading at start skips (and renames to `*.bad`) a file
that does not decode, with a WARNING naming it: a torn or foreign file must not stop the role.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from fognode.node.datadir import write_atomic
from fognode.protocols.market.errors import MarketError

log = logging.getLogger("fognode.market")

SUFFIX = ".contract"
MAX_RECORD = 1 << 20


class ContractStoreError(MarketError):
    """A contract could not be written to (or removed from) the data dir: the operator's disk."""


class ContractStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise ContractStoreError(f"cannot create the contract store {root}: {e}") from None

    def path(self, id: bytes) -> Path:
        return self.root / f"{id.hex()}{SUFFIX}"

    def write(self, id: bytes, record: bytes) -> None:
        """Durably replace contract `id`'s record; ContractStoreError if the disk refuses."""
        if len(record) > MAX_RECORD:
            raise ContractStoreError(f"contract {id.hex()[:16]}: record of {len(record)} bytes is over "
                                     f"{MAX_RECORD}")
        try:
            write_atomic(self.path(id), record)
        except OSError as e:
            log.error("market: contract %s NOT saved to %s: %s", id.hex()[:16], self.root, e)
            raise ContractStoreError(f"contract {id.hex()[:16]} not saved to {self.root}: "
                                     f"{e.strerror or e}") from None

    def delete(self, id: bytes) -> None:
        try:
            self.path(id).unlink(missing_ok=True)
        except OSError as e:
            raise ContractStoreError(f"contract {id.hex()[:16]} not removed from {self.root}: "
                                     f"{e.strerror or e}") from None

    def read_all(self) -> list[tuple[bytes, bytes]]:
        """(id, record) of every stored contract whose file name is a valid id."""
        out = []
        for p in sorted(self.root.glob(f"*{SUFFIX}")):
            try:
                id = bytes.fromhex(p.name[:-len(SUFFIX)])
                if len(id) != 32 or p.stat().st_size > MAX_RECORD:
                    raise ValueError("not a 32-byte id or over the size limit")
                out.append((id, p.read_bytes()))
            except (ValueError, OSError) as e:
                self.quarantine(p, str(e))
        return out

    def quarantine(self, p: Path, why: str) -> None:
        """Move an unreadable record aside (`*.bad`) so it is kept for the operator, not re-read."""
        log.warning("market: contract file %s skipped (%s); moved to %s.bad", p, why, p.name)
        try:
            os.replace(p, p.with_name(p.name + ".bad"))
        except OSError as e:
            log.warning("market: could not move %s aside: %s", p, e)
