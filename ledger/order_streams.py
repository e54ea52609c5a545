"""The client side of the order stream `/fognode/ledger/order/1.0.0`: one long-lived stream per
validator, one request at a time on it.

Every ledger adapter that asks validators something (order votes in submit.py, committee
votes in committee_service.py, lock handover pages in handover_service.py, uptime receipts in
uptime_service.py) goes through `OrderStreams.request`; they are typed against
`ports.Requester`, the one method they need.
"""
from __future__ import annotations

from typing import Any

import trio

from fognode.ledger.errors import RequestNotSent
from fognode.ledger.ports import MAX_REPLY
from fognode.node.errors import FognodeError, StreamClosed
from fognode.node.overlay import FramedStream, Overlay

ORDER_STREAM = "/fognode/ledger/order/1.0.0"


class OrderStreams:
    """Cached order streams to validators, opened on first use."""

    def __init__(self, overlay: Overlay, request_timeout: float) -> None:
        self.overlay = overlay
        self.request_timeout = request_timeout
        self._streams: dict[bytes, FramedStream] = {}
        self._stream_locks: dict[bytes, trio.Lock] = {}

    def clear(self) -> None:
        """Forget the cached streams (the host closes them with its connections)."""
        self._streams.clear()

    async def request(self, validator: bytes, peer: str, request: dict[str, Any],
                      max_reply: int = MAX_REPLY) -> Any:
        """Send one order request to `validator` over its cached order stream (opened on first
        use; a stale one is replaced once) and return the raw reply (at most `max_reply`
        bytes). One request at a time per validator. Raises RequestNotSent when no stream to
        the validator could be opened (the request never left), else FognodeError or
        trio.TooSlowError (after request_timeout: the validator may have received it)."""
        async with self._stream_locks.setdefault(validator, trio.Lock()):
            for attempt in (0, 1):
                stream = self._streams.get(validator)
                fresh = stream is None
                sending = False
                try:
                    with trio.fail_after(self.request_timeout):
                        if stream is None:
                            stream = await self.overlay.open_stream(peer, ORDER_STREAM)
                            self._streams[validator] = stream
                        sending = True
                        await stream.send(request)
                        return await stream.recv(max_size=max_reply)
                except BaseException as e:
                    self._streams.pop(validator, None)
                    if stream is not None:
                        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                            try:
                                await stream.reset()
                            except FognodeError:
                                pass
                    if not sending and isinstance(e, (FognodeError, trio.TooSlowError)):
                        # the stream never opened: the validator cannot have seen the request
                        raise RequestNotSent(f"no order stream to {peer}: {e}") from e
                    if fresh or not isinstance(e, StreamClosed):
                        raise
            raise StreamClosed(f"order stream to {peer} closed twice")
