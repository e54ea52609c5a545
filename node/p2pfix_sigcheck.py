"""py-libp2p 0.8.1 fix: a pubsub message's signing key is taken out of its sender's peer id once
per sender, not once per message.

Symptom (upstream report form). With `strict_signing` (the default), `Pubsub.push_msg` calls
`libp2p/pubsub/validators.py: signature_validator(msg)` for every new message. Before the one
Ed25519 verification that is needed, it rebuilds the sender's public key from `msg.from_id`
(`ID.extract_public_key`: a multihash decode, then `deserialize_public_key`: a protobuf parse
and a key object) and checks that the key maps back to the same id (`ID.from_pubkey`: the key
serialized to protobuf again, a multihash encode, an id compared). All of it depends only on
`from_id`, and a mesh hears the same few senders over and over. Measured on the project's
2-core machine (thread CPU clock, 2,000 messages of 300 bytes from one Ed25519 sender):
57.7 us per call, of which 48.4 us is the verification and 5.5 us the key extraction and the
round trip (sigcheck helper, session 29). Reproduction: sign 2,000 messages with one Ed25519
key as py-libp2p's publish does, time `signature_validator` over them, then
`key.verify(payload, signature)` alone with the key extracted once.

Fix. No constructor option replaces the validator: push_msg looks the name
`signature_validator` up in `libp2p.pubsub.pubsub` at every call, so `install()` rebinds that
name (monkeypatching: no option exists; process-wide, idempotent; node/scored_pubsub.py's
ScoredPubsub calls it) to `signature_validator` below. `SenderKeys` remembers, per `from_id` bytes, the key py-libp2p's function would verify
with: only a key extracted from the id itself that maps back to the same id (Ed25519 and the
other inlined keys); at most `MAX_KEYS` ids, the oldest forgotten first. For a remembered id
the message is checked exactly as py-libp2p checks it then: an empty signature is refused,
the payload is the same `libp2p-pubsub:` prefix and protobuf of data, topicIDs, from_id and
seqno, and the signature must verify under the key (`msg.key` is ignored, as py-libp2p ignores
it when the id holds the key). Any other message (an id without an inlined key, such as RSA's
hashed ids, whose key comes in `msg.key`, or a malformed id) goes to py-libp2p's own function
unchanged and nothing is remembered for it. The key of an id is a pure function of the id, so
a remembered key is the one py-libp2p would extract: a message that claims a remembered sender
but is signed by anyone else, or altered, fails the verification and is refused, and
node/scored_pubsub.py charges its forwarder as before. Nothing on the wire changes.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import libp2p.pubsub.pubsub as pubsub_mod
from libp2p.crypto.keys import PublicKey
from libp2p.peer.id import ID
from libp2p.pubsub import validators
from libp2p.pubsub.pb import rpc_pb2

MAX_KEYS = 4096     # senders whose key is remembered at most (a few hundred peers in a network)
PREFIX = validators.PUBSUB_SIGNING_PREFIX.encode()

UPSTREAM: Callable[[rpc_pb2.Message], bool] = validators.signature_validator


class SenderKeys:
    """The signing key of each recent message sender, from its peer id (module doc; sans-IO)."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.max_keys = max_keys
        self._keys: OrderedDict[bytes, PublicKey] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def key_of(self, from_id: bytes) -> PublicKey | None:
        """The key inlined in `from_id` that maps back to it (remembered), or None when the id
        holds no such key (not remembered: py-libp2p's function decides those messages)."""
        key = self._keys.get(from_id)
        if key is not None:
            return key
        sender = ID(from_id)
        try:
            key = sender.extract_public_key()
            if key is None or ID.from_pubkey(key) != sender:
                return None
        except Exception:       # a malformed id: py-libp2p's function refuses or raises as before
            return None
        self._keys[from_id] = key
        if len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return key


SENDER_KEYS = SenderKeys()


def signature_validator(msg: rpc_pb2.Message) -> bool:
    """py-libp2p's `signature_validator` with the sender's key remembered (module doc): True
    when the libp2p signature of `msg` holds. Raises only what py-libp2p's function raises
    (for an id without an inlined key and an undecodable `msg.key`)."""
    if msg.signature == b"":
        return False
    key = SENDER_KEYS.key_of(msg.from_id)
    if key is None:
        return UPSTREAM(msg)
    signed = rpc_pb2.Message(data=msg.data, topicIDs=msg.topicIDs, from_id=msg.from_id,
                             seqno=msg.seqno)
    try:
        return key.verify(PREFIX + signed.SerializeToString(), msg.signature)
    except Exception:           # as py-libp2p: a signature that cannot be checked does not hold
        return False


def install() -> None:
    """Make Pubsub.push_msg call this module's validator (process-wide; idempotent)."""
    pubsub_mod.signature_validator = signature_validator
