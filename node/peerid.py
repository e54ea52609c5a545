"""Peer ids of Ed25519 keys, computed without libp2p (sans-IO cores may not import it).

A libp2p peer id of an Ed25519 key is the identity multihash of the protobuf-encoded public
key (`0x08 0x01` key type Ed25519, `0x12 0x20` 32 data bytes), in base58btc: the
`12D3KooW...` form. tests/node/test_peerid.py checks this against
`libp2p.peer.id.ID.from_pubkey`, so the two never drift apart.
"""
from __future__ import annotations

import functools

import base58

_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])  # identity multihash, len 36, pb header
PUBKEY_LEN = 32


def peer_id_from_pubkey(pubkey: bytes) -> str:
    """The base58 peer id of a 32-byte Ed25519 public key; ValueError for another length.
    Memoised (the last 4,096 keys): gossip asks it for every message's signer, and base58 in
    Python was 0.3 % of a validator's CPU in `bench.ledger`."""
    return _peer_id(bytes(pubkey))


@functools.lru_cache(maxsize=4096)
def _peer_id(pubkey: bytes) -> str:
    if len(pubkey) != PUBKEY_LEN:
        raise ValueError(f"an Ed25519 public key is {PUBKEY_LEN} bytes, got {len(pubkey)}")
    return base58.b58encode(_PREFIX + pubkey).decode("ascii")


def pubkey_from_peer_id(peer_id: str) -> bytes:
    """The Ed25519 public key inside a peer id; ValueError if it is not an Ed25519 identity id."""
    try:
        raw = base58.b58decode(peer_id)
    except ValueError as e:
        raise ValueError(f"peer id {peer_id!r} is not base58: {e}") from None
    if len(raw) != len(_PREFIX) + PUBKEY_LEN or not raw.startswith(_PREFIX):
        raise ValueError(f"peer id {peer_id!r} is not an Ed25519 identity peer id")
    return raw[len(_PREFIX):]


def peer_id_matches(peer_id: str, pubkey: bytes) -> bool:
    """True when `peer_id` is the peer id of `pubkey` (the one check records rely on)."""
    try:
        return peer_id_from_pubkey(pubkey) == peer_id
    except ValueError:
        return False


def pubkey_from_raw_peer_id(raw: bytes) -> bytes | None:
    """The Ed25519 public key inside a raw (not base58) peer id, None for any other kind of
    id (a libp2p message's `from` field, read without decoding base58)."""
    if len(raw) != len(_PREFIX) + PUBKEY_LEN or not raw.startswith(_PREFIX):
        return None
    return raw[len(_PREFIX):]
