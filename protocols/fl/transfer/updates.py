"""Update transfers: header frame, raw chunks, ack; on a stream `/fognode/fl/update/1.0.0` of
their own or as an "update" request of a transfer session (transfer/sessions.py, xfer.py).

The receiving side asks the core for its one admission decision from the header's ids before
reading the tensor (a refused update costs one control frame), decodes the header against the
admitted shape, reads the chunks straight into the row of the round's update matrix the
admission handed out (strategies/matrix.py; released again unless the update is received),
then hands the update over (`receive_update`). The sending
side carries out `SendUpdate` (reading the ack while it sends: a refusal by header stops it)
and reports the outcome (`update_delivered`)."""
from __future__ import annotations

import logging
from typing import Any

import trio

from fognode.node.errors import RemoteProtocolError, StreamClosed
from fognode.node.overlay import FramedStream
from fognode.protocols.fl.actions import SendUpdate
from fognode.protocols.fl.messages import Ack, UpdateHeader
from fognode.protocols.fl.transfer.streams import MAX_CONTROL_FRAME, UPDATE_STREAM, Link
from fognode.protocols.fl.transfer.tensors import TensorDecoder, TensorRejected, encode_tensor

log = logging.getLogger("fognode.fl")

# A write that makes no progress for this long means the receiver stopped reading (a frozen
# aggregator keeps its connection): the update is given up well before stream_timeout.
STALL_TIMEOUT = 20.0


async def send_update(link: Link, a: SendUpdate) -> None:
    """Carry out `a` (on the transfer session to its aggregator, else on a stream of its
    own) and report the outcome to the core (`update_delivered`)."""
    core = link.core
    s = core.sessions.get(a.session_id)
    dtype = s.spec.wire_dtype if s is not None else "float32"
    ok, reason = False, ""
    started = trio.current_time()
    try:
        th, chunks = encode_tensor(a.delta, wire_dtype=dtype, chunk_size=link.config.chunk_size)
        header = a.header(th).to_wire()

        async def exchange(st: FramedStream) -> Ack:
            return await _send_reading_ack(st, header, chunks, a.to)
        with trio.fail_after(link.config.stream_timeout):
            # a refusal ends the session: the receiver did not read the tensor's chunks
            ack = await link.sessions.run(a.to, "update", UPDATE_STREAM, exchange,
                                          reusable=lambda ack: ack.ok)
        if ack.ok:
            link.metrics.bytes_out.labels("update").inc(th.nbytes)
        ok, reason = ack.ok, ack.reason
    except trio.TooSlowError:
        reason = "timed out"
    except Exception as e:   # unreachable peer, reset stream, refused: try the next one
        reason = f"{type(e).__name__}: {e}"
    if ok:
        link.metrics.transfer.labels("update").observe(trio.current_time() - started)
    else:
        log.info("fl: update for round %d to %s not delivered: %s", a.round, a.to, reason)
    link.apply(core.update_delivered(a.session_id, a.round, a.try_no, a.fallback, ok, reason,
                                     link.now(), forward=bool(a.members)))


async def _send_reading_ack(st: FramedStream, header: dict[str, Any], chunks: list[Any],
                            to: str) -> Ack:
    """Send the header and the chunks while reading the receiver's ack: a refusal by header
    comes before the tensor is read (the receiver never reads it), so the sending stops there,
    and the refusal's reason (e.g. "unknown round": the aggregator lacks the plan yet) reaches
    the core instead of the reset of a stream whose receiver stopped reading. A write that
    makes no progress for STALL_TIMEOUT resets the stream and raises StreamClosed."""
    stalled: list[bool] = []

    async def pump() -> None:
        try:
            with trio.fail_after(STALL_TIMEOUT):
                await st.send(header)
            for c in chunks:
                with trio.fail_after(STALL_TIMEOUT):
                    await st.send_bytes(c)
        except StreamClosed:
            pass            # the receiver refused and closed: its ack says why
        except trio.TooSlowError:
            stalled.append(True)        # the ack will not come either: stop reading it
            nursery.cancel_scope.cancel()

    got: list[Ack | Exception] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        try:
            got.append(Ack.decode(await st.recv(max_size=MAX_CONTROL_FRAME), peer=to))
        except (StreamClosed, RemoteProtocolError) as e:    # raised plain, not in a group
            got.append(e)
        nursery.cancel_scope.cancel()
    if stalled:
        # the receiver took nothing for STALL_TIMEOUT: frozen, or gone with its connection
        # still open (a reused session, unlike a fresh stream open, does not prove it alive)
        await st.reset()
        raise StreamClosed(f"the receiver read nothing for {STALL_TIMEOUT:g} s")
    if isinstance(got[0], Exception):
        raise got[0]
    return got[0]


async def serve_update(link: Link, st: FramedStream) -> None:
    """Receive one update on its own stream (see `serve_update_request`), then close it."""
    with trio.fail_after(link.config.stream_timeout):
        await serve_update_request(link, st)
    await st.close()


async def serve_update_request(link: Link, st: FramedStream) -> bool:
    """Receive one update on `st` (per-transfer stream or transfer session): admit by header
    before reading the tensor, then the chunks, then the Ack. True when the whole update was
    read (the stream can carry another request); False after a refusal by header or a
    malformed or rejected tensor, whose unread chunks may still be on the way (close `st`)."""
    peer, core = st.remote_peer, link.core
    raw = await st.recv(max_size=MAX_CONTROL_FRAME)
    ids = update_ids(raw)
    if ids is None:
        link.metrics.bad_messages.labels("update").inc()
        raise RemoteProtocolError("fl.UpdateHeader: not a header map", peer=peer)
    sid, rnd, try_no, fallback = ids
    admission = core.admit_update(peer, sid, rnd, try_no, fallback)
    why = admission.refusal
    try:
        if why is None:
            try:
                hdr = UpdateHeader.decode(raw, expected_shape=admission.expected_shape,
                                          max_bytes=link.config.max_model_bytes, peer=peer)
                # float32 chunks land straight in the update's row of the round's matrix
                dec = TensorDecoder(hdr.tensor, peer=peer, sink=admission.row)
                for _ in range(hdr.tensor.num_chunks):
                    dec.feed(await st.recv_bytes(max_size=hdr.tensor.chunk_size))
                values = dec.finish()
                link.metrics.bytes_in.labels("update").inc(hdr.tensor.nbytes)
            except TensorRejected as e:
                why = e.reason
            except RemoteProtocolError:
                why = "malformed"
            else:
                why, actions = core.receive_update(peer, hdr, values, link.now())
                link.apply(actions)
                await st.send(Ack(why is None, why or "").to_wire())
                return True
        link.apply(core.reject_update(peer, sid, rnd, try_no, why, link.now()))
        try:
            await st.send(Ack(False, why).to_wire())
        except StreamClosed:
            pass
        return False
    finally:
        if admission.row is not None:
            admission.row.release()     # a refused, failed or cut transfer frees its row


def update_ids(raw: Any) -> tuple[bytes, int, int, int] | None:
    """(session, round, try, fallback) of an update header map, or None if they are malformed."""
    if not isinstance(raw, dict):
        return None
    sid, rnd, try_no, fb = raw.get("session"), raw.get("round"), raw.get("try"), raw.get("fallback")
    if not (isinstance(sid, bytes) and len(sid) == 32):
        return None
    for x in (rnd, try_no, fb):
        if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x <= 100_000:
            return None
    return sid, rnd, try_no, fb  # type: ignore[return-value]
