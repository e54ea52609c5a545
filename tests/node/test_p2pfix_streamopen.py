"""A stream's open and close skip the notifees known to ignore them and reach every other
one, and take free stream-semaphore slots without a scheduler hop (node/p2pfix_streamopen.py,
node/p2pfix_tcpio.py `QuickSemaphore`), between two real overlays on 127.0.0.1."""
from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from libp2p.abc import INotifee
from libp2p.network.swarm import Swarm

from fognode.node import p2pfix_streamopen
from fognode.node.p2pfix_tcpio import QuickSemaphore
from tests.node.test_p2pfix import ECHO, echo, overlays
from tests.polling import wait_until


class Counting(INotifee):
    """A notifee that does something with streams: it must still hear of each one."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0

    async def opened_stream(self, network: Any, stream: Any) -> None:
        self.opened += 1

    async def closed_stream(self, network: Any, stream: Any) -> None:
        self.closed += 1

    async def connected(self, network: Any, conn: Any) -> None:
        pass

    async def disconnected(self, network: Any, conn: Any) -> None:
        pass

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass


async def test_stream_notifications_skip_the_no_ops_and_reach_the_others() -> None:
    spawned: list[str] = []

    class Spawns(trio.abc.Instrument):
        def task_spawned(self, task: Any) -> None:
            spawned.append(task.name)

    counting = Counting()
    with trio.fail_after(60):
        async with overlays(2) as (a, b):
            assert Swarm._notify is p2pfix_streamopen._notify     # installed by the host
            b.set_stream_handler(ECHO, echo)
            network = b.host.get_network()
            # every notifee the host registered is a known no-op for streams
            assert all(type(n).opened_stream in p2pfix_streamopen.NOOPS["opened_stream"]
                       for n in network.notifees)
            await trio.sleep(0.5)       # identify and the pubsub streams settle
            inst = Spawns()
            trio.lowlevel.add_instrument(inst)
            try:
                fs = await a.open_stream(b.peer_id, ECHO)
                await fs.send_bytes(b"ping")
                assert await fs.recv_bytes() == b"ping"
                await fs.close()
            finally:
                trio.lowlevel.remove_instrument(inst)
            assert not [n for n in spawned if "_notify" in n], spawned

            network.register_notifee(counting)
            try:
                for _ in range(3):
                    fs = await a.open_stream(b.peer_id, ECHO)
                    await fs.send_bytes(b"ping")
                    assert await fs.recv_bytes() == b"ping"
                    await fs.close()
                await wait_until(lambda: counting.opened == 3 and counting.closed == 3,
                                 timeout=20, what="the counting notifee told of 3 streams")
            finally:
                network.remove_notifee(counting)


async def test_quick_semaphore_counts_hands_over_in_order_and_drops_a_cancelled_waiter() -> None:
    sem = QuickSemaphore(2)
    await sem.acquire()
    sem.acquire_nowait()
    assert sem.value == 0
    with pytest.raises(trio.WouldBlock):
        sem.acquire_nowait()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await sem.acquire()
        order.append(i)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, 1)
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as gone:          # a waiter cancelled while parked
                gone.cancel()
                await sem.acquire()
            assert gone.cancelled_caught
            nursery.start_soon(waiter, 2)
            await trio.testing.wait_all_tasks_blocked()
            sem.release()           # handed to the first waiter, not counted
            await trio.testing.wait_all_tasks_blocked()
            assert order == [1] and sem.value == 0
            sem.release()
        assert order == [1, 2] and sem.value == 0
        sem.release()
        assert sem.value == 1


async def test_the_stream_semaphores_of_a_fognode_host_take_a_free_slot_without_a_hop() -> None:
    with trio.fail_after(60):
        async with overlays(2) as (a, b):
            swarm = a.host.get_network()
            assert isinstance(swarm._stream_semaphore, QuickSemaphore)
            (conn,) = swarm.get_connections(b.host.get_id())
            assert isinstance(conn.muxed_conn.stream_backlog_semaphore, QuickSemaphore)
            b.set_stream_handler(ECHO, echo)
            for _ in range(3):      # streams open and close through them as before
                fs = await a.open_stream(b.peer_id, ECHO)
                await fs.send_bytes(b"ping")
                assert await fs.recv_bytes() == b"ping"
                await fs.close()
