"""The certificate memo (ledger/certmemo.py): a hit returns exactly what a decode would, a
certificate whose encoding differs in any way is decoded afresh, malformed input raises every
time and is never remembered, and the memo stays within its size."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from fognode.ledger.certmemo import CertificateMemo
from fognode.ledger.messages import Certificate, SignedOrder, TransferOrder, Vote, decode_certificate
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import unpack

from .helpers import CHAIN, key, pk, validator_keys


def cert(seq: int = 0, amount: int = 5, memo: str = "", votes: int = 3) -> Certificate:
    so = SignedOrder.sign(key(0), TransferOrder(chain=CHAIN, epoch=0, sender=pk(key(0)), sequence=seq, fee=1,
                                                recipient=pk(key(1)), amount=amount, memo=memo))
    return Certificate.from_votes(so, [Vote.sign(v, so.tx_id) for v in validator_keys()[:votes]])


def raw(c: Certificate) -> object:
    """The certificate as a peer's message carries it: node.wire.unpack of its encoding."""
    return unpack(c.encoded())


@given(st.integers(0, 2**40), st.integers(1, 2**62), st.text(max_size=40), st.integers(1, 4))
def test_the_memo_decodes_as_the_decoder(seq: int, amount: int, memo: str, votes: int) -> None:
    m = CertificateMemo(size=8)
    c = cert(seq, amount, memo, votes)
    first = m.decode(raw(c))
    again = m.decode(raw(c))          # a fresh unpack of the same bytes: a hit
    assert first == again == decode_certificate(raw(c)) == c
    assert again is first and (m.hits, m.misses) == (1, 1)


def test_any_difference_is_decoded_afresh() -> None:
    m = CertificateMemo()
    c = cert()
    assert m.decode(raw(c)) == c
    fewer = cert(votes=2)             # same order, other votes
    assert m.decode(raw(fewer)) == fewer
    other = cert(amount=6)
    assert m.decode(raw(other)) == other
    r = raw(c)
    assert isinstance(r, dict)
    reordered = {k: r[k] for k in reversed(list(r))}      # same map, other key order: a miss, same result
    assert m.decode(reordered) == c
    assert (m.hits, m.misses) == (0, 4)


def test_malformed_input_raises_every_time_and_is_not_remembered() -> None:
    m = CertificateMemo()
    r = raw(cert())
    assert isinstance(r, dict)
    r["votes"] = [[b"\x01" * 32, b"\x02" * 63]]          # a 63-byte signature
    for _ in range(2):
        with pytest.raises(RemoteProtocolError, match="votes\\[0\\]"):
            m.decode(r, peer="12D3KooWpeer")
    r["extra"] = 1
    with pytest.raises(RemoteProtocolError):
        m.decode(r)
    with pytest.raises(RemoteProtocolError):
        m.decode({"v": 1, "order": object()})            # not a msgpack value: the decoder's error
    assert len(m) == 0 and m.misses == 0


def test_the_memo_keeps_its_size_and_drops_the_oldest() -> None:
    m = CertificateMemo(size=3)
    certs = [cert(seq=i) for i in range(5)]
    for c in certs:
        m.decode(raw(c))
    assert len(m) == 3
    m.decode(raw(certs[4]))
    m.decode(raw(certs[0]))          # dropped: decoded again
    assert (m.hits, m.misses) == (1, 6)
