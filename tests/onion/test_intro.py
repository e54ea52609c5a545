"""The INTRODUCE payload (intro.py): sealed to the service, strictly decoded, replays caught."""
from __future__ import annotations

import os

import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.peerid import peer_id_from_pubkey
from fognode.protocols.onion.intro import IntroReplayCache, introduce1_data, open_introduce2
from fognode.protocols.onion.ntor import ClientHandshake, keypair, server_handshake

AUTH = SigningKey(b"a" * 32)
ENC = PrivateKey(b"e" * 32)
RP_KEY = SigningKey(b"r" * 32)
RP = peer_id_from_pubkey(bytes(RP_KEY.verify_key))
_, RP_ONION = keypair(b"o" * 32)


def payload(rp: str = RP, rp_identity: bytes = bytes(RP_KEY.verify_key)) -> tuple[bytes, ClientHandshake]:
    hs = ClientHandshake.start(bytes(AUTH.verify_key), bytes(ENC.public_key))
    data = introduce1_data(bytes(AUTH.verify_key), bytes(ENC.public_key), rp, rp_identity, RP_ONION,
                           b"c" * 20, hs.onionskin())
    return data, hs


def test_service_opens_it_and_both_ends_share_keys() -> None:
    data, hs = payload()
    assert data[:32] == bytes(AUTH.verify_key)
    intro = open_introduce2(data[32:], bytes(ENC))
    assert (intro.rendezvous, intro.cookie, intro.rp_onion_key) == (RP, b"c" * 20, RP_ONION)
    reply, keys = server_handshake(bytes(AUTH.verify_key), {bytes(ENC.public_key): bytes(ENC)}, intro.onionskin)
    assert hs.finish(reply) == keys


def test_refusals() -> None:
    data, _ = payload()
    with pytest.raises(RemoteProtocolError, match="does not decrypt"):
        open_introduce2(data[32:], bytes(PrivateKey(b"x" * 32)))
    with pytest.raises(RemoteProtocolError, match="does not decrypt"):
        open_introduce2(os.urandom(200), bytes(ENC))
    bad, _ = payload(rp_identity=bytes(SigningKey(b"z" * 32).verify_key))
    with pytest.raises(RemoteProtocolError, match="rp_identity"):
        open_introduce2(bad[32:], bytes(ENC))


def test_replay_cache() -> None:
    data, _ = payload()
    skin = open_introduce2(data[32:], bytes(ENC)).onionskin
    cache = IntroReplayCache(limit=2)
    assert cache.first_time(b"k", skin) and not cache.first_time(b"k", skin)
    assert cache.first_time(b"other", skin)

