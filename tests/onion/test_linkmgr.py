"""Onion links between two real libp2p overlays on 127.0.0.1 (linkmgr.py): a link with a
spare stream (both sides dialled) keeps working when the spare ends; only the end of the
writer stream takes the link down. Before, a spare stream the neighbour reset (its first-frame
deadline: we never wrote on it) failed the whole link and every circuit on it. Spare streams
are poked while the link is busy too, so the neighbour's idle deadline never resets one (issue
14: a bulk transfer cut mid-way when that spare was the neighbour's writer). A burst of cells
longer than a stream frame may be is written in frames the neighbour accepts."""
from __future__ import annotations

import os
from contextlib import AsyncExitStack

import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.events import EventBus
import pytest

from fognode.node.host import Libp2pOverlay, OverlayConfig, open_overlay
from fognode.protocols.onion.cells import FRAME_LEN, Cell, CellCommand, CellFramer
from fognode.protocols.onion.linkmgr import PROTOCOL_ID, SPLIT, LinkManager
from tests.polling import wait_until


class Side:
    def __init__(self, overlay: Libp2pOverlay, **kwargs: float) -> None:
        self.overlay = overlay
        self.cells: list[Cell] = []
        self.downs: list[str] = []
        self.links = LinkManager(overlay, self._bytes, lambda peer, why: self.downs.append(why), **kwargs)

    def _bytes(self, peer: str, data: bytes, framer: CellFramer) -> None:
        self.cells += [c for c in framer.feed(data) if isinstance(c, Cell) and c.command is not CellCommand.PADDING]


def cell(n: int) -> bytes:
    return Cell(n, CellCommand.DESTROY, b"\x00").frame()


async def test_a_spare_stream_ending_leaves_the_link_up() -> None:
    with trio.fail_after(90):
        async with AsyncExitStack() as stack:
            sides: list[Side] = []
            for _ in range(2):
                reg = CollectorRegistry()
                boot = [sides[0].overlay.listen_addrs()[0]] if sides else []
                cfg = OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=boot)
                ov = await stack.enter_async_context(open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(reg), reg))
                side = Side(ov)
                ov.set_stream_handler(PROTOCOL_ID, side.links.serve_inbound)
                sides.append(side)
            a, b = sides
            async with trio.open_nursery() as nursery:
                await nursery.start(a.links.run)
                await nursery.start(b.links.run)
                await wait_until(lambda: b.overlay.peer_id in {p.peer_id for p in a.overlay.peers() if p.connected},
                                 30, "a connected to b")
                a.links.send(b.overlay.peer_id, cell(1))                   # a dials b
                await wait_until(lambda: len(b.cells) == 1, 30, "b got a's cell")
                # b's own dial: its link exists (a's inbound stream is its writer), so add the
                # spare the way a simultaneous dial does: b opens a stream and a attaches it
                spare = await b.overlay.open_stream(a.overlay.peer_id, PROTOCOL_ID)
                await wait_until(lambda: len(a.links.links[b.overlay.peer_id].streams) == 2, 30, "a has two streams")
                await spare.reset()                                       # the spare ends
                await wait_until(lambda: len(a.links.links[b.overlay.peer_id].streams) == 1, 30, "the spare dropped")
                a.links.send(b.overlay.peer_id, cell(2))
                b.links.send(a.overlay.peer_id, cell(3))
                await wait_until(lambda: len(b.cells) == 2 and len(a.cells) == 1, 30, "cells both ways")
                assert not a.downs and not b.downs and a.links.failures == {} and b.links.failures == {}
                # a burst of cells longer than a stream frame may be (a SendCells of a whole
                # circuit window) goes in frames the neighbour accepts, whole and in order
                n = 2 * SPLIT // FRAME_LEN + 7
                writes = a.links.writes
                a.links.send(b.overlay.peer_id, b"".join(cell(i) for i in range(10, 10 + n)))
                await wait_until(lambda: len(b.cells) == 2 + n, 30, "b got the burst")
                assert [c.circ_id for c in b.cells[2:]] == list(range(10, 10 + n))
                assert a.links.writes - writes >= 3 and not a.downs and not b.downs
                # the end of the writer stream still takes the link down (b's writer is a's stream)
                writer = a.links.links[b.overlay.peer_id].writer
                assert writer is not None
                await writer.reset()
                await wait_until(lambda: bool(b.downs), 30, "b's link down")
                assert a.overlay.peer_id not in b.links.neighbours()
                nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_spare_streams_outlive_the_idle_deadline_on_a_busy_link() -> None:
    """Both sides dial at once (two streams on the link) and keep the link busy both ways for
    well over the neighbours' stream idle deadline: no stream is reset, no link fails. Before,
    spares were poked only on an idle link: the neighbour reset each spare after its idle
    deadline, and when both sides had made the other's stream their writer (a crossed
    simultaneous dial) the link failed with every circuit on it."""
    idle, keepalive = 6.0, 1.5
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            sides: list[Side] = []
            for _ in range(2):
                reg = CollectorRegistry()
                boot = [sides[0].overlay.listen_addrs()[0]] if sides else []
                cfg = OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=boot, stream_idle_timeout=idle)
                ov = await stack.enter_async_context(open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(reg), reg))
                side = Side(ov, keepalive=keepalive)
                ov.set_stream_handler(PROTOCOL_ID, side.links.serve_inbound)
                sides.append(side)
            a, b = sides
            async with trio.open_nursery() as nursery:
                await nursery.start(a.links.run)
                await nursery.start(b.links.run)
                await wait_until(lambda: b.overlay.peer_id in {p.peer_id for p in a.overlay.peers() if p.connected},
                                 30, "a connected to b")
                a.links.send(b.overlay.peer_id, cell(1))                   # both dial at once
                b.links.send(a.overlay.peer_id, cell(1))
                await wait_until(lambda: len(a.cells) == 1 and len(b.cells) == 1, 30, "a cell each way")
                la, lb = a.links.links[b.overlay.peer_id], b.links.links[a.overlay.peer_id]
                streams = (len(la.streams), len(lb.streams))
                end = trio.current_time() + 2.5 * idle
                n = 1
                while trio.current_time() < end:                           # busy: never idle for `keepalive`
                    n += 1
                    a.links.send(b.overlay.peer_id, cell(n))
                    b.links.send(a.overlay.peer_id, cell(n))
                    await trio.sleep(0.05)
                await wait_until(lambda: len(a.cells) == n and len(b.cells) == n, 30, "every cell each way")
                assert not a.downs and not b.downs and a.links.failures == {} and b.links.failures == {}
                assert a.links.links[b.overlay.peer_id] is la and b.links.links[a.overlay.peer_id] is lb
                assert (len(la.streams), len(lb.streams)) == streams
                nursery.cancel_scope.cancel()
