"""The manifest of a hosted service and its sealed form in the DHT.

A deploy makes a service key A (Ed25519); its `.fog` address is the only thing an accessor
needs. What the accessor needs next, the manifest, is::

    {"v": 1, "name": <file name>, "level": 1..3, "k": <int>, "n": <int>, "size": <ciphertext bytes>,
     "key": <32-byte content key>, "fee": <micro-units per access>, "payee": <owner's wallet>,
     "created": <unix s>, "expires": <unix s>,
     "shards": [{"host": "<label>.fog", "hash": <32-byte BLAKE2b>}, ...n]}

Shard i is zfec share i; `host` is the `.fog` address of the hosting service of the node that
keeps it (never its peer id: accessors reach hosts by rendezvous, neither learns the other).

In the DHT it is sealed (`seal`, `open_envelope`) under a key blinded from A, as descriptors
are (blinding.py, with period 0 of length 1, a blinding no descriptor uses)::

    key   /fognode-hosted/<hex A'>
    value {"v": 1, "t": "hosted", "blinded": A', "rev": <int>, "ct": SecretBox(K_A, pack(manifest)),
           "sig": <A' signature over the map without sig>}

K_A = SHA3-256("fognode hosted manifest key" | A). DHT nodes check the envelope (size, A'
matching the key, the blinded signature: `HostedValidator`) without learning A, so they can
neither read the manifest nor link it to the address, and nobody without a' can replace it.
A' is also the service id hosts and payments name (`service_id`): hosts learn A', never A,
so k colluding hosts still cannot decrypt what they keep unless the address is given to them.

One validating decoder each (`decode_manifest`, `decode_envelope`): wrong types, missing or
unknown fields, oversize values, an unknown version are a ManifestError naming the field.
Sans-IO.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from nacl.signing import SigningKey

from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import Fields, pack, unpack, verify
from fognode.protocols.onion.address import FogAddress, parse_address
from fognode.protocols.onion.blinding import blind_public_key, blind_signing_key
from fognode.protocols.onion.hosting.shards import KEY_LEN, MAX_CONTENT, MAX_SHARDS, check_code, ContentError
from fognode.protocols.onion.wire_names import HOSTED_NAMESPACE

VERSION = 1
NAMESPACE = HOSTED_NAMESPACE
PREFIX = f"/{NAMESPACE}/"
MAX_ENVELOPE = 16384
MAX_NAME = 255
MAX_FEE = 10**15
MAX_TIME = 2**40
LEVELS = (1, 2, 3)
_BLIND = (0, 1)          # (period, length): a blinding of its own (descriptor periods are >= 60 s)
_KEY_STRING = b"fognode hosted manifest key"


class ManifestError(RemoteProtocolError):
    """A manifest or its envelope does not decode or verify (whoever stored or sent it)."""


@dataclass(frozen=True)
class ShardRef:
    host: str            # "<label>.fog" of the hosting node's hosting service
    hash: bytes          # BLAKE2b-256 of the shard

    def to_wire(self) -> dict[str, Any]:
        return {"host": self.host, "hash": self.hash}


@dataclass(frozen=True)
class Manifest:
    name: str
    level: int
    k: int
    n: int
    size: int
    key: bytes
    fee: int
    payee: bytes
    created: int
    expires: int
    shards: tuple[ShardRef, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"v": VERSION, "name": self.name, "level": self.level, "k": self.k, "n": self.n,
                "size": self.size, "key": self.key, "fee": self.fee, "payee": self.payee,
                "created": self.created, "expires": self.expires,
                "shards": [s.to_wire() for s in self.shards]}

    def encode(self) -> bytes:
        return pack(self.to_wire())

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(s.hash for s in self.shards)


def decode_manifest(data: bytes, *, peer: str | None = None) -> Manifest:
    """The manifest in `data`; ManifestError naming what is wrong."""
    try:
        f = Fields(unpack(data, max_size=MAX_ENVELOPE, what="hosted manifest"), "hosted manifest",
                   versions={VERSION}, peer=peer)
        name = f.str("name", max_len=MAX_NAME)
        level = f.int("level", lo=1, hi=max(LEVELS))
        k = f.int("k", lo=1, hi=MAX_SHARDS)
        n = f.int("n", lo=1, hi=MAX_SHARDS)
        size = f.int("size", lo=1, hi=MAX_CONTENT + 64)
        key = f.bytes("key", size=KEY_LEN)
        fee = f.int("fee", lo=0, hi=MAX_FEE)
        payee = f.bytes("payee", size=32)
        created = f.int("created", lo=0, hi=MAX_TIME)
        expires = f.int("expires", lo=0, hi=MAX_TIME)
        raw_shards = f.list("shards", max_len=MAX_SHARDS)
        f.done()
        shards = []
        for i, raw in enumerate(raw_shards):
            s = Fields(raw, f"hosted manifest shards[{i}]", peer=peer)
            host = s.str("host", max_len=80)
            h = s.bytes("hash", size=32)
            s.done()
            try:
                parse_address(host)
            except ValueError as e:
                raise ManifestError(f"hosted manifest shards[{i}].host: {e}", peer=peer) from None
            shards.append(ShardRef(host, h))
    except ManifestError:
        raise
    except RemoteProtocolError as e:
        raise ManifestError(str(e), peer=peer) from None
    try:
        check_code(k, n)
    except ContentError as e:
        raise ManifestError(f"hosted manifest k/n: {e}", peer=peer) from None
    if len(shards) != n:
        raise ManifestError(f"hosted manifest shards: {len(shards)} listed, n is {n}", peer=peer)
    if expires < created:
        raise ManifestError("hosted manifest expires: before created", peer=peer)
    return Manifest(name, level, k, n, size, key, fee, payee, created, expires, tuple(shards))


# -- the sealed form -----------------------------------------------------------------------------

def service_id(pubkey: bytes) -> bytes:
    """A': the id of the hosted service of address key `pubkey` (what hosts and payments name)."""
    return blind_public_key(pubkey, *_BLIND)


def dht_key(sid: bytes) -> str:
    return PREFIX + sid.hex()


def _manifest_key(pubkey: bytes) -> bytes:
    return hashlib.sha3_256(_KEY_STRING + pubkey).digest()


@dataclass(frozen=True)
class Envelope:
    blinded: bytes
    rev: int
    ct: bytes
    sig: bytes

    def body(self) -> dict[str, Any]:
        return {"v": VERSION, "t": "hosted", "blinded": self.blinded, "rev": self.rev, "ct": self.ct}

    def encode(self) -> bytes:
        return pack({**self.body(), "sig": self.sig})


def seal(manifest: Manifest, key: SigningKey, rev: int) -> tuple[str, bytes]:
    """(DHT key, value) of `manifest` for the service key `key`, revision `rev`."""
    pub = bytes(key.verify_key)
    bkey = blind_signing_key(key, *_BLIND)
    ct = bytes(SecretBox(_manifest_key(pub)).encrypt(manifest.encode()))
    env = Envelope(bkey.public, rev, ct, b"")
    env = Envelope(bkey.public, rev, ct, bkey.sign(pack(env.body())))
    return dht_key(bkey.public), env.encode()


def decode_envelope(data: bytes, *, peer: str | None = None) -> Envelope:
    """The envelope in `data`, its signature checked; ManifestError naming what is wrong."""
    if len(data) > MAX_ENVELOPE:
        raise ManifestError(f"hosted envelope is {len(data)} bytes, over {MAX_ENVELOPE}", peer=peer)
    try:
        f = Fields(unpack(data, max_size=MAX_ENVELOPE, what="hosted envelope"), "hosted envelope",
                   versions={VERSION}, peer=peer)
        if f.str("t", max_len=16) != "hosted":
            raise ManifestError("hosted envelope t: not 'hosted'", peer=peer)
        env = Envelope(f.bytes("blinded", size=32), f.int("rev", lo=0, hi=2**63 - 1),
                       f.bytes("ct", max_len=MAX_ENVELOPE), f.bytes("sig", size=64))
        f.done()
    except ManifestError:
        raise
    except RemoteProtocolError as e:
        raise ManifestError(str(e), peer=peer) from None
    if not verify(env.blinded, env.body(), env.sig):
        raise ManifestError("hosted envelope sig: not the blinded key's signature (forged)", peer=peer)
    return env


def open_envelope(data: bytes, address: FogAddress, *, peer: str | None = None) -> tuple[Envelope, Manifest]:
    """The manifest of `address` from its DHT value: the envelope must be signed by the
    address's blinded key and open with its manifest key; ManifestError otherwise."""
    env = decode_envelope(data, peer=peer)
    if env.blinded != service_id(address.pubkey):
        raise ManifestError(f"hosted envelope blinded: not the key of {address.host}", peer=peer)
    try:
        plain = SecretBox(_manifest_key(address.pubkey)).decrypt(env.ct)
    except CryptoError:
        raise ManifestError("hosted envelope ct: does not open with the address's key", peer=peer) from None
    return env, decode_manifest(bytes(plain), peer=peer)


class HostedValidator:
    """The DHT validator of the `fognode-hosted` namespace (node.overlay.DhtValidator): a value
    must be an envelope signed by the blinded key its DHT key names; the highest revision wins."""

    def __init__(self, on_reject: Callable[[str], None] | None = None) -> None:
        self.on_reject = on_reject
        self.rejected = 0

    def validate(self, key: str, value: bytes) -> None:
        try:
            env = decode_envelope(value)
            if key != dht_key(env.blinded):
                raise ManifestError(f"hosted envelope stored under {key[:40]!r}, not its own key")
        except ManifestError as e:
            self.rejected += 1
            if self.on_reject is not None:
                self.on_reject(str(e))
            raise ValueError(str(e)) from None

    def select(self, key: str, values: Sequence[bytes]) -> int:
        best, rank = 0, -1
        for i, v in enumerate(values):
            try:
                r = decode_envelope(v).rev
            except ManifestError:
                continue
            if r > rank:
                best, rank = i, r
        return best
