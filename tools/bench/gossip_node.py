"""One node process of the gossip benchmark (tools/bench/gossip.py starts N of them).

    python -m fognode.tools.bench.gossip_node ours|plain PEERS_LOW PEERS_HIGH [BOOTSTRAP ...]

"ours" runs fognode's overlay (open_overlay), "plain" py-libp2p GossipSub with only what it
needs to run at all. The node subscribes to the benchmark topic, prints `READY <addr>`, then
serves one command per stdin line: MESH n (wait for n mesh peers), PUB n gap_ms (publish n
256-byte messages in the background), COUNT, STAT, PEERS, DROPS, METRICS (the non-zero
fognode_node_gossip_* and dials counters), GSTATE (the GossipSub router's view of each
connected peer: see `_router_state`) and DUMP (the deliveries:
message id, send and receive CLOCK_MONOTONIC times, the pull counter then), QUIT.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

TOPIC = "fognode/bench/gossip/1"
MSG_SIZE = 256


def _payload(i: int) -> bytes:
    import msgpack
    body = msgpack.packb({"i": i, "t": time.monotonic()})
    return body + b"\x00" * max(0, MSG_SIZE - len(body))


def _decode(data: bytes) -> tuple[int, float]:
    import msgpack
    u = msgpack.Unpacker()
    u.feed(data)
    m = u.unpack()
    return int(m["i"]), float(m["t"])


async def _commands(publish: Callable[[bytes], Awaitable[None]], mesh_size: Callable[[], int],
                    connected: Callable[[], int], rec: list[tuple[int, float, float, float]],
                    queues: Callable[[], list[int]], pulled: Callable[[], int],
                    drops: Callable[[], dict[str, float]] = dict,
                    metrics: Callable[[], dict[str, float]] = dict,
                    router: Callable[[], dict[str, object]] = dict) -> None:
    """Serve the parent's commands (one per stdin line) until QUIT; PUB runs in the
    background so STAT/COUNT keep answering while it publishes."""
    import trio

    async def pub(n: int, gap: float) -> None:
        t0 = time.monotonic()
        for i in range(n):
            await publish(_payload(i))
            if gap:
                await trio.sleep(gap)
        print("PUBDONE", t0, time.monotonic(), flush=True)

    async def mesh(want: int) -> None:
        with trio.move_on_after(60):
            while connected() == 0 or mesh_size() < min(want, connected()):
                await trio.sleep(0.05)
        print("MESHOK", mesh_size(), flush=True)

    async with trio.open_nursery() as nursery:
        while True:
            line = (await trio.to_thread.run_sync(sys.stdin.readline)).split()
            if not line or line[0] == "QUIT":
                nursery.cancel_scope.cancel()
                return
            if line[0] == "MESH":
                nursery.start_soon(mesh, int(line[1]))
            elif line[0] == "PUB":
                nursery.start_soon(pub, int(line[1]), float(line[2]) / 1000.0)
            elif line[0] == "STAT":
                print("STAT", json.dumps(queues()).replace(" ", ""), flush=True)
            elif line[0] == "COUNT":
                print("COUNT", len(rec), flush=True)
            elif line[0] == "PEERS":
                print("PEERS", connected(), mesh_size(), pulled(), queues()[-1], flush=True)
            elif line[0] == "DROPS":
                print("DROPS", json.dumps(drops()).replace(" ", ""), flush=True)
            elif line[0] == "METRICS":
                print("METRICS", json.dumps(metrics()).replace(" ", ""), flush=True)
            elif line[0] == "GSTATE":
                print("GSTATE", json.dumps(router()).replace(" ", ""), flush=True)
            elif line[0] == "DUMP":
                print("DUMP", json.dumps(rec), flush=True)
                rec.clear()


async def _child_ours(bootstrap: list[str], peers_low: int, peers_high: int) -> None:
    import trio
    from nacl.signing import SigningKey
    from prometheus_client import CollectorRegistry

    from fognode.node.events import EventBus
    from fognode.node.host import OverlayConfig, open_overlay
    from fognode.node.overlay import GossipMessage

    rec: list[tuple[int, float, float, float]] = []
    reg = CollectorRegistry()
    cfg = OverlayConfig(listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=bootstrap,
                        peers_low=peers_low, peers_high=peers_high, connmgr_interval=1.0)
    async with open_overlay(cfg, SigningKey(os.urandom(32)), EventBus(reg), reg) as ov:
        pulled_counter = ov.gossip.m_pulled.labels(TOPIC)

        async def handler(m: GossipMessage) -> None:
            i, t = _decode(m.data)
            # the pull counter as this delivery is handled (it moves before a pulled message
            # is handed over): the parent tells pulled deliveries from pushed ones with it
            rec.append((i, t, time.monotonic(), pulled_counter._value.get()))

        prunes = _count_prunes(ov.gossipsub)
        await ov.subscribe(TOPIC, handler)
        print("READY", ov.listen_addrs()[0], flush=True)
        await _commands(lambda d: ov.publish(TOPIC, d),
                        lambda: len(ov.pubsub.peer_topics.get(TOPIC, ())),
                        lambda: len(ov.peers()), rec,
                        lambda: [len(q) for q in ov.pubsub.peer_queues.values()]
                        + [len(ov.gossipsub.mesh.get(TOPIC, ()))],
                        lambda: int(sum(s.value for m in reg.collect() for s in m.samples
                                        if s.name == "fognode_node_gossip_pulled_total")),
                        lambda: _gossip_drops(reg), lambda: _gossip_metrics(reg),
                        lambda: {**_router_state(ov.pubsub, ov.gossipsub, ov.peers()),
                                 "prunes": dict(prunes)})
        del trio


def _count_prunes(router: Any) -> dict[str, int]:
    """Diagnostics: count the PRUNEs this router sends, by the function that sent them, and
    those it receives ("received"). Wraps the instance's methods (bench process only)."""
    counts: dict[str, int] = {}
    emit, heartbeat, handle = router.emit_prune, router.mesh_heartbeat, router.handle_prune

    async def emit_prune(*a: Any, **k: Any) -> Any:
        f = sys._getframe(1)
        name = f"{f.f_code.co_name}:{f.f_lineno}"
        counts[name] = counts.get(name, 0) + 1
        return await emit(*a, **k)

    def mesh_heartbeat() -> Any:
        graft, prune = heartbeat()
        n = sum(len(t) for t in prune.values())
        if n:
            counts["heartbeat"] = counts.get("heartbeat", 0) + n
        return graft, prune

    async def handle_prune(*a: Any, **k: Any) -> Any:
        counts["received"] = counts.get("received", 0) + 1
        return await handle(*a, **k)

    router.emit_prune, router.mesh_heartbeat, router.handle_prune = \
        emit_prune, mesh_heartbeat, handle_prune
    return counts


def _router_state(pubsub: Any, router: Any, peers: list[Any]) -> dict[str, object]:
    """The GossipSub router's view, for `--diag`: per connected peer (short id) the flags
    t (subscribed to the topic as far as we know), m (in our mesh), p (a pubsub stream with a
    GossipSub protocol), the seconds of GRAFT backoff left on the topic and the peer's score;
    and the peers the router knows on the topic that are not connected."""
    from libp2p.peer.id import ID
    topic_peers = {str(p) for p in pubsub.peer_topics.get(TOPIC, ())}
    mesh = {str(p) for p in router.mesh.get(TOPIC, ())}
    backoff = {str(p): t - time.time() for p, t in router.back_off.get(TOPIC, {}).items()}
    out: dict[str, object] = {}
    for info in peers:
        pid = str(info.peer_id)
        proto = router.peer_protocol.get(ID.from_base58(pid))
        try:
            score = round(float(router.scorer.score(ID.from_base58(pid), [TOPIC])), 2)
        except Exception as e:       # diagnostics only: show why there is no score
            score = f"{type(e).__name__}"
        row: list[object] = [("t" if pid in topic_peers else "-") + ("m" if pid in mesh else "-")
                             + ("p" if proto else "-"), round(backoff.get(pid, 0.0), 1), score]
        if isinstance(score, float) and score < 0:     # which part of the score is negative
            sc, key = router.scorer, ID.from_base58(pid)
            row.append({name: round(float(getattr(sc, name).get(key, 0.0)), 1) for name in (
                "behavior_penalty", "graft_flood_penalties", "iwant_spam_penalties",
                "ihave_spam_penalties", "equivocation_penalties")})
        out[pid[-6:]] = row
    out["unconnected"] = sorted(p[-6:] for p in topic_peers | mesh
                                if p not in {str(i.peer_id) for i in peers})
    return out


def _gossip_drops(reg: "CollectorRegistry") -> dict[str, float]:
    """This node's gossip drops, refusals and losses by reason (the non-zero ones)."""
    out: dict[str, float] = {}
    for m in reg.collect():
        for smp in m.samples:
            kind = {"fognode_node_gossip_drops_total": "drop",
                    "fognode_node_gossip_refused_total": "refused",
                    "fognode_node_gossip_lost_total": "lost"}.get(smp.name)
            if kind and smp.value:
                key = f"{kind}:{smp.labels.get('reason', '?')}"
                out[key] = out.get(key, 0.0) + smp.value
    return out


def _gossip_metrics(reg: "CollectorRegistry") -> dict[str, float]:
    """This node's non-zero fognode_node_gossip_* and fognode_node_dials_total counter samples
    (the connection manager's dials by outcome), keyed name{labels} without fognode_node_."""
    out: dict[str, float] = {}
    for m in reg.collect():
        for smp in m.samples:
            if smp.name.startswith(("fognode_node_gossip", "fognode_node_dials")) \
                    and smp.name.endswith("_total") and smp.value:
                lab = ",".join(f"{k}={v}" for k, v in sorted(smp.labels.items()) if k != "topic")
                out[f"{smp.name[13:]}{{{lab}}}"] = smp.value
    return out


async def _child_plain(bootstrap: list[str]) -> None:
    import multiaddr
    import trio
    from libp2p import create_identity_from_seed, new_host
    from libp2p.crypto.x25519 import create_new_key_pair as x25519
    from libp2p.custom_types import TProtocol
    from libp2p.network.config import ConnectionConfig
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
    from libp2p.security.noise.transport import Transport as Noise
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
    from libp2p.stream_muxer.yamux.yamux import Yamux
    from libp2p.tools.anyio_service import background_trio_service

    from fognode.node.host import quiet_libp2p_loggers

    quiet_libp2p_loggers()
    kp = create_identity_from_seed(os.urandom(32))
    host = new_host(key_pair=kp, sec_opt={NOISE_ID: Noise(kp, noise_privkey=x25519().private_key)},
                    muxer_opt={TProtocol(YAMUX_ID): Yamux},
                    connection_config=ConnectionConfig(max_connections_per_peer=1))
    gs = GossipSub(protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11], degree=6, degree_low=4,
                   degree_high=12, heartbeat_initial_delay=0.1, heartbeat_interval=1,
                   spam_protection_enabled=False)
    ps = Pubsub(host, gs)
    rec: list[tuple[int, float, float, float]] = []
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]), \
            background_trio_service(ps), background_trio_service(gs):
        async with trio.open_nursery() as nursery:
            for a in bootstrap:
                with trio.move_on_after(10):
                    try:
                        await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(a)))
                    except Exception as e:
                        print("LOG dial failed", a, e, file=sys.stderr, flush=True)
            sub = await ps.subscribe(TOPIC)

            async def reader() -> None:
                while True:
                    m = await sub.get()
                    i, t = _decode(m.data)
                    rec.append((i, t, time.monotonic(), 0.0))

            nursery.start_soon(reader)
            print("READY", host.get_addrs()[0], flush=True)
            await _commands(lambda d: ps.publish(TOPIC, d),
                            lambda: len(ps.peer_topics.get(TOPIC, ())),
                            lambda: len(host.get_connected_peers()), rec,
                            lambda: [len(q) for q in ps.peer_queues.values()]
                            + [len(gs.mesh.get(TOPIC, ()))], lambda: 0)
            nursery.cancel_scope.cancel()
        await host.close()


def main(argv: list[str] | None = None) -> None:
    """`mode peers_low peers_high [bootstrap...]` (tools/bench/gossip.py spawns it)."""
    args = sys.argv[1:] if argv is None else argv
    mode, peers_low, peers_high, bootstrap = args[0], int(args[1]), int(args[2]), args[3:]
    import trio
    if mode == "ours":
        trio.run(_child_ours, bootstrap, peers_low, peers_high)
    else:
        trio.run(_child_plain, bootstrap)

if __name__ == "__main__":
    main()
