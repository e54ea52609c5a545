"""The round result's push (a "result" request of a transfer session, transfer/sessions.py):
the aggregator hands the acting coordinator the round's RoundResult and new model directly, so
that the coordinator completes the round without waiting for the result's gossip hop and a
model fetch (the core's side, who pushes and what is applied when: session/push.py).

Wire, after the XferRequest "result": the aggregator sends the RoundResult (as gossiped: the
receipt signed), the coordinator answers Ack: ok=False (with its reason: the model is here or
on its way, the result is not awaited) ends the exchange; ok=True is followed by the model
exactly as a fetch's answer (`send_model` / `receive_model` of transfer/models.py: a
ModelResponse, then the tensors' chunks) for the result's model hash.

`push_result` (the aggregator) goes only over a transfer session, never a stream of its own,
and only to a coordinator advertising RESULT_PUSH (an older node refuses the request kind and
would charge the sender); any failure is logged and left to the gossiped result. 
`serve_result_push` (the coordinator) checks the pushed model exactly as a fetched one; a push
that fails (a model not matching its hash, a refusal after the Ack, a closed stream, PUSH_TIMEOUT)
falls back to the gossip path (the result applied if still awaited, the model fetched); a
malformed frame or a model not matching its hash raises RemoteProtocolError (the stream guard
resets the session and charges the aggregator)."""
from __future__ import annotations

import logging

import trio

from fognode.node.errors import RemoteProtocolError
from fognode.node.overlay import FramedStream
from fognode.protocols.fl.actions import PushResult
from fognode.protocols.fl.messages import RoundResult
from fognode.protocols.fl.messages_stream import Ack
from fognode.protocols.fl.transfer.models import receive_model, send_model
from fognode.protocols.fl.transfer.streams import MAX_CONTROL_FRAME, Link

log = logging.getLogger("fognode.fl")

PUSH_TIMEOUT = 10.0     # seconds a taken push may take before the coordinator fetches instead


async def push_result(link: Link, a: PushResult) -> bool:
    """Push `a.result` and its model to `a.coordinator` on the transfer session; True when the
    coordinator took the model (False: refused, no session, or failed)."""
    sid, h = a.session_id, a.result.receipt.model_hash

    async def exchange(st: FramedStream) -> bool:
        await st.send(a.result.to_wire())
        with trio.fail_after(PUSH_TIMEOUT):
            ack = Ack.decode(await st.recv(max_size=MAX_CONTROL_FRAME), peer=a.coordinator)
        if not ack.ok:
            log.debug("fl: %s declined the result push: %s", a.coordinator, ack.reason)
            return False
        await send_model(link, st, sid, h)
        return True

    try:
        with trio.fail_after(PUSH_TIMEOUT):
            return await link.sessions.run(a.coordinator, "result", "", exchange)
    except Exception as e:      # the gossiped result covers it
        log.debug("fl: result push to %s failed: %s: %s", a.coordinator, type(e).__name__, e)
        return False


async def serve_result_push(link: Link, st: FramedStream) -> None:
    """Take one result push on `st` (a transfer session), leaving `st` open."""
    peer = st.remote_peer
    res = RoundResult.decode(await st.recv(max_size=MAX_CONTROL_FRAME), peer=peer)
    if res.receipt.aggregator != peer:
        raise RemoteProtocolError("fl.RoundResult: pushed by a peer that is not its aggregator",
                                  peer=peer)
    why = link.core.push.refusal(peer, res)
    if why is not None:
        await st.send(Ack(False, why).to_wire())
        return
    refusal = "the push did not complete"
    try:
        await st.send(Ack(True).to_wire())
        with trio.fail_after(PUSH_TIMEOUT):
            refusal, arrays = await receive_model(link, st, res.receipt.session_id,
                                                  res.receipt.model_hash, peer)
    finally:
        if refusal:     # back to the gossip path before anything propagates
            link.apply(link.core.push.failed(peer, res, link.now()))
    if refusal == "the model does not match its hash":
        link.metrics.bad_messages.labels("push").inc()
        raise RemoteProtocolError(f"fl: pushed model of round {res.receipt.round}: {refusal}",
                                  peer=peer)
    if refusal:
        return
    params = arrays.pop("params")
    link.apply(link.core.push.arrived(peer, res, params, arrays, link.now()))
