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


def test_the_oldest_id_goes_first_and_a_full_peer_keeps_its_newest() -> None:
    c = PeerCopies(per_peer=4)
    for i in range(6):                      # 2 past the bound
        c.note("p", bytes([i]))
    c.note("p", bytes([3]))                 # a repeated copy does not refresh or evict
    assert [c.has("p", bytes([i])) for i in range(6)] == [False, False, True, True, True, True]
    c.note("q", b"x")                       # bounds are per peer
    assert c.has("q", b"x") and c.has("p", bytes([2]))
    c.note("p", bytes([6]))                 # the next eviction takes the oldest left, id 2
    assert [c.has("p", bytes([i])) for i in range(7)] == [False, False, False, True, True, True, True]
