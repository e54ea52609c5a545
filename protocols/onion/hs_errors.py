"""Errors of the hidden-service side of the onion role: `.fog` addresses, blinded keys,
descriptors, onion-key certificates, service mappings and the SOCKS5 port.

Whose fault each one is:
- `AddressError`: whoever typed or sent the `.fog` address (a user, a SOCKS client, a peer).
- `DescriptorRejected` / `OnionCertRejected`: the peer (or DHT node) that served the bytes;
  a `RemoteProtocolError`, and also a `ValueError`, which is what DHT validators raise
  (node/overlay.DhtValidator). `reason` is the label of the rejection metric.
- `SocksError`: the local program speaking to the SOCKS port; it carries the RFC 1928 reply
  code the client gets before the connection is closed (None: nothing can be answered).
- `HsConnectError`: raised by the connector the SOCKS server is given (the circuit layer)
  when a `.fog` service cannot be reached; its reply code goes back to the SOCKS client.
- `ServiceConfigError` is a `ConfigError` naming the `[[protocols.onion.services]]` field.
(The lead merges these into the role's `errors.py`.)
"""
from __future__ import annotations

import enum

from fognode.node.errors import ConfigError, FognodeError, RemoteProtocolError


class AddressError(FognodeError, ValueError):
    """A `.fog` address is malformed: length, alphabet, checksum, version or key."""


class DescriptorReason(enum.Enum):
    """Why a hidden-service descriptor was refused."""

    OVERSIZE = "oversize"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"       # descriptor or signing-key certificate forged/altered
    BAD_CERT = "bad_cert"                 # certificate of the wrong type, for another key, too short
    EXPIRED = "expired"                   # descriptor (or its certificate) past its expiry
    FUTURE = "future"                     # issued too far ahead of our clock
    WRONG_PERIOD = "wrong_period"         # not the time period asked for / not near ours
    WRONG_KEY = "wrong_key"               # blinded key is not the address' key for that period,
                                          # or the DHT key is not the blinded key's
    OLD_REVISION = "old_revision"         # a replay: lower revision than one already seen
    UNDECRYPTABLE = "undecryptable"       # the inner layer does not open with the address' keys


class DescriptorRejected(RemoteProtocolError, ValueError):
    """A descriptor was refused; `reason` says why (counted in the metrics)."""

    def __init__(self, reason: DescriptorReason, message: str, *, peer: str | None = None) -> None:
        self.reason = reason
        RemoteProtocolError.__init__(self, f"hs descriptor {reason.value}: {message}", peer=peer)


class OnionCertReason(enum.Enum):
    """Why a relay's onion-key certificate was refused."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    WRONG_IDENTITY = "wrong_identity"     # signed by another node than the one it is for
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    BAD_KEY = "bad_key"                   # the onion key is not a usable X25519 key


class OnionCertRejected(RemoteProtocolError, ValueError):
    """A relay's onion-key certificate was refused; `reason` says why."""

    def __init__(self, reason: OnionCertReason, message: str, *, peer: str | None = None) -> None:
        self.reason = reason
        RemoteProtocolError.__init__(self, f"onion key cert {reason.value}: {message}", peer=peer)


class ServiceConfigError(ConfigError):
    """A `[[protocols.onion.services]]` entry (or `onion.add_service` parameter) is wrong;
    the key names the entry and field, e.g. `protocols.onion.services[1].target`."""


class ServiceError(FognodeError):
    """A service operation cannot be done (unknown service, port already mapped, key file
    unreadable or readable by others); the message says what to change."""


class SocksReply(enum.IntEnum):
    """RFC 1928 section 6 reply codes, then Tor's extended onion-service codes (prop304,
    sent only when extended errors are enabled: older clients treat them as a failure)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02          # connection not allowed by ruleset (no exit: only .fog)
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08
    # Tor's extended SOCKS errors for onion services (ExtendedErrors flag of SocksPort)
    HS_DESC_NOT_FOUND = 0xF0
    HS_DESC_INVALID = 0xF1
    HS_INTRO_FAILED = 0xF2
    HS_REND_FAILED = 0xF3
    HS_MISSING_CLIENT_AUTH = 0xF4
    HS_WRONG_CLIENT_AUTH = 0xF5
    HS_BAD_ADDRESS = 0xF6
    HS_INTRO_TIMEDOUT = 0xF7

    def standard(self) -> "SocksReply":
        """The RFC 1928 code an extended code falls back to for clients without extensions."""
        if self < 0xF0:
            return self
        return SocksReply.TTL_EXPIRED if self is SocksReply.HS_INTRO_TIMEDOUT else SocksReply.HOST_UNREACHABLE


class SocksError(FognodeError):
    """A SOCKS client sent something the port refuses. `reply` is the code to answer before
    closing (None when the client has not got far enough to be answered in SOCKS5);
    `answer` is raw bytes to send instead (the HTTP hint for a browser pointed at the port)."""

    def __init__(self, message: str, *, reply: SocksReply | None = None, answer: bytes = b"") -> None:
        self.reply = reply
        self.answer = answer
        super().__init__(message)


class HsConnectError(FognodeError):
    """The connector could not reach a `.fog` service; `reply` is what the SOCKS client gets
    (e.g. HS_DESC_NOT_FOUND, CONNECTION_REFUSED when the service has no such port)."""

    def __init__(self, message: str, *, reply: SocksReply = SocksReply.HOST_UNREACHABLE) -> None:
        self.reply = reply
        super().__init__(message)
