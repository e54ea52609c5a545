"""`OrderStreams.request` against a validator that never answers (real libp2p overlays on
127.0.0.1): one request at a time per validator, and a request queued behind a stuck one gives
up after `request_timeout` with RequestNotSent (it never left this node), instead of waiting for
every request ahead of it (issue 10: the lock was waited on outside the request timeout)."""
from __future__ import annotations

import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.ledger.errors import RequestNotSent
from fognode.ledger.order_streams import ORDER_STREAM, OrderStreams
from fognode.node.events import EventBus
from fognode.node.host import OverlayConfig, open_overlay
from fognode.node.overlay import FramedStream

LOCAL = ["/ip4/127.0.0.1/tcp/0"]
TIMEOUT = 0.5


async def test_requests_queued_behind_a_silent_validator_give_up_unsent() -> None:
    received: list[object] = []

    async def silent(stream: FramedStream) -> None:      # reads requests, never answers
        while True:
            received.append(await stream.recv())

    async with open_overlay(OverlayConfig(listen=LOCAL), SigningKey(b"v" * 32),
                            EventBus(CollectorRegistry()), CollectorRegistry()) as validator, \
            open_overlay(OverlayConfig(listen=LOCAL), SigningKey(b"c" * 32),
                         EventBus(CollectorRegistry()), CollectorRegistry()) as client:
        validator.set_stream_handler(ORDER_STREAM, silent)
        await client.connect(validator.listen_addrs()[0])
        streams = OrderStreams(client, TIMEOUT)
        outcomes: list[tuple[str, float]] = []

        async def ask(i: int) -> None:
            t0 = trio.current_time()
            try:
                await streams.request(b"v", validator.peer_id, {"i": i})
                outcomes.append(("answered", 0.0))
            except RequestNotSent:
                outcomes.append(("not sent", trio.current_time() - t0))
            except trio.TooSlowError:
                outcomes.append(("timed out", trio.current_time() - t0))

        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                for i in range(4):
                    n.start_soon(ask, i)
    kinds = sorted(k for k, _ in outcomes)
    # the first (and maybe the second) was sent and timed out; at least two others were still
    # queued after request_timeout and gave up without sending
    assert kinds.count("not sent") >= 2 and kinds.count("answered") == 0, outcomes
    assert len(received) <= kinds.count("timed out"), (received, outcomes)   # unsent = unseen
    for kind, waited in outcomes:
        if kind == "not sent":
            assert waited < 2 * TIMEOUT + 1.0, outcomes
