"""Model transfers: a node serves the global models it holds (request, response with one
tensor header per array, raw chunks), on a stream `/fognode/fl/model/1.0.0` of its own or as a
"model" request of a transfer session (transfer/sessions.py, transfer/xfer.py), each encoded
once (transfer/encoded.py, held by the Link), and fetches a round's base model from the first
source that serves it, checking its hash (`FetchModel`)."""
from __future__ import annotations

import numpy as np
import trio

from fognode.node.overlay import FramedStream
from fognode.node.wire import digest
from fognode.protocols.fl.actions import FetchModel
from fognode.protocols.fl.messages import ModelRequest, ModelResponse
from fognode.protocols.fl.transfer.streams import MAX_CONTROL_FRAME, MODEL_STREAM, Link
from fognode.protocols.fl.transfer.tensors import TensorDecoder, params_hash

# seconds a source may take to answer a model request (a lookup: it answers at once). A
# stream opened per fetch proved the source alive within overlay.dial_timeout; a reused
# transfer session proves nothing, so without this a source frozen since its session opened
# would hold the fetch for the whole stream_timeout before the next source is tried.
REPLY_TIMEOUT = 10.0


async def serve_model(link: Link, st: FramedStream) -> None:
    """One model request on its own stream, then close it."""
    with trio.fail_after(link.config.stream_timeout):
        await serve_model_request(link, st)
        await st.close()


async def serve_model_request(link: Link, st: FramedStream) -> None:
    """Answer one model request on `st` (per-transfer stream or transfer session): the
    request, then the response and the tensors' chunks, or a refusal. Leaves `st` open."""
    req = ModelRequest.decode(await st.recv(max_size=MAX_CONTROL_FRAME), peer=st.remote_peer)
    await send_model(link, st, req.session_id, req.model_hash)


async def send_model(link: Link, st: FramedStream, sid: bytes, model_hash: bytes) -> None:
    """The response to a request for model `model_hash` of session `sid` (a fetch's, or a
    result push's: transfer/push.py): the tensors' headers and chunks, or a refusal."""
    bundle = link.core.model_for(sid, model_hash)
    if bundle is None:
        await st.send(ModelResponse(False, "this node does not hold that model", ()).to_wire())
        return
    encoded = link.encoded.get(sid, model_hash, bundle, link.config.chunk_size)
    await st.send(ModelResponse(True, "", tuple((n, h) for n, h, _ in encoded)).to_wire())
    for _, h, chunks in encoded:
        for c in chunks:
            await st.send_bytes(c)
        link.metrics.bytes_out.labels("model").inc(h.nbytes)


async def fetch_model(link: Link, a: FetchModel) -> None:
    """Fetch a round's base model from the first of `a.sources` that serves it, in this
    node's `source_order` (on the transfer session to that source, else a stream of its own),
    check its hash, hand it to the core (or the failure, naming the last source's problem)."""
    core, config = link.core, link.config
    last = "no source"
    started = trio.current_time()
    for src in source_order(link.overlay.peer_id, a.model_hash, a.sources):
        async def exchange(st: FramedStream, src: str = src) -> tuple[str, dict[str, np.ndarray]]:
            await st.send(ModelRequest(a.session_id, a.model_hash).to_wire())
            return await receive_model(link, st, a.session_id, a.model_hash, src)
        try:
            with trio.fail_after(config.stream_timeout):
                refusal, arrays = await link.sessions.run(src, "model", MODEL_STREAM, exchange)
            if refusal:
                last = f"{src}: {refusal}"
                continue
            params = arrays.pop("params")
            link.metrics.transfer.labels("model").observe(trio.current_time() - started)
            link.apply(core.model_fetched(a.session_id, a.model_hash, params, arrays, link.now()))
            return
        except trio.TooSlowError:
            last = f"{src}: timed out"
        except Exception as e:
            last = f"{src}: {type(e).__name__}: {e}"
    link.apply(core.model_fetch_failed(a.session_id, a.model_hash, last, link.now()))


async def receive_model(link: Link, st: FramedStream, sid: bytes, model_hash: bytes,
                        src: str) -> tuple[str, dict[str, np.ndarray]]:
    """Read a ModelResponse and its chunks from `src` on `st` (a fetch's answer, or a result
    push's model: transfer/push.py) and check them against `model_hash`: ("", arrays), or
    (the refusal or "the model does not match its hash", {}). Raises RemoteProtocolError for
    malformed frames, StreamClosed, and TooSlowError when the response takes REPLY_TIMEOUT."""
    shape = link.core.expected_shape(sid)
    with trio.fail_after(REPLY_TIMEOUT):     # a frozen source: on to the next one
        raw = await st.recv(max_size=MAX_CONTROL_FRAME)
    resp = ModelResponse.decode(raw, params_shape=shape or (0,),
                                max_bytes=link.config.max_model_bytes, peer=src)
    if not resp.ok:
        return resp.reason, {}
    arrays = await read_tensors(st, resp, src)
    link.metrics.bytes_in.labels("model").inc(sum(h.nbytes for _, h in resp.tensors))
    # float32 params: the decoder checked their bytes against the header's BLAKE2b, which is
    # then the model hash itself (params_hash: BLAKE2b of the float32 bytes)
    p = resp.tensors[0][1]
    if not (p.dtype == "float32" and p.hash == model_hash) \
            and params_hash(arrays["params"]) != model_hash:
        return "the model does not match its hash", {}
    return "", arrays


async def read_tensors(st: FramedStream, resp: ModelResponse, src: str) -> dict[str, np.ndarray]:
    """The tensors an ok `resp` announces, read from `st` and decoded (each checked against
    its header's hash). Raises TensorRejected, StreamClosed."""
    arrays: dict[str, np.ndarray] = {}
    for name, h in resp.tensors:
        dec = TensorDecoder(h, peer=src)
        for _ in range(h.num_chunks):
            dec.feed(await st.recv_bytes(max_size=h.chunk_size))
        arrays[name] = dec.finish()
    return arrays


def source_order(me: str, model_hash: bytes, sources: tuple[str, ...]) -> tuple[str, ...]:
    """`sources` rotated by an offset fixed by this node and the model: every participant of a
    round fetches the same base model at the same moment, and with one first source for all
    (the plan lists the coordinator, then the aggregator that built the model) that one node
    serves them all while the other idles; rotated, each source serves its share, and every
    source is still tried in turn when one fails."""
    if len(sources) < 2:
        return sources
    k = int.from_bytes(digest(me.encode() + model_hash)[:4], "big") % len(sources)
    return sources[k:] + sources[:k]
