"""Test helpers for hosted data: a real one-committee ledger certificate of an access payment
(signed by real keys, verified by the real certcheck), and a store with one paid lease."""
from __future__ import annotations

from pathlib import Path

from nacl.signing import SigningKey

from fognode.ledger.certcheck import verify_certificate
from fognode.ledger.messages import Certificate, SignedOrder, TransferOrder, Vote
from fognode.ledger.quorum import Committee
from fognode.protocols.onion.hosting.fees import access_memo
from fognode.protocols.onion.hosting.shards import shard_hash
from fognode.protocols.onion.hosting.store import Lease, ShardStore

VALIDATORS = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
COMMITTEE = Committee.of({bytes(v.verify_key): 10 for v in VALIDATORS})
OWNER = SigningKey(b"o" * 32)
ACCESSOR = SigningKey(b"a" * 32)
HOST_KEY = bytes(SigningKey(b"h" * 32).verify_key)
EPOCH = 7
FEE = 5_000
NOW = 1_796_083_200.0


def verify(cert: Certificate) -> None:
    verify_certificate(cert, COMMITTEE)


def payment(sid: bytes, access_key: bytes, *, amount: int = FEE, to: bytes | None = None, memo: str | None = None,
            epoch: int = EPOCH, signers: list[SigningKey] | None = None, seq: int = 1) -> Certificate:
    order = TransferOrder(chain="test", epoch=epoch, sender=bytes(ACCESSOR.verify_key), sequence=seq, fee=1000,
                          recipient=bytes(OWNER.verify_key) if to is None else to, amount=amount,
                          memo=access_memo(sid, access_key) if memo is None else memo)
    signed = SignedOrder.sign(ACCESSOR, order)
    votes = [Vote.sign(v, signed.tx_id) for v in (VALIDATORS[:3] if signers is None else signers)]
    return Certificate.from_votes(signed, votes)


def paid_store(root: Path, sid: bytes, data: bytes, *, quota: int = 10_000_000, paid: int = 100,
               rate: int = 100, fee: int = FEE) -> tuple[ShardStore, Lease]:
    store = ShardStore(root, quota)
    lease = Lease(sid, shard_hash(data), len(data), bytes(OWNER.verify_key), fee, bytes(OWNER.verify_key),
                  b"e" * 32, rate, NOW, int(NOW) + 86400, 0)
    store.put(lease, data)
    return store, store.credit(lease.shard, paid)
