"""A ledger role that has stopped serves nothing from its closed store (issue 10, the shutdown
race): its stream handlers and gossip subscription stay registered on the overlay (the host
outlives the role while the daemon shuts down or the supervisor restarts the role), so a sync
request, an order or a certificate batch arriving then must be turned away quietly, never read
a closed LevelDB ("Database is closed" logged as an ERROR with a traceback).

Real libp2p overlays on 127.0.0.1, a real LevelDB store; the role is stopped by cancelling its
own scope while the overlay keeps running, as the supervisor does."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.ledger.certgossip import CERT_TOPIC
from fognode.ledger.genesis import DEV_FUNDING, DEV_STAKE, dev_genesis
from fognode.ledger.order_streams import ORDER_STREAM
from fognode.ledger.protocol import LedgerConfig, LedgerRole
from fognode.ledger.sync import SYNC_STREAM
from fognode.ledger.wallet import Keystore
from fognode.node.errors import RemoteProtocolError, StreamClosed
from fognode.node.events import EventBus
from fognode.node.host import OverlayConfig, open_overlay
from fognode.node.role import NodeContext
from fognode.node.wire import pack

LOCAL = ["/ip4/127.0.0.1/tcp/0"]


async def test_a_stopped_ledger_turns_requests_away_without_touching_its_closed_store(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a_key, b_key = SigningKey(b"a" * 32), SigningKey(b"b" * 32)
    wallet = Keystore(tmp_path).create("", "default")
    ledger = dev_genesis("fog-test", [(bytes(a_key.verify_key), DEV_STAKE)], {wallet: DEV_FUNDING})
    genesis = {"chain_id": "fog-test", "ledger": ledger}
    caplog.set_level(logging.INFO)
    async with open_overlay(OverlayConfig(listen=LOCAL), a_key, EventBus(CollectorRegistry()),
                            CollectorRegistry()) as a, \
            open_overlay(OverlayConfig(listen=LOCAL), b_key, EventBus(CollectorRegistry()),
                         CollectorRegistry()) as b:
        ctx = NodeContext(peer_id=a.peer_id, identity=a_key, overlay=a,
                          events=EventBus(CollectorRegistry()), metrics=CollectorRegistry(),
                          datadir=tmp_path, genesis=genesis)
        role = LedgerRole(ctx, LedgerConfig(uptime_claims=False))
        scope = trio.CancelScope()

        async def run_role(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await role.run(task_status=task_status)

        async with trio.open_nursery() as n:
            await n.start(run_role)
            service = role.service
            assert service is not None
            await b.subscribe(CERT_TOPIC, lambda msg: trio.sleep(0))
            await b.connect(a.listen_addrs()[0])
            s = await b.open_stream(a.peer_id, SYNC_STREAM)     # served while running
            await s.send({"v": 1, "after": 0, "limit": 10})
            assert (await s.recv())["end"] == 0
            await s.close()
            scope.cancel()
        assert role.service is None and service.store.db.closed    # stopped; the overlay runs on

        # a sync request, an order and a certificate batch after the stop
        for proto, request in ((SYNC_STREAM, {"v": 1, "after": 0, "limit": 10}),
                               (ORDER_STREAM, {"v": 1, "t": "order"})):
            s = await b.open_stream(a.peer_id, proto)
            await s.send(request)
            with trio.fail_after(10), pytest.raises((StreamClosed, RemoteProtocolError)):
                await s.recv()
        await b.publish(CERT_TOPIC, pack({"v": 1, "certs": []}))
        await trio.sleep(0.5)
    closed = [r for r in caplog.records if "closed" in r.getMessage().lower() and r.levelno >= logging.ERROR]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not closed and not errors, [r.getMessage() for r in errors]
