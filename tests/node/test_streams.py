"""Framed streams between two real hosts on 127.0.0.1: echo, EOF, oversize, bad msgpack."""
from __future__ import annotations

import os
import time
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, AsyncIterator

import pytest
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.errors import LocalProtocolError, RemoteProtocolError, StreamClosed
from fognode.node.events import EventBus
from fognode.node.host import Libp2pOverlay, OverlayConfig, open_overlay
from fognode.node.streams import COALESCE_BYTES, Libp2pFramedStream, send_frames
from tests.polling import wait_until


@asynccontextmanager
async def two_nodes(**kw: Any) -> AsyncIterator[tuple[Libp2pOverlay, Libp2pOverlay]]:
    async with AsyncExitStack() as stack:
        nodes: list[Libp2pOverlay] = []
        for i in range(2):
            reg = CollectorRegistry()
            boot = [nodes[0].listen_addrs()[0]] if nodes else []
            cfg = OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=boot, **kw)
            nodes.append(await stack.enter_async_context(
                open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(reg), reg)))
        with trio.fail_after(10):
            while not nodes[1].peers():
                await trio.sleep(0.01)
        yield nodes[0], nodes[1]


async def test_echo_frames_then_eof() -> None:
    server_saw: list[Any] = []
    eof = trio.Event()

    async def echo(fs: Any) -> None:
        try:
            while True:
                obj = await fs.recv()
                server_saw.append(obj)
                await fs.send({"echo": obj})
        except StreamClosed:
            eof.set()       # the client closed: EOF arrives as StreamClosed, not a hang

    with trio.fail_after(20):
        async with two_nodes() as (a, b):
            a.set_stream_handler("/fognode/test-echo/1.0.0", echo)
            fs = await b.open_stream(a.peer_id, "/fognode/test-echo/1.0.0")
            for i in range(3):
                await fs.send({"i": i, "blob": bytes([i]) * 100})
                assert await fs.recv() == {"echo": {"i": i, "blob": bytes([i]) * 100}}
            big = os.urandom(2 * 1024 * 1024)       # arrives in many muxer reads
            await fs.send(big)
            assert await fs.recv() == {"echo": big}
            await fs.close()
            await eof.wait()
            assert [x["i"] for x in server_saw[:3]] == [0, 1, 2]


async def test_recv_after_peer_closes_raises_stream_closed() -> None:
    async def one_reply(fs: Any) -> None:
        await fs.send({"bye": True})          # then the guard closes the stream

    with trio.fail_after(20):
        async with two_nodes() as (a, b):
            a.set_stream_handler("/fognode/test-bye/1.0.0", one_reply)
            fs = await b.open_stream(a.peer_id, "/fognode/test-bye/1.0.0")
            assert await fs.recv() == {"bye": True}
            with pytest.raises(StreamClosed):
                await fs.recv()
            await fs.close()


async def test_oversize_frames_rejected_both_ways() -> None:
    errors: list[BaseException] = []

    async def small(fs: Any) -> None:
        try:
            await fs.recv_bytes(max_size=1000)
        except RemoteProtocolError as e:
            errors.append(e)
            raise

    with trio.fail_after(20):
        async with two_nodes(max_frame=64 * 1024) as (a, b):
            a.set_stream_handler("/fognode/test-small/1.0.0", small)
            fs = await b.open_stream(a.peer_id, "/fognode/test-small/1.0.0")
            # the sender refuses a frame over its own limit before writing anything
            with pytest.raises(LocalProtocolError, match="over this stream's 65536-byte limit"):
                await fs.send_bytes(b"x" * (64 * 1024 + 1))
            # the receiver refuses a frame over the size it asked for, and resets the stream
            await fs.send_bytes(b"y" * 5000)
            with pytest.raises(StreamClosed):
                await fs.recv_bytes()
            # the handler resets before it raises: its error may land just after our close
            await wait_until(lambda: bool(errors), what="the handler's RemoteProtocolError")
            assert "5000 bytes" in str(errors[0]) and b.peer_id in str(errors[0])
            # the peer's fault is counted and charged to it (node/faults.py, node/peerscore.py)
            assert a.metrics.get_sample_value("fognode_node_remote_protocol_errors_total",
                                              {"protocol": "/fognode/test-small/1.0.0"}) == 1
            assert a.violations.value(b.peer_id, time.monotonic()) > 0.9


async def test_bad_msgpack_is_the_peers_fault() -> None:
    errors: list[BaseException] = []

    async def strict(fs: Any) -> None:
        try:
            await fs.recv()
        except RemoteProtocolError as e:
            errors.append(e)
            raise

    with trio.fail_after(20):
        async with two_nodes() as (a, b):
            a.set_stream_handler("/fognode/test-strict/1.0.0", strict)
            fs = await b.open_stream(a.peer_id, "/fognode/test-strict/1.0.0")
            await fs.send_bytes(b"\xc1\xc1\xc1")       # 0xc1 is never valid msgpack
            with pytest.raises(StreamClosed):
                await fs.recv()
            assert errors and isinstance(errors[0], RemoteProtocolError)


async def test_truncated_frame_is_stream_closed() -> None:
    seen: list[BaseException] = []

    async def reader(fs: Any) -> None:
        try:
            await fs.recv_bytes()
        except StreamClosed as e:
            seen.append(e)

    with trio.fail_after(20):
        async with two_nodes() as (a, b):
            a.set_stream_handler("/fognode/test-trunc/1.0.0", reader)
            fs = await b.open_stream(a.peer_id, "/fognode/test-trunc/1.0.0")
            assert isinstance(fs, Libp2pFramedStream)
            await fs.raw.write(b"\x00\x00\x01\x00" + b"z" * 10)   # announces 256, sends 10
            await fs.close()
            while not seen:
                await trio.sleep(0.01)
            assert "after 10 of 256 bytes" in str(seen[0])


async def test_send_frames_joins_frames_into_few_muxer_writes() -> None:
    """`send_frames` writes what `send_bytes` would, frame by frame, in as few muxer writes as
    fit COALESCE_BYTES; a frame over the stream's limit is refused before anything is written."""
    got: list[bytes] = []

    async def collect(fs: Any) -> None:
        try:
            while True:
                got.append(await fs.recv_bytes())
        except StreamClosed:
            pass

    frames = [b"a" * 100, b"", b"b" * 30_000, b"c" * 40_000, b"d" * 10]
    with trio.fail_after(20):
        async with two_nodes(max_frame=64 * 1024) as (a, b):
            a.set_stream_handler("/fognode/test-frames/1.0.0", collect)
            fs = await b.open_stream(a.peer_id, "/fognode/test-frames/1.0.0")
            assert isinstance(fs, Libp2pFramedStream)
            writes: list[int] = []
            raw_write = fs.raw.write

            async def counted(data: bytes) -> None:      # a spy: the real write still happens
                writes.append(len(data))
                await raw_write(data)
            fs.raw.write = counted  # type: ignore[method-assign]
            with pytest.raises(LocalProtocolError, match="over this stream's 65536-byte limit"):
                await send_frames(fs, [b"x", b"y" * (64 * 1024 + 1)])
            assert writes == []
            await send_frames(fs, frames)
            await send_frames(fs, [])
            await wait_until(lambda: len(got) == len(frames), what="every frame")
            assert got == frames
            # 100 + 0 + 30,000 fit one write of at most COALESCE_BYTES; 40,010 the next
            assert writes == [4 + 100 + 4 + 4 + 30_000, 4 + 40_000 + 4 + 10]
            assert max(writes) <= COALESCE_BYTES
            await fs.close()
