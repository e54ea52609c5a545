"""The ledger's signature check remembers verified triples (ledger/quorum.py): a hit needs the
same key, signature and message, a failure is never remembered, and the cache stays bounded."""
from __future__ import annotations

from typing import Any

from nacl.signing import SigningKey

from fognode.ledger import quorum
from fognode.ledger.messages import SignedOrder, TransferOrder, Vote, vote_message
from fognode.ledger.quorum import check_signature


def _signed(msg: bytes) -> tuple[bytes, bytes]:
    sk = SigningKey.generate()
    return bytes(sk.verify_key), sk.sign(msg).signature


def test_a_verified_triple_is_remembered_and_only_that_triple() -> None:
    pub, sig = _signed(b"vote for tx 1")
    assert check_signature(pub, b"vote for tx 1", sig)
    assert quorum._verified[pub + sig] == b"vote for tx 1"
    assert check_signature(pub, b"vote for tx 1", sig)          # from the cache
    # the same key and signature over other bytes is still refused, cached or not
    assert not check_signature(pub, b"vote for tx 2", sig)
    other_pub, _ = _signed(b"x")
    assert not check_signature(other_pub, b"vote for tx 1", sig)


def test_a_refused_signature_is_never_remembered() -> None:
    pub, sig = _signed(b"order")
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    assert not check_signature(pub, b"order", bad)
    assert pub + bad not in quorum._verified
    assert not check_signature(pub, b"order", bad)


def test_the_cache_is_bounded() -> None:
    sk = SigningKey.generate()
    pub = bytes(sk.verify_key)
    for i in range(quorum.VERIFIED_CACHE_SIZE + 50):
        msg = b"m%d" % i
        assert check_signature(pub, msg, sk.sign(msg).signature)
    assert len(quorum._verified) <= quorum.VERIFIED_CACHE_SIZE


def test_the_oldest_triple_goes_first() -> None:
    sk = SigningKey.generate()
    pub = bytes(sk.verify_key)
    sigs = []
    for i in range(quorum.VERIFIED_CACHE_SIZE + 2):
        msg = b"o%d" % i
        sigs.append(sk.sign(msg).signature)
        assert check_signature(pub, msg, sigs[-1])
    assert len(quorum._verified) == quorum.VERIFIED_CACHE_SIZE
    # the two oldest of this run are gone, the newest stay, in insertion order
    assert pub + sigs[0] not in quorum._verified and pub + sigs[1] not in quorum._verified
    assert pub + sigs[2] in quorum._verified
    assert next(reversed(quorum._verified)) == pub + sigs[-1]
    assert check_signature(pub, b"o0", sigs[0])        # verified afresh, still good
    assert next(reversed(quorum._verified)) == pub + sigs[0]


def test_signatures_this_node_makes_are_remembered_as_made(monkeypatch: Any) -> None:
    """Orders and votes signed here (SignedOrder.sign, Vote.sign) are checked from the cache,
    with no Ed25519 verification; the same signature over other bytes still goes to libsodium
    and is refused."""
    wallet, validator = SigningKey.generate(), SigningKey.generate()
    order = TransferOrder(chain="c", epoch=0, sender=bytes(wallet.verify_key), sequence=0, fee=1,
                          recipient=bytes(validator.verify_key), amount=5, memo="")
    so = SignedOrder.sign(wallet, order)
    vote = Vote.sign(validator, so.tx_id)
    opened: list[bytes] = []
    real = quorum.crypto_sign_open

    def counting(sm: bytes, pk: bytes) -> bytes:
        opened.append(pk)
        return real(sm, pk)
    monkeypatch.setattr(quorum, "crypto_sign_open", counting)
    assert so.signature_ok() and vote.signature_ok()
    assert opened == []
    assert not check_signature(vote.validator, vote_message(b"\x00" * 32), vote.signature)
    assert opened == [vote.validator]
