"""Transfer sessions (`/fognode/fl/xfer/1.0.0`), the receiving side: one stream from a peer
that carries its model requests and update pushes one after the other (the sending side and the
wire are described in transfer/sessions.py).

`serve_xfer` reads one `XferRequest` frame, serves its exchange exactly as the per-transfer
stream of that kind does (`serve_model_request`, `serve_update_request`: the same validating
decoders, byte limits, admission by header and refusal reasons), or an aggregator's result push
(`serve_result_push`, transfer/push.py), and waits for the next one.
Each request is bounded by `protocols.fl.stream_timeout` (a result push also by its own
PUSH_TIMEOUT); one that runs over ends the session as a closed stream (reset, logged at DEBUG:
a slow peer or link is not a protocol fault); the wait between requests is bounded
by the node's inbound deadlines (overlay.stream_first_frame_timeout for the first frame,
overlay.stream_idle_timeout between frames; node/rcmgr.py), and the session holds one inbound
stream slot of the resource manager for its lifetime, like any inbound stream. A refused or
malformed update ends the session (its unread chunks may still be on the way); the peer's end
of the session (EOF) ends it quietly. Raises RemoteProtocolError for a frame that is not an
XferRequest (the stream guard resets the stream and charges the peer)."""
from __future__ import annotations

import logging

import trio

from fognode.node.errors import StreamClosed
from fognode.node.overlay import FramedStream
from fognode.protocols.fl.messages import XferRequest
from fognode.protocols.fl.transfer.models import serve_model_request
from fognode.protocols.fl.transfer.push import serve_result_push
from fognode.protocols.fl.transfer.streams import MAX_CONTROL_FRAME, Link
from fognode.protocols.fl.transfer.updates import serve_update_request

log = logging.getLogger("fognode.fl")


async def serve_xfer(link: Link, st: FramedStream) -> None:
    """Serve one peer's transfer session until it ends it, a request fails or the role stops."""
    peer = st.remote_peer
    served = 0
    while not link.closed():
        try:
            raw = await st.recv(max_size=MAX_CONTROL_FRAME)
        except StreamClosed:
            return          # the peer closed its idle session (or a deadline reset it)
        req = XferRequest.decode(raw, peer=peer)
        if link.closed():
            return          # the role restarted since: the peer reopens on the new one
        if req.kind == "hello":
            continue
        try:
            with trio.fail_after(link.config.stream_timeout):
                if req.kind == "model":
                    await serve_model_request(link, st)
                elif req.kind == "result":
                    await serve_result_push(link, st)
                elif not await serve_update_request(link, st):
                    await st.close()
                    return
        except trio.TooSlowError:   # a stalled exchange (a slow peer or link), not our bug
            raise StreamClosed(f"fl: {req.kind} exchange with {peer} did not complete in time; "
                               "the session is reset") from None
        served += 1
    log.debug("fl: transfer session of %s ends with the role after %d requests", peer, served)
