"""`.fog` addresses: vectors, round trips and every refusal (protocols/onion/address.py)."""
from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from fognode.protocols.onion.address import (FogAddress, LABEL_LEN, address_from_pubkey, checksum,
                                             is_fog_host, parse_address)
from fognode.protocols.onion.hs_errors import AddressError

SEED = bytes(range(32))
PUBKEY = bytes.fromhex("03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8")
HOST = "aoqqpp7tzyil4hlq3umoos6atft6jvrqtosq2xy53sdgiesvgg4kkhib.fog"


def encode_raw(pubkey: bytes, check: bytes, version: int) -> str:
    return base64.b32encode(pubkey + check + bytes([version])).decode().lower() + ".fog"


def test_vector() -> None:
    assert bytes(SigningKey(SEED).verify_key) == PUBKEY
    assert checksum(PUBKEY) == hashlib.sha3_256(b".fog checksum" + PUBKEY + b"\x01").digest()[:2]
    addr = address_from_pubkey(PUBKEY)
    assert addr.host == HOST and str(addr) == HOST and len(addr.label) == LABEL_LEN
    assert parse_address(HOST) == addr


def test_case_and_fqdn_forms() -> None:
    addr = parse_address(HOST)
    assert parse_address(HOST.upper()) == addr
    assert parse_address(HOST + ".") == addr
    assert parse_address(HOST[:-4], suffix=False) == addr
    assert parse_address("www.Blog." + HOST, subdomains=True) == addr


@pytest.mark.parametrize("text, words", [
    (" " + HOST, "whitespace at position 0"),
    (HOST[:10] + "\t" + HOST[10:], "whitespace at position 10"),
    (HOST + "\n", "whitespace"),
    (HOST[:-4] + ".onion", "does not end in .fog"),
    (HOST[:-4], "does not end in .fog"),
    ("www." + HOST, "subdomains"),
    (".." + HOST, "subdomains"),
    (HOST[1:], "55 characters"),
    ("a" + HOST, "57 characters"),
    (HOST.replace(HOST[5], "1", 1), "outside base32"),
    ("x" * 300 + ".fog", "over the 255"),
])
def test_refusals_say_why(text: str, words: str) -> None:
    with pytest.raises(AddressError, match=words):
        parse_address(text)


def test_empty_subdomain_label() -> None:
    with pytest.raises(AddressError, match="empty label"):
        parse_address(".." + HOST, subdomains=True)


def test_bad_checksum_version_and_key() -> None:
    flipped = bytearray(PUBKEY)
    flipped[0] ^= 1
    with pytest.raises(AddressError, match="checksum"):
        parse_address(encode_raw(bytes(flipped), checksum(PUBKEY), 1))
    with pytest.raises(AddressError, match="version 3 is not supported"):
        parse_address(encode_raw(PUBKEY, checksum(PUBKEY, 3), 3))
    # a Tor v3 onion label (".onion checksum", version 3) is not a .fog address
    tor_check = hashlib.sha3_256(b".onion checksum" + PUBKEY + b"\x03").digest()[:2]
    with pytest.raises(AddressError, match="version"):
        parse_address(encode_raw(PUBKEY, tor_check, 3))
    # a correct checksum around a point of small order (the identity) is still refused
    identity = bytes([1]) + bytes(31)
    with pytest.raises(AddressError, match="valid Ed25519"):
        parse_address(encode_raw(identity, checksum(identity), 1))
    with pytest.raises(AddressError):
        address_from_pubkey(identity)
    with pytest.raises(AddressError, match="32 bytes"):
        address_from_pubkey(PUBKEY[:31])
    with pytest.raises(AddressError, match="string"):
        parse_address(b"abc")


def test_single_character_errors_are_caught() -> None:
    """Every one-character change of the label is refused (checksum, version or alphabet)."""
    label = HOST[:-4]
    for i in range(len(label)):
        for c in "a7q":
            if c != label[i]:
                with pytest.raises(AddressError):
                    parse_address(label[:i] + c + label[i + 1:] + ".fog")


def test_is_fog_host() -> None:
    assert is_fog_host("x.FOG") and is_fog_host(HOST + ".") and not is_fog_host("example.com")
    assert not is_fog_host("fog") and not is_fog_host("x.fog.example")


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_round_trip_of_random_keys(seed: bytes) -> None:
    addr = address_from_pubkey(bytes(SigningKey(seed).verify_key))
    assert parse_address(addr.host) == addr == FogAddress(addr.pubkey)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_address_error(text: str) -> None:
    try:
        parse_address(text, subdomains=True)
    except AddressError:
        pass
