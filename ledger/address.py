"""Account addresses: the 32-byte Ed25519 public key in a human form, `fog1...`.

The human form is bech32m (BIP-350): human-readable part `fog`, separator `1`, the key in
5-bit groups, then a 6-character checksum (a BCH code that detects any error in up to 4
characters, and a swap of two adjacent characters). So a mistyped address is rejected rather
than sending tokens to a key nobody holds. Upper case is accepted as a whole (QR codes); mixed
case is not.

Both directions are pure functions of their argument and cost 20-30 us of pure Python each
(the checksum runs over 64 5-bit groups); the hot paths (a payment event, a wallet.send reply
and its parameters, per transfer) meet the same few keys again and again, so the last
`CACHE_SIZE` results of each are remembered (`functools.lru_cache`; errors are not cached).
"""
from __future__ import annotations

from functools import lru_cache

from fognode.ledger.errors import AddressError

HRP = "fog"
KEY_LEN = 32
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_REV = {c: i for i, c in enumerate(_CHARSET)}
_BECH32M_CONST = 0x2BC830A3
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
ADDRESS_LEN = len(HRP) + 1 + (KEY_LEN * 8 + 4) // 5 + 6   # 62
CACHE_SIZE = 4096


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert(data: bytes | list[int], frm: int, to: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << to) - 1
    for v in data:
        acc = (acc << frm) | v
        bits += frm
        while bits >= to:
            bits -= to
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to - bits)) & maxv)
    elif bits >= frm or ((acc << (to - bits)) & maxv):
        raise AddressError("address has non-zero padding bits (corrupted)")
    return out


def encode_address(pubkey: bytes) -> str:
    """`fog1...` form of a 32-byte Ed25519 public key."""
    if not isinstance(pubkey, (bytes, bytearray)) or len(pubkey) != KEY_LEN:
        raise AddressError(f"an address is a {KEY_LEN}-byte public key, got {len(pubkey)} bytes")
    return _encode(bytes(pubkey))


@lru_cache(maxsize=CACHE_SIZE)
def _encode(pubkey: bytes) -> str:
    data = _convert(pubkey, 8, 5, True)
    pm = _polymod(_hrp_expand(HRP) + data + [0] * 6) ^ _BECH32M_CONST
    check = [(pm >> 5 * (5 - i)) & 31 for i in range(6)]
    return HRP + "1" + "".join(_CHARSET[d] for d in data + check)


def decode_address(text: str) -> bytes:
    """The 32-byte public key of a `fog1...` address; AddressError saying what is wrong."""
    if not isinstance(text, str):
        raise AddressError(f"an address is a string, got {type(text).__name__}")
    return _decode(text)


@lru_cache(maxsize=CACHE_SIZE)
def _decode(text: str) -> bytes:
    s = text.strip()
    if s.lower() != s and s.upper() != s:
        raise AddressError(f"address {text!r} mixes upper and lower case")
    s = s.lower()
    if not s.startswith(HRP + "1"):
        raise AddressError(f"address {text!r} does not start with '{HRP}1'")
    if len(s) != ADDRESS_LEN:
        raise AddressError(f"address {text!r} has {len(s)} characters, want {ADDRESS_LEN}")
    body = s[len(HRP) + 1:]
    try:
        data = [_REV[c] for c in body]
    except KeyError as e:
        raise AddressError(f"address {text!r} contains {e.args[0]!r}, not a bech32 character") from None
    if _polymod(_hrp_expand(HRP) + data) != _BECH32M_CONST:
        raise AddressError(f"address {text!r} fails its checksum (mistyped?)")
    key = bytes(_convert(data[:-6], 5, 8, False))
    if len(key) != KEY_LEN:
        raise AddressError(f"address {text!r} does not hold a {KEY_LEN}-byte key")
    return key


def is_address(text: str) -> bool:
    try:
        decode_address(text)
        return True
    except AddressError:
        return False


def short(pubkey: bytes) -> str:
    """A short display form for logs: `fog1abcd…wxyz`."""
    a = encode_address(pubkey)
    return a[:8] + "…" + a[-4:]
