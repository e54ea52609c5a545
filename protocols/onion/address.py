"""`.fog` addresses: a hidden service's Ed25519 public key as a host name.

Layout, after Tor's onion v3 address (rend-spec-v3 [ONIONADDRESS]) with our own checksum
domain string and version::

    address  = base32(PUBKEY | CHECKSUM | VERSION) + ".fog"      (56 characters + ".fog")
    CHECKSUM = SHA3-256(".fog checksum" | PUBKEY | VERSION)[:2]
    VERSION  = 0x01

base32 is RFC 4648's alphabet (a-z, 2-7) without padding: 35 bytes are exactly 56 characters.
The checksum catches typing errors (a wrong character passes with probability 2^-16); the
version lets a later key type get its own addresses; an address made for Tor (".onion
checksum", version 3) never parses as a `.fog` one.

Parsing rules (`parse_address`):
- The canonical form is lowercase. Uppercase letters are accepted and folded (host names are
  case-insensitive in DNS and in SOCKS clients), so `ABC....FOG` is the same address.
- Whitespace anywhere is refused, not stripped (a SOCKS host name never carries any; a
  pasted address with a space in it is a copy error the user should see). Callers reading
  operator input (the CLI) strip surrounding whitespace themselves.
- A trailing ".fog" is required unless `suffix=False`; subdomains (`www.<addr>.fog`) are
  accepted only with `subdomains=True` and ignored, as Tor does for onion addresses.
- The key must be a valid Ed25519 point of the prime-order subgroup (libsodium's
  `crypto_core_ed25519_is_valid_point`), since blinding multiplies it.
Every refusal is an `AddressError` saying which rule failed.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from nacl.bindings import crypto_core_ed25519_is_valid_point

from fognode.protocols.onion.hs_errors import AddressError

SUFFIX = ".fog"
VERSION = 1
CHECKSUM_DOMAIN = b".fog checksum"
PUBKEY_LEN = 32
CHECKSUM_LEN = 2
RAW_LEN = PUBKEY_LEN + CHECKSUM_LEN + 1   # 35 bytes
LABEL_LEN = 56                            # base32 characters of RAW_LEN bytes
_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
MAX_HOST_LEN = 255                        # a DNS name (and a SOCKS5 DOMAINNAME) is at most 255


def checksum(pubkey: bytes, version: int = VERSION) -> bytes:
    """The 2-byte checksum of `pubkey` for an address of `version`."""
    return hashlib.sha3_256(CHECKSUM_DOMAIN + pubkey + bytes([version])).digest()[:CHECKSUM_LEN]


def is_valid_key(pubkey: bytes) -> bool:
    """True for a 32-byte Ed25519 point in the prime-order subgroup (not of small order)."""
    return len(pubkey) == PUBKEY_LEN and bool(crypto_core_ed25519_is_valid_point(pubkey))


@dataclass(frozen=True)
class FogAddress:
    """A service's address; `pubkey` is its 32-byte Ed25519 identity public key."""

    pubkey: bytes

    @property
    def label(self) -> str:
        """The 56-character base32 label (no suffix)."""
        raw = self.pubkey + checksum(self.pubkey) + bytes([VERSION])
        return base64.b32encode(raw).decode("ascii").lower()

    @property
    def host(self) -> str:
        """`<label>.fog`, the canonical form users type."""
        return self.label + SUFFIX

    def __str__(self) -> str:
        return self.host


def address_from_pubkey(pubkey: bytes) -> FogAddress:
    """The address of an Ed25519 public key; AddressError if it is not a valid point."""
    if len(pubkey) != PUBKEY_LEN:
        raise AddressError(f"a service key is {PUBKEY_LEN} bytes, got {len(pubkey)}")
    if not is_valid_key(pubkey):
        raise AddressError("the service key is not a valid Ed25519 public key")
    return FogAddress(bytes(pubkey))


def is_fog_host(host: str) -> bool:
    """True when `host` is in the `.fog` domain (case-insensitive), valid or not: such a name
    never leaves the onion network, and a malformed one gets an address error, not an exit."""
    return host.lower().rstrip(".").endswith(SUFFIX)


def parse_address(text: str, *, suffix: bool = True, subdomains: bool = False) -> FogAddress:
    """Parse `<label>.fog` (see the module docstring for the rules); AddressError naming the
    rule that failed: whitespace, suffix, subdomain, length, alphabet, version, checksum, key."""
    if not isinstance(text, str):
        raise AddressError(f"an address is a string, got {type(text).__name__}")
    if len(text) > MAX_HOST_LEN:
        raise AddressError(f"address is {len(text)} characters, over the {MAX_HOST_LEN} of a host name")
    for i, ch in enumerate(text):
        if ch.isspace():
            raise AddressError(f"address contains whitespace at position {i}")
    name = text.lower()
    if name.endswith("."):          # a fully qualified name "x.fog." is the same host
        name = name[:-1]
    if suffix:
        if not name.endswith(SUFFIX):
            raise AddressError(f"address {text[:80]!r} does not end in {SUFFIX}")
        name = name[:-len(SUFFIX)]
    labels = name.split(".")
    if len(labels) > 1:
        if not subdomains:
            raise AddressError(f"address {text[:80]!r} has subdomains; expected <56 characters>{SUFFIX}")
        if any(not part for part in labels[:-1]):
            raise AddressError(f"address {text[:80]!r} has an empty label")
    label = labels[-1]
    if len(label) != LABEL_LEN:
        raise AddressError(f"address label is {len(label)} characters, a {SUFFIX} address has {LABEL_LEN}")
    bad = sorted(set(label) - _ALPHABET)
    if bad:
        raise AddressError(f"address has characters outside base32 (a-z, 2-7): {''.join(bad)[:16]!r}")
    try:
        raw = base64.b32decode(label.upper())
    except (binascii.Error, ValueError) as e:  # unreachable with the checks above; kept for safety
        raise AddressError(f"address is not base32: {e}") from None
    pubkey, check, version = raw[:PUBKEY_LEN], raw[PUBKEY_LEN:PUBKEY_LEN + CHECKSUM_LEN], raw[-1]
    if version != VERSION:
        raise AddressError(f"address version {version} is not supported (this node knows {VERSION})")
    if check != checksum(pubkey, version):
        raise AddressError("address checksum does not match: a character is wrong")
    if not is_valid_key(pubkey):
        raise AddressError("address does not hold a valid Ed25519 public key")
    return FogAddress(pubkey)
