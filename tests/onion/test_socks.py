"""The sans-IO SOCKS5 handshake (socks.py): every reply code, split and pipelined input, and
arbitrary bytes only ever raising SocksError."""
from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from fognode.protocols.onion.address import address_from_pubkey
from fognode.protocols.onion.hs_errors import SocksError, SocksReply
from fognode.protocols.onion.socks import (HTTP_ANSWER, SOCKS4_REJECT, ConnectRequest, Phase,
                                           SocksConnection, reply_bytes)

ADDR = address_from_pubkey(bytes(SigningKey(bytes(range(32))).verify_key))
HELLO = b"\x05\x01\x00"


def connect(host: bytes, port: int = 80, cmd: int = 1) -> bytes:
    return bytes([5, cmd, 0, 3, len(host)]) + host + struct.pack(">H", port)


def refused(data: bytes, **kw: bool) -> SocksError:
    conn = SocksConnection(**kw)
    if data.startswith(HELLO):        # the greeting on its own, then the rest
        assert conn.receive_data(HELLO) == (b"\x05\x00", None)
        data = data[len(HELLO):]
    with pytest.raises(SocksError) as e:
        conn.receive_data(data)
    assert conn.phase is Phase.CLOSED
    return e.value


def test_connect_round_trip_byte_by_byte() -> None:
    conn = SocksConnection()
    data = HELLO + connect(ADDR.host.encode(), 8080)
    out, req = b"", None
    for i in range(len(data)):
        o, r = conn.receive_data(data[i:i + 1])
        out += o
        req = req or r
    assert out == b"\x05\x00"
    assert req == ConnectRequest(ADDR, ADDR.host, 8080) and conn.phase is Phase.CONNECTING
    reply, early = conn.connect_succeeded()
    assert reply == b"\x05\x00\x00\x01" + bytes(6) and early == b""
    assert conn.phase is Phase.ESTABLISHED
    with pytest.raises(SocksError):
        conn.receive_data(b"x")


def test_pipelined_greeting_request_and_early_data() -> None:
    conn = SocksConnection()
    out, req = conn.receive_data(HELLO + connect(b"WWW." + ADDR.host.upper().encode()) + b"GET / HTTP/1.0\r\n")
    assert out == b"\x05\x00" and req is not None and req.address == ADDR and req.port == 80
    assert conn.receive_data(b"\r\n") == (b"", None)
    assert conn.connect_succeeded()[1] == b"GET / HTTP/1.0\r\n\r\n"


def test_failure_replies_and_extended_codes() -> None:
    for extended, expect in ((False, 0x04), (True, 0xF0)):
        conn = SocksConnection(extended_errors=extended)
        conn.receive_data(HELLO + connect(ADDR.host.encode()))
        assert conn.connect_failed(SocksReply.HS_DESC_NOT_FOUND) == reply_bytes(SocksReply(expect))
        assert conn.phase is Phase.CLOSED
    conn = SocksConnection()
    conn.receive_data(HELLO + connect(ADDR.host.encode()))
    assert conn.connect_failed(SocksReply.SUCCEEDED)[1] == 0x01   # never a success by mistake
    with pytest.raises(SocksError):
        conn.connect_succeeded()


def reply_code(e: SocksError) -> int:
    assert len(e.answer) == 10 and e.answer[:2] == bytes([5, e.answer[1]])
    return e.answer[1]


@pytest.mark.parametrize("request_bytes, code", [
    (connect(b"example.com"), 0x02),                                             # not .fog: no exit
    (connect(b"fog"), 0x02),
    (b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + b"\x00\x50", 0x02),  # IPv4
    (b"\x05\x01\x00\x04" + socket.inet_pton(socket.AF_INET6, "::1") + b"\x00\x50", 0x02),  # IPv6
    (b"\x05\x01\x00\x07\x00\x00", 0x08),                                         # unknown address type
    (connect(ADDR.host.encode(), cmd=2), 0x07),                                   # BIND
    (connect(ADDR.host.encode(), cmd=3), 0x07),                                   # UDP ASSOCIATE
    (connect(ADDR.host.encode(), cmd=0xF0), 0x07),                                # Tor's RESOLVE
    (connect(b"x" * 56 + b".fog"), 0x04),                                         # bad .fog address
    (connect(ADDR.host.encode(), port=0), 0x01),
    (connect(b""), 0x01),
    (connect("bücher.fog".encode()), 0x02),                                        # not ASCII
    (b"\x04\x01\x00\x03\x01a\x00\x50", 0x01),                                     # request version 4
    (b"\x05\x01\x01\x03\x01a\x00\x50", 0x01),                                     # reserved byte set
])
def test_request_refusals(request_bytes: bytes, code: int) -> None:
    e = refused(HELLO + request_bytes)
    assert reply_code(e) == code and e.reply == SocksReply(code)


def test_pipelined_refusal_still_answers_the_greeting_first() -> None:
    with pytest.raises(SocksError) as e:
        SocksConnection().receive_data(HELLO + connect(b"example.com"))
    assert e.value.answer == b"\x05\x00" + reply_bytes(SocksReply.NOT_ALLOWED)


def test_bad_address_with_extended_errors() -> None:
    e = refused(HELLO + connect(b"x" * 56 + b".fog"), extended_errors=True)
    assert reply_code(e) == 0xF6


def test_greeting_refusals() -> None:
    assert refused(b"\x05\x01\x02").answer == b"\x05\xff"            # user/password only
    assert refused(b"\x05\x00").answer == b"\x05\xff"                # no methods at all
    assert refused(b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00").answer == SOCKS4_REJECT
    assert refused(b"GET http://x.fog/ HTTP/1.1\r\n").answer == HTTP_ANSWER
    assert refused(b"CONNECT x.fog:80 HTTP/1.1\r\n").answer.startswith(b"HTTP/1.0 501")
    assert refused(b"\x16\x03\x01").answer == b""                     # TLS hello: nothing to say


def test_early_data_is_bounded() -> None:
    conn = SocksConnection(max_pending=100)
    conn.receive_data(HELLO + connect(ADDR.host.encode()) + b"x" * 100)
    with pytest.raises(SocksError) as e:
        conn.receive_data(b"y")
    assert reply_code(e.value) == 0x01
    with pytest.raises(SocksError):
        SocksConnection(max_pending=10).receive_data(HELLO + connect(ADDR.host.encode()) + b"x" * 11)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_arbitrary_bytes_only_raise_socks_error(chunks: list[bytes]) -> None:
    conn = SocksConnection()
    try:
        for c in chunks:
            conn.receive_data(c)
    except SocksError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 40))
def test_after_a_valid_greeting_any_request_bytes_only_raise_socks_error(data: bytes, split: int) -> None:
    conn = SocksConnection()
    conn.receive_data(HELLO)
    try:
        for i in range(0, len(data), split):
            conn.receive_data(data[i:i + split])
    except SocksError as e:
        assert e.answer == b"" or len(e.answer) == 10
