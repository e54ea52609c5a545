"""The SOCKS5 handshake (RFC 1928), sans-IO: bytes in, bytes out, one CONNECT request.

What the port accepts, and why:
- Authentication: "no authentication" (method 0x00) only. The port listens on 127.0.0.1;
  RFC 1929 user/password would travel in clear over loopback and keep out no local program
  that can read the config, so it protects nothing. (Tor accepts user/password only to
  isolate streams onto separate circuits, which our circuit layer does not offer yet.) A
  greeting without method 0x00 gets `05 FF` (no acceptable method) and the connection closes.
- Command: CONNECT only. BIND and UDP ASSOCIATE (and Tor's RESOLVE/RESOLVE_PTR) get reply
  0x07 "command not supported": a hidden service has no inbound or datagram side here.
- Destination: a DOMAINNAME in `.fog` (subdomains allowed and ignored, as Tor does for
  `.onion`; case-insensitive). There is no exit to the public internet, so any other name
  and IPv4/IPv6 addresses get 0x02 "connection not allowed by ruleset" (the client used
  SOCKS correctly, our rules forbid the destination); an unknown address type gets 0x08
  "address type not supported"; a malformed `.fog` address gets Tor's extended code 0xF6
  (with extended errors on) or 0x04 "host unreachable". Port 0 gets 0x01 "general failure".
- Tor's habits: a client that speaks HTTP to the port (a browser configured with an HTTP
  proxy) gets an HTTP 501 page saying this is a SOCKS port; a SOCKS4 client gets SOCKS4's
  "request rejected" (91); the success reply's bound address is 0.0.0.0:0; with
  `extended_errors` (Tor's ExtendedErrors flag, off by default because older clients only
  know 0x00-0x08) onion failures are reported with Tor's codes 0xF0-0xF7.
- Bytes the client sends after its request and before our reply (optimistic data) are kept
  (at most `max_pending`) and handed to the adapter with the request.
Any violation raises `SocksError` whose `answer` holds the bytes to send before closing
(possibly none); after that the connection is finished.
"""
from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

from fognode.protocols.onion.address import FogAddress, is_fog_host, parse_address
from fognode.protocols.onion.hs_errors import AddressError, SocksError, SocksReply

SOCKS_VERSION = 5
NO_AUTH = 0x00
NO_ACCEPTABLE = 0xFF
CMD_CONNECT, CMD_BIND, CMD_UDP = 1, 2, 3
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4
DEFAULT_MAX_PENDING = 64 * 1024
HTTP_ANSWER = (
    b"HTTP/1.0 501 fognode is not an HTTP proxy\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\n"
    b"This is fognode's SOCKS5 port, not an HTTP proxy. Configure your program to use it as a "
    b"SOCKS5 proxy that resolves host names itself (remote DNS), e.g.\n"
    b"  curl --socks5-hostname 127.0.0.1:PORT http://<address>.fog/\n")
SOCKS4_REJECT = b"\x00\x5b" + bytes(6)


class Phase(enum.Enum):
    GREETING = "greeting"
    REQUEST = "request"
    CONNECTING = "connecting"      # CONNECT parsed; waiting for the adapter's outcome
    ESTABLISHED = "established"    # success sent; the adapter splices bytes from now on
    CLOSED = "closed"


@dataclass(frozen=True)
class ConnectRequest:
    address: FogAddress
    host: str          # the name as the client sent it (lowercased)
    port: int


def reply_bytes(code: SocksReply) -> bytes:
    """A SOCKS5 reply with bound address 0.0.0.0:0 (what Tor answers)."""
    return bytes([SOCKS_VERSION, int(code), 0, ATYP_IPV4]) + bytes(4) + struct.pack(">H", 0)


class SocksConnection:
    """One client's handshake. Feed `receive_data`; when it returns a request, call
    `connect_succeeded()` or `connect_failed(code)` and send what they return."""

    def __init__(self, *, extended_errors: bool = False, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.extended_errors = extended_errors
        self.max_pending = max_pending
        self.phase = Phase.GREETING
        self.request: ConnectRequest | None = None
        self._buf = bytearray()

    def _code(self, code: SocksReply) -> SocksReply:
        return code if self.extended_errors else code.standard()

    def _refuse(self, message: str, code: SocksReply) -> SocksError:
        self.phase = Phase.CLOSED
        code = self._code(code)
        return SocksError(message, reply=code, answer=reply_bytes(code))

    def receive_data(self, data: bytes) -> tuple[bytes, ConnectRequest | None]:
        """Take the client's bytes; return (bytes to send, the CONNECT request once complete).
        Raises SocksError (send its `answer`, then close) on anything refused."""
        if self.phase in (Phase.ESTABLISHED, Phase.CLOSED):
            raise SocksError(f"no SOCKS data expected in phase {self.phase.value}")
        self._buf += data
        out = b""
        if self.phase is Phase.GREETING:
            out = self._greeting()
        if self.phase is Phase.REQUEST:
            try:
                self.request = self._request()
            except SocksError as e:   # a pipelined greeting is still answered first
                e.answer = out + e.answer
                raise
            return out, self.request
        if len(self._buf) > self.max_pending:   # CONNECTING: early bytes waiting for the outcome
            raise self._refuse(f"over {self.max_pending} bytes sent before the connection was made",
                               SocksReply.GENERAL_FAILURE)
        return out, None

    def _greeting(self) -> bytes:
        buf = self._buf
        if not buf:
            return b""
        if buf[0] != SOCKS_VERSION:
            self.phase = Phase.CLOSED
            if buf[0] == 4:
                raise SocksError("a SOCKS4 client; this port speaks SOCKS5", answer=SOCKS4_REJECT)
            if 0x41 <= buf[0] <= 0x5A:   # 'A'..'Z': an HTTP method (GET, CONNECT, POST, ...)
                raise SocksError("an HTTP client on the SOCKS port", answer=HTTP_ANSWER)
            raise SocksError(f"not SOCKS5 (first byte {buf[0]:#04x})")
        if len(buf) < 2:
            return b""
        n = buf[1]
        if n == 0:
            self.phase = Phase.CLOSED
            raise SocksError("greeting offers no authentication method", answer=bytes([SOCKS_VERSION, NO_ACCEPTABLE]))
        if len(buf) < 2 + n:
            return b""
        methods = bytes(buf[2:2 + n])
        del buf[:2 + n]
        if NO_AUTH not in methods:
            self.phase = Phase.CLOSED
            raise SocksError(f"client offers only authentication methods {methods.hex()}; this port "
                             "takes no authentication", answer=bytes([SOCKS_VERSION, NO_ACCEPTABLE]))
        self.phase = Phase.REQUEST
        return bytes([SOCKS_VERSION, NO_AUTH])

    def _request(self) -> ConnectRequest | None:
        buf = self._buf
        if len(buf) < 5:
            return None
        ver, cmd, rsv, atyp = buf[0], buf[1], buf[2], buf[3]
        if ver != SOCKS_VERSION or rsv != 0:
            raise self._refuse(f"request version {ver} / reserved byte {rsv} invalid", SocksReply.GENERAL_FAILURE)
        if atyp == ATYP_IPV4:
            end = 4 + 4
        elif atyp == ATYP_IPV6:
            end = 4 + 16
        elif atyp == ATYP_DOMAIN:
            end = 5 + buf[4]
        else:
            raise self._refuse(f"unknown address type {atyp}", SocksReply.ADDRESS_TYPE_NOT_SUPPORTED)
        if len(buf) < end + 2:
            return None
        raw_addr = bytes(buf[4:end]) if atyp != ATYP_DOMAIN else bytes(buf[5:end])
        (port,) = struct.unpack(">H", buf[end:end + 2])
        del buf[:end + 2]
        if cmd != CMD_CONNECT:
            raise self._refuse(f"command {cmd} is not supported (CONNECT only)", SocksReply.COMMAND_NOT_SUPPORTED)
        if atyp != ATYP_DOMAIN:
            ip = ipaddress.ip_address(raw_addr)
            raise self._refuse(f"{ip} is an IP address; only .fog names are reachable (no exit)",
                               SocksReply.NOT_ALLOWED)
        if not raw_addr:
            raise self._refuse("empty host name", SocksReply.GENERAL_FAILURE)
        try:
            host = raw_addr.decode("ascii").lower()
        except UnicodeDecodeError:
            raise self._refuse("host name is not ASCII", SocksReply.NOT_ALLOWED) from None
        if not is_fog_host(host):
            raise self._refuse(f"{host[:80]!r} is not a .fog name; only .fog services are reachable (no exit)",
                               SocksReply.NOT_ALLOWED)
        try:
            address = parse_address(host, subdomains=True)
        except AddressError as e:
            raise self._refuse(f"bad .fog address: {e}", SocksReply.HS_BAD_ADDRESS) from None
        if port == 0:
            raise self._refuse("port 0", SocksReply.GENERAL_FAILURE)
        if len(buf) > self.max_pending:
            raise self._refuse(f"over {self.max_pending} bytes sent before the connection was made",
                               SocksReply.GENERAL_FAILURE)
        self.phase = Phase.CONNECTING
        return ConnectRequest(address, host.rstrip("."), port)

    def connect_succeeded(self) -> tuple[bytes, bytes]:
        """The success reply and the client's early bytes to forward to the service."""
        if self.phase is not Phase.CONNECTING:
            raise SocksError(f"no CONNECT pending (phase {self.phase.value})")
        self.phase = Phase.ESTABLISHED
        pending, self._buf = bytes(self._buf), bytearray()
        return reply_bytes(SocksReply.SUCCEEDED), pending

    def connect_failed(self, code: SocksReply) -> bytes:
        """The failure reply for `code` (an extended code falls back to RFC 1928's unless
        extended errors are on); the connection is finished."""
        if self.phase is not Phase.CONNECTING:
            raise SocksError(f"no CONNECT pending (phase {self.phase.value})")
        if code is SocksReply.SUCCEEDED:
            code = SocksReply.GENERAL_FAILURE
        self.phase = Phase.CLOSED
        self._buf.clear()
        return reply_bytes(self._code(code))
