"""A host's shard store: shards under a byte quota in the data dir, and the leases that pay for them.

`<datadir>/onion/hosting/` holds one file per shard, named by the hex of its BLAKE2b-256, and
`leases`, the msgpack list of `Lease` records (written atomically after each change). A lease
is what the owner agreed with this host for one shard: the service id it belongs to (A', never
the address), the access fee and its payee (FeeTerms for fees.py), the ledger escrow paying for
the hosting, its rate (micro-units per hour) and how much of it was collected (`paid`, from the
owner's debit notes, certified). It is paid until `start + paid * 3600 / rate`.

`put` refuses a shard whose bytes do not hash to its name or that would go over the quota;
`serveable` refuses an unknown shard and one whose lease is no longer paid (the host stops
serving as soon as the paid time runs out); `read` re-hashes the file (a corrupt file is
dropped, not served); `expire(now, grace)` deletes the shards unpaid for more than `grace`
seconds and those past their escrow's deadline. File IO, no network: tested on tmp_path.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import msgpack

from fognode.ledger.amounts import format_amount
from fognode.node.datadir import write_atomic
from fognode.node.errors import FognodeError
from fognode.protocols.onion.hosting.fees import AccessRefused, FeeTerms, Refusal
from fognode.protocols.onion.hosting.shards import shard_hash

LEASES = "leases"


class StoreError(FognodeError):
    """A shard cannot be stored here (quota, hash, unreadable lease file); the message says why."""


@dataclass(frozen=True)
class Lease:
    sid: bytes           # the service id (A')
    shard: bytes         # BLAKE2b-256 of the shard
    size: int
    payee: bytes         # the owner's wallet: access fees go there
    fee: int             # micro-units per access
    customer: bytes      # the wallet that pays the hosting (signs debit notes)
    escrow: bytes        # the ledger escrow paying for it
    rate: int            # micro-units per hour
    start: float
    deadline: int        # the escrow's deadline (unix s)
    paid: int = 0        # micro-units collected so far

    def paid_until(self) -> float:
        return self.start + self.paid * 3600.0 / self.rate if self.rate > 0 else float(self.deadline)

    def terms(self) -> FeeTerms:
        return FeeTerms(self.sid, self.payee, self.fee)

    def view(self, now: float) -> dict[str, Any]:
        return {"service": self.sid.hex(), "shard": self.shard.hex(), "size": self.size, "fee": format_amount(self.fee),
                "rate_per_hour": format_amount(self.rate), "paid": format_amount(self.paid),
                "paid_until": round(self.paid_until(), 1),
                "deadline": self.deadline, "serving": now <= self.paid_until()}


class ShardStore:
    def __init__(self, root: Path, quota: int) -> None:
        self.root = root
        self.quota = quota
        self.leases: dict[bytes, Lease] = {}
        self.dropped_corrupt = 0
        self._load()

    # -- persistence -------------------------------------------------------------------------

    def _load(self) -> None:
        path = self.root / LEASES
        if not path.exists():
            return
        try:
            rows = msgpack.unpackb(path.read_bytes(), raw=False)
            for row in rows:
                lease = Lease(**row)
                if (self.root / lease.shard.hex()).exists():
                    self.leases[lease.shard] = lease
        except (OSError, ValueError, TypeError, msgpack.UnpackException) as e:
            raise StoreError(f"{path} does not decode ({e}); move it away to start with an empty store") from None

    def _save(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.root / LEASES, msgpack.packb([asdict(v) for v in self.leases.values()],
                                                       use_bin_type=True), 0o600)

    # -- storing -----------------------------------------------------------------------------

    @property
    def used(self) -> int:
        return sum(v.size for v in self.leases.values())

    def check_room(self, shard: bytes, size: int) -> None:
        """StoreError when a shard of `size` bytes would not fit under the quota."""
        if shard in self.leases:
            raise StoreError(f"shard {shard.hex()[:16]} is already stored here")
        if self.used + size > self.quota:
            raise StoreError(f"a shard of {size} bytes does not fit: {self.used} of {self.quota} bytes used "
                             "(protocols.onion.hosting_quota_mib)")

    def put(self, lease: Lease, data: bytes) -> None:
        """Store `data` under `lease`; StoreError if it is not the named shard or does not fit."""
        if shard_hash(data) != lease.shard or len(data) != lease.size:
            raise StoreError(f"the shard's bytes do not hash to its name {lease.shard.hex()[:16]}")
        self.check_room(lease.shard, len(data))
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.root / lease.shard.hex(), data, 0o600)
        self.leases[lease.shard] = lease
        self._save()

    def credit(self, shard: bytes, paid: int) -> Lease:
        """Record that `paid` micro-units in total were collected for `shard`'s lease."""
        lease = self.leases[shard]
        if paid > lease.paid:
            lease = replace(lease, paid=paid)
            self.leases[shard] = lease
            self._save()
        return lease

    # -- serving -----------------------------------------------------------------------------

    def serveable(self, sid: bytes, shard: bytes, now: float) -> Lease:
        lease = self.leases.get(shard)
        if lease is None or lease.sid != sid:
            raise AccessRefused(Refusal.UNKNOWN_SHARD, f"no shard {shard.hex()[:16]} of this service here")
        if now > lease.paid_until():
            raise AccessRefused(Refusal.HOSTING_UNPAID, "the owner's hosting payments stopped; this host no "
                                                        "longer serves the shard")
        return lease

    def read(self, shard: bytes) -> bytes:
        """The shard's bytes, re-hashed; a file that no longer matches is dropped (StoreError)."""
        try:
            data = (self.root / shard.hex()).read_bytes()
        except OSError as e:
            raise StoreError(f"shard {shard.hex()[:16]} unreadable: {e}") from None
        if shard_hash(data) != shard:
            self.dropped_corrupt += 1
            self.remove(shard)
            raise StoreError(f"shard {shard.hex()[:16]} is corrupt on disk; dropped")
        return data

    def expire(self, now: float, grace: float) -> list[Lease]:
        """Delete shards unpaid for more than `grace` s or past their escrow's deadline + grace."""
        gone = [v for v in self.leases.values()
                if now > v.paid_until() + grace or now > v.deadline + grace]
        for v in gone:
            self.remove(v.shard)
        return gone

    def remove(self, shard: bytes) -> None:
        """Forget a shard and delete its file."""
        self.leases.pop(shard, None)
        try:
            (self.root / shard.hex()).unlink()
        except FileNotFoundError:
            pass
        self._save()

    def view(self, now: float) -> dict[str, Any]:
        return {"quota": self.quota, "used": self.used, "shards": len(self.leases),
                "serving": sum(1 for v in self.leases.values() if now <= v.paid_until()),
                "dropped_corrupt": self.dropped_corrupt}
