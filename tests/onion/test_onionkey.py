"""Relay onion keys: certificates, rotation with overlap, the keyring file (onionkey.py)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_scalarmult
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from fognode.node.errors import LocalProtocolError, RemoteProtocolError
from fognode.node.peerid import peer_id_from_pubkey
from fognode.node.wire import pack, unpack
from fognode.protocols.onion.hs_errors import OnionCertReason as R
from fognode.protocols.onion.hs_errors import OnionCertRejected
from fognode.protocols.onion.onionkey import (OnionKeyring, decode_onion_cert, is_usable_x25519,
                                              sign_onion_key)

NODE = SigningKey(bytes([9]) * 32)
PEER = peer_id_from_pubkey(bytes(NODE.verify_key))
T0 = 1_796_000_000
DAY = 86400


def reason(data: bytes, **kw: object) -> R:
    with pytest.raises(OnionCertRejected) as e:
        decode_onion_cert(data, **kw)
    return e.value.reason


def test_cert_round_trip_and_vector() -> None:
    onion = bytes(PrivateKey(bytes([3]) * 32).public_key)
    cert = sign_onion_key(NODE, onion, T0, T0 + DAY)
    assert decode_onion_cert(cert.encode(), now=T0 + 1, peer_id=PEER) == cert
    assert decode_onion_cert(cert.encode(), now=T0, identity=bytes(NODE.verify_key)) == cert
    # Ed25519 is deterministic: the encoding is a stable vector
    assert len(cert.encode()) < 256 and cert.encode() == sign_onion_key(NODE, onion, T0, T0 + DAY).encode()


def test_cert_refusals() -> None:
    onion = bytes(PrivateKey.generate().public_key)
    good = sign_onion_key(NODE, onion, T0, T0 + DAY)
    data = good.encode()
    assert reason(data, now=T0 + DAY) is R.EXPIRED
    assert reason(data, now=T0 - 301) is R.NOT_YET_VALID
    decode_onion_cert(data, now=T0 - 299)
    other = SigningKey.generate()
    assert reason(data, now=T0, peer_id=peer_id_from_pubkey(bytes(other.verify_key))) is R.WRONG_IDENTITY
    assert reason(data, now=T0, identity=bytes(other.verify_key)) is R.WRONG_IDENTITY
    raw = unpack(data)
    assert reason(pack({**raw, "onion_key": bytes(PrivateKey.generate().public_key)}), now=T0) is R.BAD_SIGNATURE
    assert reason(pack({**raw, "valid_until": T0 + 2 * DAY}), now=T0) is R.BAD_SIGNATURE
    # a certificate claiming another identity, signed by us
    body = {k: v for k, v in raw.items() if k != "sig"}
    body["identity"] = bytes(other.verify_key)
    assert reason(pack({**body, "sig": NODE.sign(pack(body)).signature}), now=T0) is R.BAD_SIGNATURE
    assert reason(pack({**raw, "onion_key": bytes(32)}), now=T0) is R.BAD_KEY
    assert reason(pack({**raw, "type": "x"}), now=T0) is R.MALFORMED
    assert reason(pack({**raw, "v": 2}), now=T0) is R.MALFORMED
    assert reason(pack({**raw, "valid_until": T0 + 91 * DAY}), now=T0) is R.MALFORMED
    assert reason(pack({**raw, "valid_until": T0}), now=T0) is R.MALFORMED
    assert reason(b"\x00" * 600, now=T0) is R.MALFORMED
    with pytest.raises(LocalProtocolError):
        sign_onion_key(NODE, bytes(32), T0, T0 + DAY)


def test_small_order_keys_are_not_usable() -> None:
    assert not is_usable_x25519(bytes(32)) and not is_usable_x25519(bytes([1]) + bytes(31))
    assert not is_usable_x25519(b"short")
    assert is_usable_x25519(bytes(PrivateKey.generate().public_key))


def test_rotation_with_overlap() -> None:
    ring = OnionKeyring(NODE, rotation=7 * DAY, overlap=DAY)
    assert ring.current is None and ring.usable(T0) == []
    assert ring.tick(T0) is True
    first = ring.current
    assert first is not None and first.cert.valid_until == T0 + 8 * DAY
    assert ring.tick(T0 + 7 * DAY - 1) is False
    assert ring.tick(T0 + 7 * DAY) is True
    second = ring.current
    assert second is not None and second != first
    # during the overlap both keys work, newest first; a client with the old record still succeeds
    assert ring.usable(T0 + 7 * DAY + 10) == [second, first]
    assert ring.secret_for(first.public, T0 + 7 * DAY + 10) == first.secret
    # after it, the old key is gone and a handshake with it fails
    ring.tick(T0 + 8 * DAY)
    assert ring.usable(T0 + 8 * DAY) == [second]
    assert ring.secret_for(first.public, T0 + 8 * DAY) is None
    # the secret matches the certified public key (an X25519 exchange agrees)
    peer = PrivateKey.generate()
    assert crypto_scalarmult(second.secret, bytes(peer.public_key)) == \
        crypto_scalarmult(bytes(peer), second.public)
    with pytest.raises(LocalProtocolError):
        OnionKeyring(NODE, rotation=10)


def test_keyring_file_round_trip_and_refusals() -> None:
    ring = OnionKeyring(NODE, rotation=DAY, overlap=3600)
    ring.tick(T0)
    ring.tick(T0 + DAY)
    again = OnionKeyring.decode(NODE, ring.encode(), rotation=DAY, overlap=3600)
    assert again.keys == ring.keys
    with pytest.raises(OnionCertRejected):       # another node's keyring
        OnionKeyring.decode(SigningKey.generate(), ring.encode())
    raw = unpack(ring.encode())
    raw["keys"][0]["secret"] = bytes(32)
    with pytest.raises(RemoteProtocolError, match="does not match"):
        OnionKeyring.decode(NODE, pack(raw))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_rejected(data: bytes) -> None:
    with pytest.raises(OnionCertRejected):
        decode_onion_cert(data, now=T0, peer_id=PEER)
