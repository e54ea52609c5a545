"""node/p2pfix_backoff.py and node/p2pfix_floodpublish.py against real hosts on 127.0.0.1: a node
that prunes mesh peers keeps a backoff for them and does not GRAFT them again inside it, so they
never charge it with a GRAFT flood; with a mesh of 0 its own messages still reach its
backed-off peers and its gossip names them; and a pin of the py-libp2p functions the fixes rely
on."""
from __future__ import annotations

import os

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.node.events import EventBus
from fognode.node.host import Libp2pOverlay, OverlayConfig, open_overlay
from fognode.node.overlay import GossipMessage
from tests import pins
from tests.polling import wait_until

TOPIC = "fognode/test/backoff/1"
HEARTBEAT = 0.2

PINNED = {
    GossipSub.mesh_heartbeat: "57f36f0ee54dd461",       # prunes over D_high, no backoff
    GossipSub.emit_prune: "9f01c4c85e82adff",
    GossipSub.handle_graft: "12206b0c497aaccd",         # the flood check and its PRUNE
    GossipSub.handle_prune: "c61235b1862b7fab",         # records the pruner for that check
    GossipSub._check_graft_flood_protection: "812b382b84338a41",
    GossipSub._improve_mesh_diversity: "30874e3d82e19bd8",
    GossipSub._add_back_off: "72076b56bb3004a0",
    GossipSub._check_back_off: "aab720b22c2eb651",
    GossipSub._emit_control_msgs: "31b209cca3155276",   # sends the heartbeat's PRUNEs
    GossipSub.gossip_heartbeat: "ee20b04ca5bda2c1",
    GossipSub._handle_topic_heartbeat: "855f5c363146b724",       # IHAVE targets with the backoff filter
    GossipSub._get_peers_to_send: "1d2d334126ca87ec",   # mesh only for a joined topic
    GossipSub._get_adaptive_gossip_peers_count: "9649a5fc46dd311c",
}


def test_pinned_gossipsub_prune_and_graft_paths() -> None:
    pins.assert_unchanged(PINNED, "node/p2pfix_backoff.py and p2pfix_floodpublish.py")


async def test_a_pruning_node_keeps_a_backoff_is_not_charged_and_still_reaches_its_peers() -> None:
    """A (D=1, D_low=1, D_high=2) is the only peer of B, C and D; all three GRAFT it, its
    heartbeat prunes two. When the one left in its mesh goes away, A's mesh is empty: py-libp2p
    0.8.1 GRAFTs one of the two it pruned at the next heartbeat, and that peer charges A a GRAFT
    flood (graft_flood_penalties[A] = 10, three of them make A negative). With the fix A keeps a
    backoff for both and grafts neither."""
    async def node(cfg: OverlayConfig, *, task_status: trio.TaskStatus[
            tuple[Libp2pOverlay, trio.CancelScope]] = trio.TASK_STATUS_IGNORED) -> None:
        reg = CollectorRegistry()       # each node in a task of its own: closed on its own
        with trio.CancelScope() as scope:
            async with open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(reg), reg) as ov:
                task_status.started((ov, scope))
                await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nodes: list[Libp2pOverlay] = []
        scopes: list[trio.CancelScope] = []
        for _ in range(4):
            cfg = OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"],
                                bootstrap=[nodes[0].listen_addrs()[0]] if nodes else [],
                                peers_low=1, gossip_degree=1, gossip_heartbeat=HEARTBEAT)
            ov, scope = await nursery.start(node, cfg)
            nodes.append(ov)
            scopes.append(scope)
        a, others = nodes[0], nodes[1:]
        await wait_until(lambda: len(a.peers()) == 3, what="B, C and D connected to A")
        received: dict[str, list[bytes]] = {n.peer_id: [] for n in nodes}
        for n in nodes:
            async def on_msg(m: GossipMessage, got: list[bytes] = received[n.peer_id]) -> None:
                got.append(m.data)

            await n.subscribe(TOPIC, on_msg)
        a_id = ID.from_base58(a.peer_id)
        # every one of them grafted A, and A's heartbeat pruned its mesh back to D
        await wait_until(lambda: sum(a_id in n.gossipsub.back_off.get(TOPIC, {})
                                     for n in others) == 2, what="A pruned two of its peers")
        pruned = [n for n in others if a_id in n.gossipsub.back_off.get(TOPIC, {})]
        kept = [n for n in others if n not in pruned]
        assert len(kept) == 1 and a.gossipsub.mesh[TOPIC] == {ID.from_base58(kept[0].peer_id)}
        for n in pruned:      # the pruner's own backoff, both ends as the spec says
            assert a.gossipsub._check_back_off(ID.from_base58(n.peer_id), TOPIC)
        assert a.gossipsub.backoffs_kept >= 2
        scopes[nodes.index(kept[0])].cancel()
        await wait_until(lambda: not a.gossipsub.mesh[TOPIC], what="A's mesh emptied")
        await trio.sleep(8 * HEARTBEAT)        # several heartbeats with a mesh under D_low
        assert not a.gossipsub.mesh[TOPIC]
        for n in pruned:
            assert n.gossipsub.scorer.graft_flood_penalties.get(a_id, 0.0) == 0.0
            assert n.gossipsub.scorer.score(a_id, [TOPIC]) >= 0
        # A's mesh is empty and its two peers are backed off: its own message still reaches
        # them (flood publishing, node/p2pfix_floodpublish.py) ...
        await a.publish(TOPIC, b"from A")
        await wait_until(lambda: all(b"from A" in received[n.peer_id] for n in pruned),
                         what="A's message at both backed-off peers")
        assert a.gossipsub.flood_published >= 2
        # ... and its gossip (IHAVE) names them, as the spec's gossip does
        backed_off = {ID.from_base58(n.peer_id) for n in pruned}
        for k in range(5):      # a message in A's gossip window (3 heartbeats) when it looks
            await a.publish(TOPIC, b"again %d" % k)
            await wait_until(lambda: a.gossipsub.mcache.window(TOPIC), what="in the window")
            targets = a.gossipsub.gossip_heartbeat()
            if a.gossipsub.mcache.window(TOPIC):
                break
        assert backed_off <= {p for p, topics in targets.items() if TOPIC in topics}
        assert a.gossipsub.gossip_to_backed_off >= 2
        nursery.cancel_scope.cancel()
