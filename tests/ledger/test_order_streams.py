"""`OrderStreams.request` on real libp2p overlays on 127.0.0.1, against test validators that
answer slowly or never (issue 10: the one-request-at-a-time lock was waited on outside the
request timeout; two attempts to bound it gave queued requests to a slow validator up unsent).

Pipelined, every request leaves at once: a slow validator receives all of them and answers at
its pace, each caller is bounded by its own timeout, replies go to the right callers, and late
replies of callers that gave up are dropped without breaking the stream."""
from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.ledger.errors import RequestNotSent
from fognode.ledger.order_streams import DEAD_AFTER, ORDER_STREAM, OrderStreams
from fognode.ledger.store import LedgerStore
from fognode.ledger.writer import GroupWriter, serve_in_order
from fognode.node.errors import StreamClosed
from fognode.node.events import EventBus
from fognode.node.host import OverlayConfig, open_overlay
from fognode.node.overlay import FramedStream, Overlay
from fognode.node.streams import Libp2pFramedStream

from ..polling import wait_until
from .certstream import stream_genesis

LOCAL = ["/ip4/127.0.0.1/tcp/0"]


@asynccontextmanager
async def pair(handler: Callable[[FramedStream], Awaitable[None]] | None, timeout: float
               ) -> AsyncIterator[tuple[Overlay, OrderStreams]]:
    """A validator overlay serving `handler` on the order stream (None: not at all), and a
    client's OrderStreams connected to it."""
    async with open_overlay(OverlayConfig(listen=LOCAL), SigningKey.generate(),
                            EventBus(CollectorRegistry()), CollectorRegistry()) as validator, \
            open_overlay(OverlayConfig(listen=LOCAL), SigningKey.generate(),
                         EventBus(CollectorRegistry()), CollectorRegistry()) as client:
        if handler is not None:
            validator.set_stream_handler(ORDER_STREAM, handler)
        await client.connect(validator.listen_addrs()[0])
        streams = OrderStreams(client, timeout)
        async with trio.open_nursery() as n:
            await n.start(streams.run)
            yield validator, streams
            n.cancel_scope.cancel()


async def test_a_slow_validator_receives_every_request_at_once_and_answers_each_caller() -> None:
    """The validator reads each request as it arrives and answers them in order, one every
    `step` seconds: every request reaches it before its third reply (none waits for another's
    reply to leave: one request at a time, the last would arrive after the 11th reply), each
    caller gets its own reply, and the callers whose timeout came first get TooSlowError (sent,
    not dropped) within their bound."""
    step, timeout, n_req = 0.4, 3.0, 12
    arrived: list[tuple[int, float]] = []
    replied: list[float] = []

    async def slow(stream: FramedStream) -> None:
        inbox_send, inbox = trio.open_memory_channel[int](100)

        async def answer() -> None:
            async for i in inbox:
                await trio.sleep(step)
                await stream.send({"i": i})
                replied.append(trio.current_time())
        async with trio.open_nursery() as n:
            n.start_soon(answer)
            while True:
                try:
                    msg = await stream.recv()
                except StreamClosed:
                    return
                arrived.append((msg["i"], trio.current_time()))
                await inbox_send.send(msg["i"])

    outcomes: dict[int, tuple[str, float]] = {}
    async with pair(slow, timeout) as (validator, streams):
        key = b"v" * 32

        async def ask(i: int) -> None:
            t0 = trio.current_time()
            try:
                reply = await streams.request(key, validator.peer_id, {"i": i})
                outcomes[i] = (f"reply {reply['i']}", trio.current_time() - t0)
            except trio.TooSlowError:
                outcomes[i] = ("timed out", trio.current_time() - t0)

        with trio.fail_after(90):
            async with trio.open_nursery() as n:
                for i in range(n_req):
                    n.start_soon(ask, i)
            # every request reached the validator before it had answered three
            assert sorted(i for i, _ in arrived) == list(range(n_req)), arrived
            assert len(replied) < 3 or max(t for _, t in arrived) < replied[2], (arrived, replied)
            answered = {i for i, (kind, _) in outcomes.items() if kind != "timed out"}
            assert all(outcomes[i][0] == f"reply {i}" for i in answered), outcomes
            assert len(answered) < n_req, outcomes     # 12 x 0.4 s do not fit in 3 s
            assert all(waited < timeout + 2.0 for _, waited in outcomes.values()), outcomes
            # the late replies of the callers that gave up are read and dropped: the stream
            # still works and the next caller gets its own reply
            await wait_until(lambda: streams.in_flight(key) == 0, timeout=60)
            assert (await streams.request(key, validator.peer_id, {"i": 99}))["i"] == 99


async def test_a_silent_validator_bounds_every_caller_and_its_stream_is_replaced() -> None:
    """The validator reads but never answers: each caller ends within its timeout (TooSlowError:
    the request left), and after DEAD_AFTER timeouts without a reply the stream is reset; the
    next request opens a new stream (the validator sees a second stream)."""
    timeout = 2.0
    opened: list[FramedStream] = []
    received: list[int] = []

    async def silent(stream: FramedStream) -> None:
        opened.append(stream)
        while True:
            try:
                received.append((await stream.recv())["i"])
            except StreamClosed:
                return

    async with pair(silent, timeout) as (validator, streams):
        key = b"s" * 32
        waited: list[float] = []

        async def ask(i: int) -> None:
            t0 = trio.current_time()
            with pytest.raises(trio.TooSlowError):
                await streams.request(key, validator.peer_id, {"i": i})
            waited.append(trio.current_time() - t0)

        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                for i in range(6):
                    n.start_soon(ask, i)
            assert len(waited) == 6 and max(waited) < timeout + 2.0, waited
            assert sorted(received) == list(range(6))     # every request was sent
            await wait_until(lambda: streams.in_flight(key) == 0, timeout=DEAD_AFTER * timeout + 30)
            with pytest.raises(trio.TooSlowError):
                await streams.request(key, validator.peer_id, {"i": 6})
            assert len(opened) == 2 and received[-1] == 6


async def test_a_request_that_cannot_reach_the_validator_is_not_sent() -> None:
    """No stream can be opened (the peer does not serve the order stream): RequestNotSent,
    within the timeout."""
    async with pair(None, 1.0) as (validator, streams):
        with trio.fail_after(30):
            with pytest.raises(RequestNotSent):
                await streams.request(b"x" * 32, validator.peer_id, {"i": 0})


async def test_replies_durable_together_leave_in_one_write_and_only_once_durable(tmp_path: Path) -> None:
    """The validator side (writer.py `serve_in_order`) on a real store: six pipelined requests
    decided while the writer is held join one group; no reply leaves before that group is on
    disk, and then all six leave in order in one muxer write (node/streams.py `send_frames`)."""
    store = LedgerStore(tmp_path / "db", stream_genesis())
    writer = GroupWriter(store)
    decided: list[int] = []
    writes: list[int] = []

    async def serve(stream: FramedStream) -> None:
        assert isinstance(stream, Libp2pFramedStream)
        raw_write = stream.raw.write

        async def counted(data: bytes) -> None:      # a spy: the real write still happens
            writes.append(len(data))
            await raw_write(data)
        stream.raw.write = counted  # type: ignore[method-assign]

        def decide(req: Any) -> list[Any]:
            i = int(req["i"])
            writer.submit("test records", lambda wb: wb.put(b"test/%d" % i, b"1"))
            decided.append(i)
            return [{"i": i}]
        await serve_in_order(writer, stream, decide, max_size=1024)

    replies: dict[int, Any] = {}
    with trio.fail_after(60):
        async with pair(serve, 30.0) as (validator, streams), trio.open_nursery() as n:
            n.start_soon(writer.run)
            key = b"v" * 32

            async def ask(i: int) -> None:
                replies[i] = await streams.request(key, validator.peer_id, {"i": i})
            await streams.request(key, validator.peer_id, {"i": 99})    # the stream is open
            syncs0, writes0 = writer.syncs, len(writes)
            async with writer.quiesced():
                for i in range(6):
                    n.start_soon(ask, i)
                await wait_until(lambda: len(decided) == 7, what="six requests decided")
                with trio.move_on_after(0.5):
                    await wait_until(lambda: bool(replies))
                assert replies == {} and len(writes) == writes0     # nothing before the fsync
                assert all(store.db.get(b"test/%d" % i) is None for i in range(6))
            await wait_until(lambda: len(replies) == 6, what="the six replies")
            assert replies == {i: {"i": i} for i in range(6)}
            assert all(store.db.get(b"test/%d" % i) == b"1" for i in range(6))
            assert writer.syncs - syncs0 == 1
            assert len(writes) - writes0 == 1, writes
            n.cancel_scope.cancel()
    store.close()
