from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from fognode.ledger.address import ADDRESS_LEN, decode_address, encode_address
from fognode.ledger.amounts import MAX_AMOUNT, MICRO, format_amount, parse_amount
from fognode.ledger.errors import AddressError, AmountError

from .helpers import key, pk


@given(st.binary(min_size=32, max_size=32))
def test_address_round_trip(k: bytes) -> None:
    a = encode_address(k)
    assert a.startswith("fog1") and len(a) == ADDRESS_LEN
    assert decode_address(a) == k
    assert decode_address(a.upper()) == k


def test_every_single_character_typo_is_rejected() -> None:
    a = encode_address(pk(key(0)))
    charset = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
    for pos in range(4, len(a)):
        for c in charset:
            if c == a[pos]:
                continue
            with pytest.raises(AddressError):
                decode_address(a[:pos] + c + a[pos + 1:])


def test_adjacent_swap_is_rejected() -> None:
    a = encode_address(pk(key(1)))
    for pos in range(4, len(a) - 1):
        if a[pos] != a[pos + 1]:
            with pytest.raises(AddressError, match="checksum"):
                decode_address(a[:pos] + a[pos + 1] + a[pos] + a[pos + 2:])


@pytest.mark.parametrize("bad,why", [
    ("", "start with"),
    ("btc1qqqq", "start with"),
    ("fog1abc", "characters"),
    ("fog1" + "b" * 58, "not a bech32"),
])
def test_malformed_addresses(bad: str, why: str) -> None:
    with pytest.raises(AddressError, match=why):
        decode_address(bad)


def test_mixed_case_is_rejected() -> None:
    a = encode_address(pk(key(0)))
    with pytest.raises(AddressError, match="mixes"):
        decode_address(a[:10] + a[10:].upper())


def test_encode_wants_32_bytes() -> None:
    with pytest.raises(AddressError):
        encode_address(b"\x00" * 31)


@pytest.mark.parametrize("text,micro", [
    ("12.5", 12_500_000), ("0.000001", 1), ("1000", 1000 * MICRO), (".5", 500_000),
    ("3.", 3 * MICRO), ("1.500000", 1_500_000), ("1_000", 1000 * MICRO), (7, 7 * MICRO),
])
def test_parse_amount(text: str, micro: int) -> None:
    assert parse_amount(text) == micro


@pytest.mark.parametrize("text,why", [
    ("-1", "negative"), ("1.0000001", "more than 6 decimals"), ("1e3", "not a decimal"),
    ("abc", "not a decimal"), ("0", "zero"), ("9223372036855", "overflows"),
    ("1" * 40, "overflows"), ("nan", "not a decimal"), ("", "not a decimal"),
])
def test_parse_amount_rejects(text: str, why: str) -> None:
    with pytest.raises(AmountError, match=why):
        parse_amount(text)


@given(st.integers(min_value=0, max_value=MAX_AMOUNT))
def test_format_parse_round_trip(micro: int) -> None:
    assert parse_amount(format_amount(micro), allow_zero=True) == micro


def test_format_amount() -> None:
    assert format_amount(12_500_000) == "12.5"
    assert format_amount(1) == "0.000001"
    assert format_amount(5 * MICRO) == "5"
