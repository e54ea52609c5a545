"""Stream `/fognode/fl/secagg/1.0.0`: one secure-aggregation message per stream, both ways
between a participant and its round's aggregator (envelope frame, byte frames, ack; the
framing is secagg/round.py's). A message the receiver refuses as "unknown round" (it has not
seen the plan yet) is sent again a few times; an undeliverable participant message is
reported to the core (`secagg_delivered`)."""
from __future__ import annotations

import logging

import trio

from fognode.node.errors import RemoteProtocolError, StreamClosed
from fognode.node.overlay import FramedStream
from fognode.protocols.fl.actions import SendSecAgg
from fognode.protocols.fl.messages import Ack
from fognode.protocols.fl.secagg import round as secagg_round
from fognode.protocols.fl.transfer.streams import MAX_CONTROL_FRAME, SECAGG_STREAM, Link

log = logging.getLogger("fognode.fl")

SECAGG_ATTEMPTS = 4          # sends of one SecAgg message while the receiver lacks the plan
SECAGG_RETRY_DELAY = 0.25    # seconds, times the attempt number
MAX_FRAME = 4 << 20          # one byte frame of a message


async def send_secagg(link: Link, a: SendSecAgg) -> None:
    """Carry one SecAgg message. A refusal because the receiver has not seen the round
    plan yet ("unknown round") is retried a few times; a participant whose aggregator
    cannot be reached is told (`secagg_delivered`), and moves to the next aggregator."""
    env, frames = secagg_round.encode(a.session_id, a.round, a.try_no, a.fallback, a.message,
                                      a.meta, link.config.chunk_size)
    reached, reason = False, ""
    for attempt in range(SECAGG_ATTEMPTS):
        reached, reason = False, ""
        try:
            with trio.fail_after(link.config.stream_timeout):
                st = await link.overlay.open_stream(a.to, SECAGG_STREAM)
                try:
                    await st.send(env)
                    for fr in frames:
                        await st.send_bytes(fr)
                    link.metrics.bytes_out.labels("secagg").inc(sum(len(fr) for fr in frames))
                    ack = Ack.decode(await st.recv(max_size=MAX_CONTROL_FRAME), peer=a.to)
                    reached, reason = True, "" if ack.ok else ack.reason
                finally:
                    await st.close()
        except trio.TooSlowError:
            reason = "timed out"
        except Exception as e:   # unreachable peer, reset stream
            reason = f"{type(e).__name__}: {e}"
        if not (reached and reason == "unknown round") or link.closed():
            break
        await trio.sleep(SECAGG_RETRY_DELAY * (attempt + 1))
    if reason:
        log.info("fl: secagg %s for round %d to %s: %s", type(a.message).__name__, a.round, a.to, reason)
    if a.participant and not reached:
        link.apply(link.core.secagg_delivered(a.session_id, a.round, a.try_no, a.fallback,
                                              False, reason, link.now()))


async def serve_secagg(link: Link, st: FramedStream) -> None:
    """Receive one SecAgg message: envelope, byte frames (bounded), then the core's verdict."""
    peer = st.remote_peer
    with trio.fail_after(link.config.stream_timeout):
        try:
            env = secagg_round.Envelope.decode(await st.recv(max_size=MAX_CONTROL_FRAME), peer=peer)
            frames: list[bytes] = []
            total = 0
            for _ in range(env.parts):
                fr = await st.recv_bytes(max_size=MAX_FRAME)
                total += len(fr)
                if total > secagg_round.MAX_BODY:
                    raise RemoteProtocolError("secagg message too large", peer=peer)
                frames.append(fr)
            msg = secagg_round.decode_body(frames, peer=peer)
        except RemoteProtocolError as e:
            link.metrics.bad_messages.labels("secagg").inc()
            link.overlay.penalize(peer, f"malformed secagg message: {e}", protocol=SECAGG_STREAM)
            try:
                await st.send(Ack(False, "malformed").to_wire())
            except StreamClosed:
                pass
            await st.close()
            return
        link.metrics.bytes_in.labels("secagg").inc(total)
        why, actions = link.core.receive_secagg(peer, env.session_id, env.round, env.try_no,
                                                env.fallback, msg, env.meta, link.now())
        link.apply(actions)
        try:
            await st.send(Ack(why is None, why or "").to_wire())
        except StreamClosed:
            pass
        await st.close()
