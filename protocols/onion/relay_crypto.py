"""Layered relay-cell crypto: a stream layer per hop, the innermost layer authenticated.

Keys per hop and direction (from ntor): a layer key and an auth key. Every cell a hop handles
in one direction, whether it originates, ends or only passes there, takes that hop's next
counter n (a u64, never reused): the AEAD's nonce is 4-byte direction label | n; a cell that
only passes takes the next bytes of the hop's running layer keystream (below).

Forward (client -> hop d): the client seals the relay message with ChaCha20-Poly1305 under hop
d's forward auth key (the innermost layer, BODY = ciphertext | 16-byte tag), then XORs the
next BODY_LEN bytes of each hop d-1 .. 1's forward layer keystream over the whole body. Hop k, on a
RELAY cell from its previous neighbour, first tries to open it with its auth key at its
counter: if the tag verifies the cell is for it; otherwise it removes its own layer (the same
XOR) and forwards the result. Backward (hop d -> client) mirrors this: hop d seals with its
backward auth key, every hop nearer the client adds its layer, and the client peels hop 1, 2,
... trying each hop's auth key before removing that hop's layer.

Middle hops are silent: a relay hears from the client (EXTEND) and speaks to it (EXTENDED)
only while it is the last hop; once it has extended the circuit nothing is addressed to it
(PADDING_NEGOTIATE, meeting-point requests, streams and padding all go to the last relay or,
once joined, the far end; the client sends nothing but EXTEND while building, and padding
starts when the circuit is built). So a middle hop removes its layer without trying its tag
(`RelayHop.pass_forward`), and the client tries only the last relay's tag and the far end's
(`open_backward(first=)`): a try costs a failed AEAD decryption over the whole cell, and on the
5-relay rendezvous path this saves four per cell. The counters and keystreams move exactly as
when the tag is tried and fails, so nothing on the wire changes; a cell sealed for a middle hop
or sent by one (which no node does) fails at the end and tears the circuit down. A meeting
point whose circuits are joined still tries until a cell passes across the join: a padding DROP
the client sent it before it learnt of the join may arrive after the join, but never after a
cell for the far end (the client seals for the far end only once it knows of the join, and a
circuit's cells arrive in order; the service's end seals nothing for the meeting point after
its RENDEZVOUS1), so from then on the meeting point passes that circuit's cells untried
(relay.py, `RelayCircuit.through`), and a cell for it after that fails at the far end. The
other way, a joined meeting point sends nothing but the padding its client asked for, so a
client that asked for none tries only the far end's tag.

Runs (cells.RelayRun): a hop that layers many cells of one circuit in a row takes the same
keystream bytes in one cipher call (`DirectionState.layer_many`); the bytes and the counters are
those of the cells one by one.

What this protects. A tampered cell fails the tag at its endpoint; a replayed, dropped or
reordered cell is opened with the wrong counter and keystream bytes at every layer, so it
fails too. A cell that
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

The stream layer is a running ChaCha20 keystream per hop and direction, as Tor's tor1 runs one
AES-CTR stream per hop: each cell a hop layers (adds or removes its layer) takes the next
BODY_LEN bytes of the keystream of (layer key, nonce = direction label | u64 epoch), block
counter from 0; a new epoch (the next nonce) starts every EPOCH_CELLS layered cells, so the
32-bit block counter never wraps. A cell sealed for or opened at a hop takes no keystream there
(both ends agree: the sender seals, the receiver's tag verifies). The keystream's position
depends on every earlier cell, so a replayed, dropped or reordered cell is stripped with the
wrong bytes and fails at its endpoint, as with the per-cell nonces the layers used before this
change (session 22): those built a new cipher per cell and layer, whose setup cost more than
the ChaCha20 over 4 KiB itself. Layer and auth keys are independent, so no (key, nonce) is used
twice. Both primitives are `cryptography`'s (OpenSSL, vectorised): its ChaCha20-Poly1305 seals
a 4 KiB cell about four times faster than the portable libsodium that PyNaCl bundles (the AEAD
object is made once per hop and direction); `cryptography` is installed with the pinned
py-libp2p (its Noise transport's noiseprotocol needs it). The bytes are standard
ChaCha20-Poly1305 (IETF) and ChaCha20 (tests/onion/test_relay_crypto.py checks them against
PyNaCl's bindings and against the keystream computed from the formula).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20

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


_U64 = struct.Struct(">Q")


def _nonce(direction: bytes, n: int) -> bytes:
    if n >= MAX_COUNTER:
        raise CircuitProtocolError(TeardownReason.PROTOCOL, "cell counter exhausted")
    return direction + _U64.pack(n)


EPOCH_CELLS = 1 << 20       # layered cells per keystream nonce: 4 GiB of keystream, under 2^32 blocks


def aead_seal(message: bytes, nonce: bytes, key: bytes) -> bytes:
    """ChaCha20-Poly1305 (IETF): ciphertext | tag."""
    return ChaCha20Poly1305(key).encrypt(nonce, message, None)


def aead_open(sealed: bytes, nonce: bytes, key: bytes) -> bytes | None:
    """The plaintext, or None if the tag does not verify."""
    if len(sealed) < TAG_LEN:
        return None
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, sealed, None)
    except InvalidTag:
        return None


def keystream(key: bytes, label: bytes, epoch: int) -> CipherContext:
    """The running ChaCha20 keystream of one layer: nonce = label | u64 epoch, from block 0."""
    return Cipher(ChaCha20(key, bytes(4) + label + struct.pack(">Q", epoch)), mode=None).encryptor()


def stream_xor(key: bytes, nonce: bytes, body: bytes) -> bytes:
    """`body` XOR the ChaCha20 keystream of (key, 12-byte nonce) from block 0 (one cell of a
    fresh keystream; tools/bench/onion_cells.py compares its cost with the running one's)."""
    return Cipher(ChaCha20(key, bytes(4) + nonce), mode=None).encryptor().update(body)


class DirectionState:
    """One hop's keys, counter and running layer keystream for one direction."""

    __slots__ = ("aead", "layer_key", "label", "counter", "layered", "_stream")

    def __init__(self, layer: bytes, auth: bytes, label: bytes) -> None:
        self.aead = ChaCha20Poly1305(auth)
        self.layer_key, self.label = layer, label
        self.counter = 0            # cells this hop handled in this direction (the AEAD nonce)
        self.layered = 0            # cells it layered (the keystream position, in cells)
        self._stream: CipherContext | None = None

    def seal(self, plain: bytes) -> tuple[bytes, bytes]:
        """(body, tag): `plain` sealed as the innermost layer at this hop's next counter."""
        body = self.aead.encrypt(_nonce(self.label, self.counter), plain, None)
        self.counter += 1
        return body, body[-TAG_LEN:]

    def try_open(self, body: bytes) -> tuple[bytes | None, bytes]:
        """(plaintext, b"") if `body` is sealed for this hop at its next counter, else
        (None, body with this hop's layer removed). Either way the counter moves on."""
        n = self.counter
        if n >= MAX_COUNTER:
            _nonce(self.label, n)                 # raises: the cell budget is spent
        self.counter = n + 1
        try:
            return self.aead.decrypt(self.label + _U64.pack(n), body, None), b""
        except InvalidTag:
            return None, self._layer(body)

    def layer_only(self, body: bytes) -> bytes:
        """Add (or remove: XOR) this hop's layer with the next BODY_LEN bytes of its keystream."""
        n = self.counter
        if n >= MAX_COUNTER:
            _nonce(self.label, n)                 # raises: the same cell budget as the AEAD's nonce
        self.counter = n + 1
        return self._layer(body)

    def layer_many(self, bodies: bytes, n: int) -> bytes:
        """`layer_only` over `n` bodies back to back (n x BODY_LEN bytes): the same bytes and
        the same counter and keystream position as `n` calls, in one cipher call per epoch."""
        c = self.counter
        if c + n > MAX_COUNTER:
            _nonce(self.label, MAX_COUNTER)       # raises: the cell budget is spent
        self.counter = c + n
        if n == 1:
            return self._layer(bodies)
        out: list[bytes] = []
        mv = memoryview(bodies)
        pos = 0
        while n:
            into = self.layered % EPOCH_CELLS
            if into == 0:
                self._stream = keystream(self.layer_key, self.label, self.layered // EPOCH_CELLS)
            k = min(n, EPOCH_CELLS - into)
            assert self._stream is not None
            out.append(self._stream.update(mv[pos:pos + k * BODY_LEN] if k * BODY_LEN < len(mv) else bodies))
            self.layered += k
            pos += k * BODY_LEN
            n -= k
        mv.release()
        return out[0] if len(out) == 1 else b"".join(out)

    def _layer(self, body: bytes) -> bytes:
        if self.layered % EPOCH_CELLS == 0:
            self._stream = keystream(self.layer_key, self.label, self.layered // EPOCH_CELLS)
        self.layered += 1
        assert self._stream is not None
        return self._stream.update(body)


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

    def layer_forward(self, dest: int, bodies: bytes, n: int) -> bytes:
        """`n` bodies sealed for hop `dest` (back to back) with the layers of hops dest-1 .. 0
        added: what `seal_forward` adds to each, one cipher call per hop for all of them."""
        for k in range(dest - 1, -1, -1):
            bodies = self.hops[k].forward.layer_many(bodies, n)
        return bodies

    def strip_backward(self, bodies: bytes, n: int, first: int) -> bytes:
        """`n` RELAY bodies from the guard (back to back) with the layers of hops 0 .. first-1
        (middle hops, untried: `open_backward`) removed, one cipher call per hop; open each
        with `open_backward(body, first, stripped=True)`, in order."""
        if len(bodies) != n * BODY_LEN:
            raise CircuitProtocolError(TeardownReason.PROTOCOL, f"relay bodies of {len(bodies)} bytes for {n} cells")
        for k in range(min(first, len(self.hops))):
            bodies = self.hops[k].backward.layer_many(bodies, n)
        return bodies

    def open_backward(self, body: bytes, first: int = 0, stripped: bool = False) -> tuple[int, bytes, bytes]:
        """(hop index, plaintext, tag) of a RELAY cell from the guard; CircuitProtocolError
        (INTEGRITY) when no hop's tag verifies: tampered, replayed or reordered. Hops before
        `first` are middle hops that originate nothing: their layers are removed untried
        (`stripped`: `strip_backward` already removed them)."""
        if len(body) != BODY_LEN:
            raise CircuitProtocolError(TeardownReason.PROTOCOL, f"relay body of {len(body)} bytes")
        for k, hop in enumerate(self.hops):
            if k < first:
                if not stripped:
                    body = hop.backward.layer_only(body)
                continue
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

    def pass_forward(self, body: bytes) -> bytes:
        """A RELAY body from the previous hop when this hop is a middle hop (nothing is
        addressed to it): its layer removed, its tag untried."""
        if len(body) != BODY_LEN:
            raise CircuitProtocolError(TeardownReason.PROTOCOL, f"relay body of {len(body)} bytes")
        return self.crypto.forward.layer_only(body)

    def pass_forward_many(self, bodies: bytes, n: int) -> bytes:
        """`pass_forward` over `n` bodies back to back (a RelayRun), in one cipher call."""
        return self.crypto.forward.layer_many(bodies, n)

    def from_next_many(self, bodies: bytes, n: int) -> bytes:
        """`from_next` over `n` bodies back to back (a RelayRun), in one cipher call."""
        return self.crypto.backward.layer_many(bodies, n)

    def originate(self, plain: bytes) -> tuple[bytes, bytes]:
        """(body, tag) of a message from this hop towards the client."""
        return self.crypto.backward.seal(plain)

    def from_next(self, body: bytes) -> bytes:
        """A RELAY body from the next hop, with this hop's backward layer added."""
        if len(body) != BODY_LEN:
            raise CircuitProtocolError(TeardownReason.PROTOCOL, f"relay body of {len(body)} bytes")
        return self.crypto.backward.layer_only(body)
