"""node/gossip_copies.py: which peers hold which recent messages (sans-IO)."""
from __future__ import annotations

import pytest

from fognode.node.gossip_copies import PeerCopies


def test_a_peer_that_sent_a_copy_is_left_out_of_a_forward() -> None:
    c = PeerCopies()
    c.note("b", b"m1")
    c.note("b", b"m1")          # a second copy changes nothing
    assert c.has("b", b"m1") and not c.has("c", b"m1") and not c.has("b", b"m2")
    assert c.without_holders(["a", "b", "c"], b"m1") == ["a", "c"]
    assert c.left_out == 1
    c.forget("b")
    assert not c.has("b", b"m1")
    assert c.without_holders(["b"], b"m1") == ["b"] and c.left_out == 1


def test_memory_is_bounded_per_peer_oldest_forgotten_first() -> None:
    c = PeerCopies(per_peer=3)
    for i in range(5):
        c.note("p", bytes([i]))
    assert [c.has("p", bytes([i])) for i in range(5)] == [False, False, True, True, True]
    with pytest.raises(ValueError):
        PeerCopies(per_peer=0)
