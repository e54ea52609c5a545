"""A binary Merkle tree over a round plan's participant list (BLAKE2b-256).

The coordinator's signed round header carries the root over the plan's participants, so a
reward receipt can prove "this peer, paid to this wallet, was planned in this round" with
about log2(n) hashes instead of the whole plan (a 256-participant plan is ~25 kB; its proof is
8 x 32 bytes).

Leaves are H(0x00 || pack([peer, wallet])), inner nodes H(0x01 || left || right); a node
without a sibling (odd count) moves up unchanged. The domain bytes keep a leaf from being
passed off as an inner node. The root of an empty list is H(0x02).

The Merkle-*sum* tree (sum_*) has the same shape over (peer, wallet, weight) leaves, and every
node carries the sum of the weights below it: a leaf is (H(0x03 || pack([peer, wallet,
weight])), weight), an inner node (H(0x04 || lh || ls || rh || rs), ls + rs) with the sums as
8-byte big-endian integers. A proof is the (hash, sum) of each sibling; verifying it rebuilds
the root and its total. Because sums are non-negative and bound into every hash, the weights of
distinct leaves proven against one root add up to at most that root's total, whichever leaves
are shown: a round's split committed as `sum_commit(root)` bounds what all its receipts pay.
"""
from __future__ import annotations

from typing import Sequence

from fognode.node.wire import digest, pack

MAX_DEPTH = 16
MAX_SUM = 2**63 - 1

SumNode = tuple[bytes, int]     # (hash, sum of the weights below)


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


def sum_leaf(peer: str, wallet: bytes, weight: int) -> SumNode:
    if not 0 <= weight <= MAX_SUM:
        raise ValueError(f"weight {weight} out of range")
    return digest(b"\x03" + pack([peer, wallet, weight])), weight


def _sum_node(left: SumNode, right: SumNode) -> SumNode:
    (lh, ls), (rh, rs) = left, right
    return digest(b"\x04" + lh + ls.to_bytes(8, "big") + rh + rs.to_bytes(8, "big")), ls + rs


def _sum_up(level: Sequence[SumNode]) -> list[SumNode]:
    return [_sum_node(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
            for i in range(0, len(level), 2)]


def sum_root(leaves: Sequence[SumNode]) -> SumNode:
    """(root hash, total weight); ValueError if the total does not fit 8 bytes."""
    if sum(w for _, w in leaves) > MAX_SUM:
        raise ValueError("the weights' total does not fit 8 bytes")
    if not leaves:
        return digest(b"\x05"), 0
    level = list(leaves)
    while len(level) > 1:
        level = _sum_up(level)
    return level[0]


def sum_proof(leaves: Sequence[SumNode], index: int) -> list[SumNode]:
    """The siblings' (hash, sum) from leaf `index` up to the root (IndexError if out of range)."""
    if not 0 <= index < len(leaves):
        raise IndexError(index)
    path: list[SumNode] = []
    level, i = list(leaves), index
    while len(level) > 1:
        if i ^ 1 < len(level):
            path.append(level[i ^ 1])
        level, i = _sum_up(level), i // 2
    return path


def sum_verify(leaf: SumNode, index: int, count: int, path: Sequence[SumNode],
               max_total: int) -> SumNode | None:
    """The root (hash, total) that `path` proves `leaf` to be leaf number `index` of, in a
    `count`-leaf tree; None if the path does not fit that shape or a sum on the way leaves
    [0, max_total] (so nothing wraps and the total is bounded)."""
    if not 0 <= index < count or len(path) > MAX_DEPTH or not 0 <= max_total <= MAX_SUM:
        return None
    node, i, size, k = leaf, index, count, 0
    if not 0 <= node[1] <= max_total:
        return None
    while size > 1:
        if i ^ 1 < size:
            if k >= len(path) or not 0 <= path[k][1] <= max_total:
                return None
            node = _sum_node(node, path[k]) if i % 2 == 0 else _sum_node(path[k], node)
            if node[1] > max_total:
                return None
            k += 1
        i, size = i // 2, (size + 1) // 2
    return node if k == len(path) else None


def sum_commit(root: SumNode) -> bytes:
    """The 32-byte commitment to a sum tree: H(0x06 || root hash || total)."""
    h, total = root
    return digest(b"\x06" + h + total.to_bytes(8, "big"))
