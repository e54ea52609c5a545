"""A binary Merkle tree over a round plan's participant list (BLAKE2b-256).

The coordinator's signed round header carries the root over the plan's participants, so a
reward receipt can prove "this peer, paid to this wallet, was planned in this round" with
about log2(n) hashes instead of the whole plan (a 256-participant plan is ~25 kB; its proof is
8 x 32 bytes).

Leaves are H(0x00 || pack([peer, wallet])), inner nodes H(0x01 || left || right); a node
without a sibling (odd count) moves up unchanged. The domain bytes keep a leaf from being
passed off as an inner node. The root of an empty list is H(0x02).
"""
from __future__ import annotations

from typing import Sequence

from fognode.node.wire import digest, pack

MAX_DEPTH = 16


def leaf_hash(peer: str, wallet: bytes) -> bytes:
    return digest(b"\x00" + pack([peer, wallet]))


def _node(left: bytes, right: bytes) -> bytes:
    return digest(b"\x01" + left + right)


def _up(level: Sequence[bytes]) -> list[bytes]:
    return [_node(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
            for i in range(0, len(level), 2)]


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        return digest(b"\x02")
    level = list(leaves)
    while len(level) > 1:
        level = _up(level)
    return level[0]


def merkle_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The sibling hashes from leaf `index` up to the root (IndexError if out of range)."""
    if not 0 <= index < len(leaves):
        raise IndexError(index)
    path: list[bytes] = []
    level, i = list(leaves), index
    while len(level) > 1:
        if i ^ 1 < len(level):
            path.append(level[i ^ 1])
        level, i = _up(level), i // 2
    return path


def merkle_verify(leaf: bytes, index: int, count: int, path: Sequence[bytes], root: bytes) -> bool:
    """True if `leaf` is leaf number `index` of a `count`-leaf tree with this root."""
    if not 0 <= index < count or len(path) > MAX_DEPTH:
        return False
    h, i, size, k = leaf, index, count, 0
    while size > 1:
        if i ^ 1 < size:
            if k >= len(path):
                return False
            h = _node(h, path[k]) if i % 2 == 0 else _node(path[k], h)
            k += 1
        i, size = i // 2, (size + 1) // 2
    return k == len(path) and h == root
