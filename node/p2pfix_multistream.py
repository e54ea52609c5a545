"""py-libp2p 0.8.1 fix: multistream-select proposes the protocol in the same write as its header.

Symptom (upstream report form). `MultiselectClient.select_one_of` writes
`/multistream/1.0.0`, waits for the listener's header, and only then writes the protocol and
waits again: two round trips, and four separate writes on the stream (each one yamux frame,
one Noise frame and one `send_all`) where go-libp2p's `SelectProtoOrFail` and js-libp2p send
the header and the first proposal together and read both answers after one round trip. Every
`host.new_stream` (pubsub, identify, ping, kad, application streams) pays it. Reproduction: two
hosts on 127.0.0.1 in one `trio.run`; count trio scheduler iterations (`before_io_wait`) around
`host.new_stream(peer, [proto])` and the yamux DATA frames the dialer sends.

Fix. `PipelinedMultiselectClient(MultiselectClient)` sends header and first proposal in one
write, then reads the listener's header and its answer. If the answer is `na` the remaining
protocols are tried one at a time by py-libp2p's own `try_select`, as before. Any listener that
implements the spec handles this (it reads messages in order; the protocol is simply already
buffered): go-libp2p and js-libp2p do the same on their side. It is installed by assigning the
host's `multiselect_client` attribute after `new_host` (BasicHost has no constructor option for
it; no module is patched).
"""
from __future__ import annotations

from typing import Any, Sequence

import trio
from libp2p.protocol_muxer.exceptions import (MultiselectClientError,
                                              MultiselectCommunicatorError)
from libp2p.protocol_muxer.multiselect_client import (DEFAULT_NEGOTIATE_TIMEOUT,
                                                      MULTISELECT_PROTOCOL_ID,
                                                      PROTOCOL_NOT_FOUND_MSG, MultiselectClient)
from libp2p.utils import encode_delim


class PipelinedMultiselectClient(MultiselectClient):
    """MultiselectClient whose first proposal rides with the header (module doc)."""

    async def select_one_of(self, protocols: Sequence[Any], communicator: Any,
                            negotiate_timeout: int = DEFAULT_NEGOTIATE_TIMEOUT) -> Any:
        rw = getattr(communicator, "read_writer", None)
        if not protocols or rw is None:
            return await super().select_one_of(protocols, communicator, negotiate_timeout)
        first = protocols[0]
        with trio.move_on_after(negotiate_timeout):
            try:
                await rw.write(encode_delim(MULTISELECT_PROTOCOL_ID.encode())
                               + encode_delim(str(first).encode()))
            except Exception as error:
                raise MultiselectClientError(f"handshake write failed: {error}") from error
            try:
                header = await communicator.read()
                if header != MULTISELECT_PROTOCOL_ID:
                    raise MultiselectClientError(
                        f"multiselect protocol ID mismatch: expected "
                        f"{MULTISELECT_PROTOCOL_ID}, got {header!r}")
                answer = await communicator.read()
            except MultiselectCommunicatorError as error:
                raise MultiselectClientError(f"protocol read failed: {error}, "
                                             f"protocol={first}") from error
            if answer == str(first):
                return first
            if answer != PROTOCOL_NOT_FOUND_MSG:
                raise MultiselectClientError(
                    f"unrecognized response: {answer!r}, expected {str(first)!r} or "
                    f"{PROTOCOL_NOT_FOUND_MSG!r}, protocol={first}")
            errors = [f"protocol not supported: {first}"]
            for protocol in protocols[1:]:
                try:
                    return await self.try_select(communicator, protocol)
                except MultiselectClientError as error:     # ProtocolNotSupportedError too
                    errors.append(str(error))
            raise MultiselectClientError(
                f"none of {[str(p) for p in protocols]} supported: {'; '.join(errors)}")
        raise MultiselectClientError(f"response timed out after {negotiate_timeout}s, "
                                     f"protocols tried: {list(protocols)}")


def install(host: Any) -> None:
    """Give `host` (a py-libp2p BasicHost) the pipelined client."""
    host.multiselect_client = PipelinedMultiselectClient()
