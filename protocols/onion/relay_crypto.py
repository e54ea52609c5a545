"""Layered relay-cell crypto: a stream layer per hop, the innermost layer authenticated.

Keys per hop and direction (from ntor): a layer key and an auth key. Every cell a hop handles
in one direction, whether it originates, ends or only passes there, takes that hop's next
counter n (a u64, never reused) as its nonce: nonce = 4-byte direction label | n.

Forward (client -> hop d): the client seals the relay message with ChaCha20-Poly1305 under hop
d's forward auth key (the innermost layer, BODY = ciphertext | 16-byte tag), then XORs the
ChaCha20 keystream of each hop d-1 .. 1's forward layer key over the whole body. Hop k, on a
RELAY cell from its previous neighbour, first tries to open it with its auth key at its
counter: if the tag verifies the cell is for it; otherwise it removes its own layer (the same
XOR) and forwards the result. Backward (hop d -> client) mirrors this: hop d seals with its
backward auth key, every hop nearer the client adds its layer, and the client peels hop 1, 2,
... trying each hop's auth key before removing that hop's layer.

What this protects. A tampered cell fails the tag at its endpoint; a replayed, dropped or
reordered cell is opened with the wrong counter at every layer, so it fails too. A cell that
verifies nowhere (the client: no hop's tag; the last relay: not its tag and no next hop) tears
the circuit down. Libp2p streams are reliable and ordered under Noise, so only a relay on the
circuit can replay, drop or reorder, and it cannot do so undetected (a dropped cell desynchronises
the counters: every later cell fails, as with Tor's running digest). The tag is 16 bytes
(Poly1305, unique nonce per key): forging one is a 2^-100-class event, against Tor's relay
crypto (tor1: AES-CTR per hop, a running SHA-1 digest checked only at the endpoint and
truncated to 4 bytes in the cell, so a blind forgery passes 1 in 2^32).

What it does not protect (the same as Tor's tor1, tor-spec "relay cells"; Arti's tor1.rs says
as much): the stream layers are malleable and only the endpoint checks integrity, so a hostile
guard that XORs a pattern into a cell and a colluding hostile endpoint that XORs it back out
(a tagging attack) confirm that they share a circuit; a tampered cell that is not undone is
only noticed at the endpoint. Tagging gives such a pair nothing that timing correlation of
both ends does not already give (which neither Tor nor this design resists), and without
collusion it is just a teardown. Tor's planned fix is a wide-block cipher per layer (CGO,
proposal 359); per-hop tags would need a per-hop length change that reveals positions.

What a relay sees: its two neighbours and the circuit ids on both links, the number, timing
and direction of cells, and the plaintext of the cells addressed to it (a middle relay: only
EXTEND; the last hop: the streams it serves and SENDMEs). It cannot read or recognise cells
for other hops, learn how many hops follow it, or (except the guard) who the client is.

The stream layer is ChaCha20 keystream XOR: exactly the IETF AEAD's ciphertext without its tag
(block counter 1 on, as the AEAD uses it), so the bytes on the wire are what an AEAD-based
layer would give; it is computed with `cryptography`'s raw ChaCha20 (OpenSSL; PyNaCl exposes
no raw ChaCha20, and the AEAD's Poly1305 over the whole body, thrown away, cost a third of each
layer: tools/bench/onion_cells.py). `cryptography` is installed with the pinned py-libp2p (its
Noise transport's noiseprotocol needs it). Layer and auth keys are independent, so no
(key, nonce) is used twice. The AEAD is called through PyNaCl's cffi module directly (`nacl._sodium`, the
library PyNaCl's own bindings wrap): its Python-level argument checks cost a third of each call
on a 4 KiB cell (tools/bench/onion_cells.py), and every argument here has a fixed, checked size.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20
from nacl._sodium import ffi, lib

from fognode.protocols.onion.cells import BODY_LEN, PLAIN_LEN, TAG_LEN
from fognode.protocols.onion.errors import CircuitProtocolError, TeardownReason

FORWARD = b"fwd\x00"
BACKWARD = b"bwd\x00"
MAX_COUNTER = 2 ** 63       # a circuit carrying this many cells is torn down long before


@dataclass(frozen=True)
class HopKeys:
    forward_layer: bytes
    forward_auth: bytes
    backward_layer: bytes
    backward_auth: bytes


def _nonce(direction: bytes, n: int) -> bytes:
    if n >= MAX_COUNTER:
        raise CircuitProtocolError(TeardownReason.PROTOCOL, "cell counter exhausted")
    return direction + struct.pack(">Q", n)


def aead_seal(message: bytes, nonce: bytes, key: bytes) -> bytes:
    """ChaCha20-Poly1305 (IETF): ciphertext | tag."""
    out = ffi.new("unsigned char[]", len(message) + TAG_LEN)
    lib.crypto_aead_chacha20poly1305_ietf_encrypt(out, ffi.NULL, message, len(message), ffi.NULL, 0, ffi.NULL,
                                                  nonce, key)
    return ffi.buffer(out)[:]


def aead_open(sealed: bytes, nonce: bytes, key: bytes) -> bytes | None:
    """The plaintext, or None if the tag does not verify."""
    if len(sealed) < TAG_LEN:
        return None
    out = ffi.new("unsigned char[]", len(sealed) - TAG_LEN)
    rc = lib.crypto_aead_chacha20poly1305_ietf_decrypt(out, ffi.NULL, ffi.NULL, sealed, len(sealed), ffi.NULL, 0,
                                                       nonce, key)
    return None if rc != 0 else ffi.buffer(out)[:]


_BLOCK_ONE = struct.pack("<I", 1)      # the AEAD's first ciphertext block (block 0 keys Poly1305)


def stream_xor(key: bytes, nonce: bytes, body: bytes) -> bytes:
    """`body` XOR the ChaCha20 keystream of (key, nonce) from block 1: the IETF AEAD's
    ciphertext of `body` without its tag."""
    return Cipher(ChaCha20(key, _BLOCK_ONE + nonce), mode=None).encryptor().update(body)


class DirectionState:
    """One hop's keys and counter for one direction."""

    __slots__ = ("layer", "auth", "label", "counter")

    def __init__(self, layer: bytes, auth: bytes, label: bytes) -> None:
        self.layer, self.auth, self.label, self.counter = layer, auth, label, 0

    def seal(self, plain: bytes) -> tuple[bytes, bytes]:
        """(body, tag): `plain` sealed as the innermost layer at this hop's next counter."""
        body = aead_seal(plain, _nonce(self.label, self.counter), self.auth)
        self.counter += 1
        return body, body[-TAG_LEN:]

    def try_open(self, body: bytes) -> tuple[bytes | None, bytes]:
        """(plaintext, b"") if `body` is sealed for this hop at its next counter, else
        (None, body with this hop's layer removed). Either way the counter moves on."""
        nonce = _nonce(self.label, self.counter)
        self.counter += 1
        plain = aead_open(body, nonce, self.auth)
        if plain is not None:
            return plain, b""
        return None, stream_xor(self.layer, nonce, body)

    def layer_only(self, body: bytes) -> bytes:
        """Add (or remove: XOR) this hop's layer at its next counter."""
        out = stream_xor(self.layer, _nonce(self.label, self.counter), body)
        self.counter += 1
        return out


class HopCrypto:
    """Both directions of one hop (the same object shape on the client and on the relay)."""

    __slots__ = ("forward", "backward")

    def __init__(self, keys: HopKeys, mirrored: bool = False) -> None:
        """`mirrored`: the service's end of an end-to-end virtual hop (rendezvous.py), whose
        forward direction is the client's backward one and the reverse."""
        fwd = DirectionState(keys.forward_layer, keys.forward_auth, FORWARD)
        bwd = DirectionState(keys.backward_layer, keys.backward_auth, BACKWARD)
        self.forward, self.backward = (bwd, fwd) if mirrored else (fwd, bwd)


class ClientOnion:
    """The client's layers over hops 0..n-1 (0 = guard)."""

    def __init__(self) -> None:
        self.hops: list[HopCrypto] = []

    def add_hop(self, keys: HopKeys, mirrored: bool = False) -> None:
        self.hops.append(HopCrypto(keys, mirrored))

    def seal_forward(self, dest: int, plain: bytes) -> tuple[bytes, bytes]:
        """(body of a RELAY cell for the guard, tag) carrying `plain` to hop `dest`."""
        if len(plain) != PLAIN_LEN:
            raise ValueError(f"relay plaintext must be {PLAIN_LEN} bytes")
        body, tag = self.hops[dest].forward.seal(plain)
        for k in range(dest - 1, -1, -1):
            body = self.hops[k].forward.layer_only(body)
        return body, tag

    def open_backward(self, body: bytes) -> tuple[int, bytes, bytes]:
        """(hop index, plaintext, tag) of a RELAY cell from the guard; CircuitProtocolError
        (INTEGRITY) when no hop's tag verifies: tampered, replayed or reordered."""
        if len(body) != BODY_LEN:
            raise CircuitProtocolError(TeardownReason.PROTOCOL, f"relay body of {len(body)} bytes")
        for k, hop in enumerate(self.hops):
            plain, rest = hop.backward.try_open(body)
            if plain is not None:
                return k, plain, body[-TAG_LEN:]
            body = rest
        raise CircuitProtocolError(TeardownReason.INTEGRITY,
                                   "a relay cell verified at no hop (tampered, replayed or reordered)")


class RelayHop:
    """A relay's layer of one circuit."""

    def __init__(self, keys: HopKeys) -> None:
        self.crypto = HopCrypto(keys)

    def from_previous(self, body: bytes) -> tuple[bytes | None, bytes, bytes]:
        """A RELAY body from the previous hop: (plaintext, b"", tag) if addressed here, else
        (None, body to forward, b"")."""
        if len(body) != BODY_LEN:
            raise CircuitProtocolError(TeardownReason.PROTOCOL, f"relay body of {len(body)} bytes")
        plain, rest = self.crypto.forward.try_open(body)
        return plain, rest, (body[-TAG_LEN:] if plain is not None else b"")

    def originate(self, plain: bytes) -> tuple[bytes, bytes]:
        """(body, tag) of a message from this hop towards the client."""
        return self.crypto.backward.seal(plain)

    def from_next(self, body: bytes) -> bytes:
        """A RELAY body from the next hop, with this hop's backward layer added."""
        if len(body) != BODY_LEN:
            raise CircuitProtocolError(TeardownReason.PROTOCOL, f"relay body of {len(body)} bytes")
        return self.crypto.backward.layer_only(body)
