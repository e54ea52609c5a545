"""Hosted content: encrypted by the owner, erasure-coded with zfec into content-addressed shards.

`split(data, k, n)` seals `data` with a fresh 32-byte key (XSalsa20-Poly1305, PyNaCl's
SecretBox) and cuts the ciphertext into `n` shards with zfec (Reed-Solomon over GF(2^8)): any
`k` of them give the ciphertext back. Each shard is named by its BLAKE2b-256 (its content
address): hosts store and serve it under that name, and whoever fetches it checks the bytes
against the name before using them, so a host that returns other bytes is caught at once.
`join(...)` takes any `k` verified shards, decodes and opens the ciphertext; a shard whose hash
does not match is refused (ShardMismatch names it), a decoded ciphertext that does not open
(a key that is not the owner's) raises ContentError.

Sans-IO: no trio, no libp2p; plain functions over bytes. zfec is imported by `split` and
`join`, not with this module: the onion role imports it at every start (manifest.py uses the
limits below) but codes shards only on a deploy or an access, and the zfec package also
loads its command-line tools (about 1.2 ms of a start's CPU; 3 ms where argparse is not loaded).
"""
from __future__ import annotations

from dataclasses import dataclass

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from nacl.utils import random as random_bytes

from fognode.node.wire import digest

MAX_SHARDS = 32             # n: more hosts than this buys nothing a bigger k cannot
MAX_CONTENT = 256 * 1024 * 1024
KEY_LEN = SecretBox.KEY_SIZE


class ContentError(ValueError):
    """Hosted content cannot be cut or put back together (the message says why)."""


class ShardMismatch(ContentError):
    """A shard's bytes do not hash to the name the manifest gives it (the host's fault)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Sharded:
    key: bytes                      # the content key (SecretBox)
    k: int
    n: int
    size: int                       # bytes of ciphertext (before zfec's padding)
    shards: tuple[bytes, ...]       # n shards, shard i is zfec share number i

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(shard_hash(s) for s in self.shards)


def shard_hash(data: bytes) -> bytes:
    """The content address of a shard."""
    return digest(data)


def check_code(k: int, n: int) -> None:
    """ContentError unless 1 <= k <= n <= MAX_SHARDS."""
    if not 1 <= k <= n <= MAX_SHARDS:
        raise ContentError(f"erasure code {k}-of-{n}: need 1 <= k <= n <= {MAX_SHARDS}")


def split(data: bytes, k: int, n: int, *, key: bytes | None = None) -> Sharded:
    """Encrypt `data` and cut it into `n` shards, any `k` of which restore it."""
    check_code(k, n)
    if len(data) > MAX_CONTENT:
        raise ContentError(f"content of {len(data)} bytes is over the limit of {MAX_CONTENT}")
    key = random_bytes(KEY_LEN) if key is None else key
    if len(key) != KEY_LEN:
        raise ContentError(f"a content key is {KEY_LEN} bytes, got {len(key)}")
    ct = bytes(SecretBox(key).encrypt(data))
    chunk = -(-len(ct) // k)
    blocks = [ct[i * chunk:(i + 1) * chunk].ljust(chunk, b"\x00") for i in range(k)]
    import zfec  # here, not at module level: see the module docstring
    shards = zfec.Encoder(k, n).encode(blocks)
    return Sharded(key, k, n, len(ct), tuple(bytes(s) for s in shards))


def shard_size(size: int, k: int) -> int:
    """The size of each shard of `size` bytes of ciphertext cut k ways."""
    return -(-size // k)


def verify_shard(index: int, data: bytes, expected: bytes, size: int, k: int) -> None:
    """ShardMismatch unless `data` is shard `index` as named (hash and length)."""
    if len(data) != shard_size(size, k):
        raise ShardMismatch(index, f"shard {index} is {len(data)} bytes, the manifest says {shard_size(size, k)}")
    if shard_hash(data) != expected:
        raise ShardMismatch(index, f"shard {index} does not hash to {expected.hex()[:16]} (corrupt or forged)")


def join(shards: dict[int, bytes], hashes: tuple[bytes, ...], *, key: bytes, k: int, size: int) -> bytes:
    """The content from any `k` shards {share number: bytes}; every shard is checked first."""
    n = len(hashes)
    check_code(k, n)
    if len(shards) < k:
        raise ContentError(f"{len(shards)} shards, {k} needed")
    picked = sorted(shards.items())[:k]
    for i, data in picked:
        if not 0 <= i < n:
            raise ContentError(f"shard number {i} is not in 0..{n - 1}")
        verify_shard(i, data, hashes[i], size, k)
    import zfec  # here, not at module level: see the module docstring
    blocks = zfec.Decoder(k, n).decode([d for _, d in picked], [i for i, _ in picked])
    ct = b"".join(bytes(b) for b in blocks)[:size]
    try:
        return bytes(SecretBox(key).decrypt(ct))
    except CryptoError:
        raise ContentError("the reassembled content does not open with the manifest's key") from None
