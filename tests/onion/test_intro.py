"""The INTRODUCE payload (intro.py): sealed to the service, strictly decoded, replays caught."""
from __future__ import annotations

import os
import random

import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.peerid import peer_id_from_pubkey
from fognode.protocols.onion.hsservice import REPUT_AFTER_CHANGE, IntroState, ServiceState, pick_intro_relay
from fognode.protocols.onion.intro import IntroReplayCache, introduce1_data, open_introduce2
from fognode.protocols.onion.ntor import ClientHandshake, keypair, server_handshake
from fognode.protocols.onion.pathsel import RelayInfo

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


def test_introduction_points_go_to_distinct_relays_even_while_being_established() -> None:
    # the service starts its points at once; each reserves its relay before its circuit is
    # built, so three points never share a relay (before, only established points counted and
    # all three could land on one relay, whose death then took every point at once)
    relays = [RelayInfo(f"p{i}", bytes([i]) * 32, bytes([i + 1]) * 32) for i in range(5)]
    for seed in range(30):
        st = ServiceState(intros=[IntroState("p1", SigningKey.generate(), b"s" * 32, b"e" * 32, circuit=("p0", 1))])
        rng = random.Random(seed)
        for _ in range(2):
            r = pick_intro_relay(relays, st.taken(), "p4", rng)
            assert r is not None
            st.pending.add(r.peer_id)
        assert len(st.taken()) == 3 and "p4" not in st.taken()
        last = pick_intro_relay(relays, st.taken(), "p4", rng)          # the only relay left
        assert last is not None and last.peer_id not in st.taken()
        st.pending.add(last.peer_id)
        assert pick_intro_relay(relays, st.taken(), "p4", rng) is None  # fewer points, never shared


def test_descriptors_are_put_on_a_change_once_more_after_it_and_on_the_interval() -> None:
    # a put after a change is repeated REPUT_AFTER_CHANGE s later: a DHT node that missed it
    # (py-libp2p reports no remote failure) would otherwise serve the older descriptor for an hour
    st, T0 = ServiceState(), 1_796_083_200.0
    assert st.publish_due(T0, 3600.0)                   # never put
    assert not st.publish_due(T0 + 1, 3600.0)
    st.dirty = True                                        # an introduction point moved
    assert st.publish_due(T0 + 2, 3600.0)
    assert not st.publish_due(T0 + 2 + REPUT_AFTER_CHANGE - 1, 3600.0)
    assert st.publish_due(T0 + 2 + REPUT_AFTER_CHANGE, 3600.0)      # the follow-up
    assert not st.publish_due(T0 + 2 + 3 * REPUT_AFTER_CHANGE, 3600.0)   # only once
    assert st.publish_due(T0 + 2 + REPUT_AFTER_CHANGE + 3600.0, 3600.0)  # the interval
