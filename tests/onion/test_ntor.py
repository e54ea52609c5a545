"""The ntor handshake: fixed test vectors, an independent re-derivation, and the failures."""
from __future__ import annotations

import hashlib
import hmac

import pytest
from nacl.bindings import crypto_scalarmult

from fognode.protocols.onion.errors import HandshakeError
from fognode.protocols.onion.ntor import PROTOID, ClientHandshake, hkdf_expand, keypair, server_handshake

IDENT = bytes(range(32))
B_SECRET = bytes([0x11] * 32)
X_SECRET = bytes([0x22] * 32)
Y_SECRET = bytes([0x33] * 32)
# generated once by this implementation (tests/onion/test_ntor.py); any change to the
# handshake or the key schedule breaks interoperability between releases and must fail here
B_PUB = "7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13"
X_PUB = "0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20"
REPLY = ("7b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b14"
         "56815f2c4b7763e3478d196a485bbdf3a45aaa883c73e98be0709a34c091f921")
KEYS = {
    "forward_layer": "845e5000f3e922499814c8ba06c75e40cc7e9c448289129b59f9b260a5b4e906",
    "forward_auth": "d526017c22757dc786727e180b58dad4072f8b2c8fcac83d3345900390946a43",
    "backward_layer": "d5c074cf480968a18f85c753cff676f8e7368653d23d2ef567322fb4b2a6eede",
    "backward_auth": "6e6fafd9bf0c7402fda42468201237e46070066eb1a041d3f8c7034692ff387d",
}


def _vector() -> tuple[ClientHandshake, bytes, bytes]:
    _, b_pub = keypair(B_SECRET)
    hs = ClientHandshake.start(IDENT, b_pub, X_SECRET)
    return hs, b_pub, hs.onionskin()


def test_vectors() -> None:
    hs, b_pub, skin = _vector()
    assert b_pub.hex() == B_PUB and hs.public.hex() == X_PUB
    assert skin == IDENT + b_pub + hs.public
    reply, relay_keys = server_handshake(IDENT, {b_pub: B_SECRET}, skin, Y_SECRET)
    assert reply.hex() == REPLY
    client_keys = hs.finish(reply)
    assert client_keys == relay_keys
    assert {k: getattr(client_keys, k).hex() for k in KEYS} == KEYS


def test_vector_matches_the_formula_written_out() -> None:
    """Re-derive AUTH and the keys straight from the formulas in ntor.py's docstring."""
    hs, b_pub, _ = _vector()
    y_pub = bytes.fromhex(REPLY)[:32]
    xy, xb = crypto_scalarmult(Y_SECRET, hs.public), crypto_scalarmult(B_SECRET, hs.public)
    secret_input = xy + xb + IDENT + b_pub + hs.public + y_pub + PROTOID
    h = lambda k, m: hmac.new(k, m, hashlib.sha256).digest()   # noqa: E731
    seed = h(PROTOID + b":key_extract", secret_input)
    verify = h(PROTOID + b":verify", secret_input)
    auth = h(PROTOID + b":mac", verify + IDENT + b_pub + y_pub + hs.public + PROTOID + b"Server")
    assert auth.hex() == REPLY[64:]
    okm = h(seed, PROTOID + b":key_expand" + b"\x01")
    assert okm.hex() == KEYS["forward_layer"]
    assert hkdf_expand(seed, PROTOID + b":key_expand", 128)[96:].hex() == KEYS["backward_auth"]


def test_wrong_onion_key_fails() -> None:
    hs, b_pub, skin = _vector()
    other_secret, other_pub = keypair()
    with pytest.raises(HandshakeError, match="does not hold"):
        server_handshake(IDENT, {other_pub: other_secret}, skin)
    # a relay that answers with another key (an impostor without b) fails the client's AUTH
    forged = IDENT + other_pub + hs.public
    reply, _ = server_handshake(IDENT, {other_pub: other_secret}, forged)
    with pytest.raises(HandshakeError, match="AUTH does not match"):
        hs.finish(reply)


def test_wrong_identity_fails() -> None:
    _, b_pub, skin = _vector()
    with pytest.raises(HandshakeError, match="another relay identity"):
        server_handshake(bytes(32), {b_pub: B_SECRET}, skin)


@pytest.mark.parametrize("pos", [0, 31, 32, 63])
def test_tampered_reply_fails(pos: int) -> None:
    hs, b_pub, skin = _vector()
    reply, _ = server_handshake(IDENT, {b_pub: B_SECRET}, skin)
    bad = bytearray(reply)
    bad[pos] ^= 0x01
    with pytest.raises(HandshakeError):
        hs.finish(bytes(bad))


def test_low_order_points_are_refused() -> None:
    hs, b_pub, _ = _vector()
    with pytest.raises(HandshakeError, match="low-order"):
        hs.finish(bytes(32) + bytes(32))
    with pytest.raises(HandshakeError, match="low-order"):
        server_handshake(IDENT, {b_pub: B_SECRET}, IDENT + b_pub + bytes(32))


def test_rotation_answers_for_previous_key_and_fresh_keys_differ() -> None:
    old_s, old_p = keypair()
    new_s, new_p = keypair()
    held = {old_p: old_s, new_p: new_s}
    for pub in (old_p, new_p):
        hs = ClientHandshake.start(IDENT, pub)
        reply, keys = server_handshake(IDENT, held, hs.onionskin())
        assert hs.finish(reply) == keys
    hs1, hs2 = ClientHandshake.start(IDENT, new_p), ClientHandshake.start(IDENT, new_p)
    k1 = server_handshake(IDENT, held, hs1.onionskin())[1]
    k2 = server_handshake(IDENT, held, hs2.onionskin())[1]
    assert k1 != k2
