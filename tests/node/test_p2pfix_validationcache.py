"""node/p2pfix_validationcache.py: the same entries, order, expiry and evictions as py-libp2p's
ValidationCache over a random run of operations, and on real hosts the fognode pubsub uses it
and a refused message is still refused (and charged) when it comes again from another peer."""
from __future__ import annotations

import inspect
import os
import random
import time
from typing import Any

import trio
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub, ValidationCache, ValidationResult

from fognode.node.gossip_envelope import KIND_MESSAGE, seal
from fognode.node.p2pfix_validationcache import QuickValidationCache
from fognode.tools.bench.attacks import hostile_peer
from fognode.tools.bench.attacks.invalid_gossip import send_messages, signed_message
from tests import pins
from tests.overlays import metric, receiving_overlay
from tests.polling import wait_until

TOPIC = "fognode/test/validationcache/1"

# sha256 (first 16 hex digits) of the py-libp2p 0.8.1 source the fix replaces or relies on: the
# cache's methods, the constructor that builds it, and validate_msg, its one user
PINNED: dict[Any, str] = {
    ValidationCache.__init__: "d487d81a422a16d2",
    ValidationCache.get: "b6ddbfeb1abc7c69",
    ValidationCache.put: "970c17543c02fda9",
    ValidationCache._remove: "1fc51c3d33382b26",
    ValidationCache.clear_expired: "8d4a1302398b84fd",
    Pubsub.__init__: "fc7e7f95ffc4b135",
    Pubsub.validate_msg: "9bc61633d2338dc5",
}


def test_pinned_py_libp2p_is_the_one_the_fix_was_written_for() -> None:
    pins.assert_unchanged(PINNED, "node/p2pfix_validationcache.py")
    assert "self.validation_cache = ValidationCache(" in inspect.getsource(Pubsub.__init__)


def test_the_same_entries_order_and_evictions_as_py_libp2p() -> None:
    rnd = random.Random(16)
    ours, theirs = QuickValidationCache(ttl=5, max_size=8), ValidationCache(ttl=5, max_size=8)
    ids = [os.urandom(46) for _ in range(20)]
    now = time.time()
    for step in range(5000):
        op = rnd.random()
        mid = rnd.choice(ids)
        if op < 0.45:
            # some results are stamped long ago: expired at the next get
            res = ValidationResult(rnd.random() < 0.5, now - (100 if rnd.random() < 0.1 else 0))
            ours.put(mid, res)
            theirs.put(mid, res)
        elif op < 0.97:
            assert ours.get(mid) == theirs.get(mid), step
        else:
            ours.clear_expired()
            theirs.clear_expired()
        assert ours.order() == theirs.access_order, step
        assert dict(ours.cache) == theirs.cache, step
    assert len(ours.cache) <= 8



async def test_real_hosts_use_it_and_a_refused_message_stays_refused_from_another_peer() -> None:
    """The victim refuses a message whose envelope topic does not match (a validator refusal)
    from one peer; the same message from a second peer is refused from the cache and charged to
    that peer as an invalid message too, as py-libp2p's cache does."""
    with trio.fail_after(60):
        async with receiving_overlay(TOPIC) as (victim, got):
            assert isinstance(victim.pubsub.validation_cache, QuickValidationCache)
            addr = victim.listen_addrs()[0]
            async with hostile_peer(addr) as first, hostile_peer(addr) as second:
                env = seal(first.identity, KIND_MESSAGE, 7, "fognode/test/other/1", 1, b"bad")
                msg: rpc_pb2.Message = signed_message(first, TOPIC, env.raw)
                await send_messages(first, [msg])
                drops = "fognode_node_gossip_drops_total"
                await wait_until(lambda: metric(victim, drops, topic=TOPIC,
                                                 reason="invalid") == 1,
                                 timeout=10, what="the first copy refused by the validator")
                mid = victim.pubsub._msg_id_constructor(msg)
                cached = victim.pubsub.validation_cache.get(mid)
                assert cached is not None and not cached.is_valid
                await send_messages(second, [msg])
                await wait_until(lambda: victim.gossip_score(second.peer_id) < 0, timeout=10,
                                 what="the second forwarder charged from the cache")
                # refused from the cache: the validator did not run a second time
                assert metric(victim, drops, topic=TOPIC, reason="invalid") == 1
                assert not got
