"""Peer id <-> Ed25519 public key for the registry: the one switch-over point.

The node core owns the computation (`fognode.node.peerid`, pure Python, no libp2p import, so
the sans-IO cores may use it); tests/registry/test_record.py checks it against
`libp2p.peer.id.ID.from_pubkey` and against node/host.py's helpers.
"""
from __future__ import annotations

from fognode.node.peerid import PUBKEY_LEN, peer_id_from_pubkey, peer_id_matches, pubkey_from_peer_id

__all__ = ["PUBKEY_LEN", "peer_id_from_pubkey", "peer_id_matches", "pubkey_from_peer_id"]
