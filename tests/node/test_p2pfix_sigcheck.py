"""node/p2pfix_sigcheck.py: a message sender's signing key remembered per peer id, the same
verdict as py-libp2p's signature_validator for every kind of message, a bounded memory, and on
real hosts a forged message from a remembered sender refused and charged as before."""
from __future__ import annotations

import inspect
import os
from typing import Any

import libp2p.pubsub.pubsub as pubsub_mod
import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair as ed25519_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.rsa import create_new_key_pair as rsa_pair
from libp2p.crypto.secp256k1 import create_new_key_pair as secp256k1_pair
from libp2p.peer.id import ID
from libp2p.pubsub import validators
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub

from fognode.node import p2pfix_sigcheck
from fognode.node.gossip_envelope import KIND_MESSAGE, seal
from fognode.node.p2pfix_sigcheck import SenderKeys, signature_validator
from fognode.tools.bench.attacks import hostile_peer
from fognode.tools.bench.attacks.invalid_gossip import send_invalid, send_messages, send_valid
from tests import pins
from tests.overlays import metric, receiving_overlay
from tests.polling import wait_until

TOPIC = "fognode/test/sigcheck/1"
PREFIX = validators.PUBSUB_SIGNING_PREFIX.encode()

# sha256 (first 16 hex digits) of the py-libp2p 0.8.1 source the fix replaces or relies on: the
# validator it stands in for, the key extraction and id derivation it remembers the result of,
# and push_msg, which looks the validator up by name in its module at every call
PINNED: dict[Any, str] = {
    validators.signature_validator: "4ef201cd300c8e3e",
    ID.extract_public_key: "cfde790697294e3e",
    ID.from_pubkey: "8d7ece7fdcd75702",
    Pubsub.push_msg: "1531483ab4d77674",
}


def test_pinned_py_libp2p_is_the_one_the_fix_was_written_for() -> None:
    pins.assert_unchanged(PINNED, "node/p2pfix_sigcheck.py")
    assert "signature_validator(msg)" in inspect.getsource(Pubsub.push_msg)
    assert hasattr(pubsub_mod, "signature_validator")
    assert p2pfix_sigcheck.UPSTREAM is validators.signature_validator


def _message(signer: KeyPair, *, sender: KeyPair | None = None, data: bytes = b"payload",
             key: bytes = b"") -> rpc_pb2.Message:
    """A message from `sender` (default: `signer`) signed by `signer` as py-libp2p signs."""
    from_id = ID.from_pubkey((sender or signer).public_key).to_bytes()
    msg = rpc_pb2.Message(from_id=from_id, data=data, seqno=os.urandom(8), topicIDs=[TOPIC])
    msg.signature = signer.private_key.sign(PREFIX + msg.SerializeToString())
    if key:
        msg.key = key
    return msg


def _verdict(fn: Any, msg: rpc_pb2.Message) -> Any:
    try:
        return fn(msg)
    except Exception as e:      # py-libp2p raises for an undecodable msg.key
        return type(e)


def test_the_same_verdict_as_py_libp2p_for_every_kind_of_message() -> None:
    ed, other, secp, rsa = ed25519_pair(), ed25519_pair(), secp256k1_pair(), rsa_pair()
    altered = _message(ed)
    altered.data = b"altered"
    no_signature = _message(ed)
    no_signature.signature = b""
    garbage_id = _message(ed)
    garbage_id.from_id = b"\x00\x05junk!"
    rsa_without_key = _message(rsa)
    rsa_bad_key = _message(rsa, key=b"not a key")
    cases = {
        "ed25519": (_message(ed), True),
        "ed25519 with another key in msg.key": (_message(ed, key=other.public_key.serialize()),
                                                True),
        "signed by another key": (_message(other, sender=ed), False),
        "signed by another key, its key in msg.key": (
            _message(other, sender=ed, key=other.public_key.serialize()), False),
        "altered": (altered, False),
        "random signature": (rpc_pb2.Message(from_id=ID.from_pubkey(ed.public_key).to_bytes(),
                                             data=b"x", signature=os.urandom(64)), False),
        "no signature": (no_signature, False),
        "garbage id": (garbage_id, False),
        "secp256k1": (_message(secp), True),
        "rsa, key in msg.key": (_message(rsa, key=rsa.public_key.serialize()), True),
        "rsa without a key": (rsa_without_key, False),
    }
    for name, (msg, expected) in cases.items():
        for _ in range(2):       # the second time from the remembered key, where there is one
            assert _verdict(signature_validator, msg) == expected, name
            assert _verdict(validators.signature_validator, msg) == expected, name
    assert _verdict(signature_validator, rsa_bad_key) \
        == _verdict(validators.signature_validator, rsa_bad_key)


def test_a_remembered_key_does_not_verify_a_forged_message() -> None:
    """The key cache case: the sender's key is remembered from a good message; a message that
    claims that sender but is signed by another key (its own key in msg.key) or was altered
    after signing is refused."""
    keys = SenderKeys()
    sender, forger = ed25519_pair(), ed25519_pair()
    good = _message(sender)
    from_id = good.from_id
    assert keys.key_of(from_id) is not None and len(keys) == 1
    assert keys.key_of(from_id) is keys.key_of(from_id)          # remembered, not rebuilt
    forged = _message(forger, sender=sender, key=forger.public_key.serialize())
    assert forged.from_id == from_id
    original = p2pfix_sigcheck.SENDER_KEYS
    p2pfix_sigcheck.SENDER_KEYS = keys
    try:
        assert signature_validator(good)
        assert not signature_validator(forged)
        altered = _message(sender)
        altered.seqno = os.urandom(8)
        assert not signature_validator(altered)
        assert len(keys) == 1
    finally:
        p2pfix_sigcheck.SENDER_KEYS = original


def test_the_memory_is_bounded_and_keeps_no_key_it_cannot_take_from_the_id() -> None:
    keys = SenderKeys(max_keys=3)
    pairs = [ed25519_pair() for _ in range(5)]
    ids = [ID.from_pubkey(p.public_key).to_bytes() for p in pairs]
    for i in ids:
        assert keys.key_of(i) is not None
    assert len(keys) == 3
    assert keys.key_of(ids[0]) is not None          # forgotten, taken from the id again
    assert len(keys) == 3
    assert keys.key_of(ID.from_pubkey(rsa_pair().public_key).to_bytes()) is None   # hashed id
    assert keys.key_of(b"\x00\x05junk!") is None
    assert len(keys) == 3
    with pytest.raises(ValueError):
        SenderKeys(max_keys=0)



async def test_real_hosts_refuse_and_charge_a_forged_message_of_a_remembered_sender() -> None:
    """A peer's valid message is delivered and its key remembered; then a message with its
    peer id but a random signature, and one signed by another key, are refused and each is
    counted as a bad signature (an invalid message of the forwarder), as before the fix."""
    with trio.fail_after(60):
        async with receiving_overlay(TOPIC) as (victim, got):
            assert pubsub_mod.signature_validator is signature_validator     # installed
            async with hostile_peer(victim.listen_addrs()[0]) as evil:
                from_id = evil.overlay.host.get_id().to_bytes()
                await send_valid(evil, TOPIC, 1, b"genuine")
                await wait_until(lambda: any(m.data == b"genuine" for m in got), timeout=10,
                                 what="the valid message at the victim")
                assert p2pfix_sigcheck.SENDER_KEYS._keys.get(from_id) is not None
                bad = "fognode_node_gossip_score_actions_total"
                assert metric(victim, bad, action="bad_signature") == 0
                await send_invalid(evil, TOPIC, "libp2p_signature")
                await wait_until(lambda: metric(victim, bad, action="bad_signature") == 1,
                                 timeout=10, what="the random signature counted")
                # signed by another key that claims the remembered sender's id
                forger_pair = ed25519_pair()
                env = seal(evil.identity, KIND_MESSAGE, 7, TOPIC, 2, b"forged")
                msg = rpc_pb2.Message(from_id=from_id, data=env.raw, seqno=os.urandom(8),
                                      topicIDs=[TOPIC])
                msg.signature = forger_pair.private_key.sign(PREFIX + msg.SerializeToString())
                msg.key = forger_pair.public_key.serialize()
                await send_messages(evil, [msg])
                await wait_until(lambda: metric(victim, bad, action="bad_signature") == 2,
                                 timeout=10, what="the forged signature counted")
                assert victim.gossip_score(evil.peer_id) < 0
                assert not any(m.data == b"forged" for m in got)
