"""The registry topics' content checks (protocols/registry/gossip_check.py, issue 10 item 5): a
message that fails is refused before relay and charged to the peer that relayed it, not to its
(throw-away) origin. Sans-IO checks first, then two registry nodes on real overlays in one
process and two hostile py-libp2p hosts connected to one of them."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio
from libp2p.peer.id import ID
from nacl.signing import SigningKey

from fognode.node.host import peer_id_from_pubkey
from fognode.node.wire import pack, unpack
from fognode.protocols.registry.core import DEVICES_TOPIC, OBSERVATIONS_TOPIC
from fognode.protocols.registry.errors import Rejected
from fognode.protocols.registry.gossip_check import check_device_gossip, check_observation
from fognode.protocols.registry.observation import Observation, sign_observation
from fognode.tools.bench.attacks import hostile_peer
from fognode.tools.bench.attacks.forged_gossip import send_forged

from .helpers import NOW, key, record
from .test_role_overlay import Node, start_node, wait_until

ERRORS = "fognode_node_remote_protocol_errors_total"


def pid(k: SigningKey) -> str:
    return peer_id_from_pubkey(bytes(k.verify_key))


def envelope(kind: str, **fields: object) -> bytes:
    return pack({"v": 1, "t": kind, "at": 1, **fields})


def tampered(data: bytes, **changes: object) -> bytes:
    """Signed bytes with fields changed after signing (the signature no longer holds)."""
    raw = unpack(data)
    raw.update(changes)
    return pack(raw)


def observation(k: SigningKey, subject: str, ts: float = NOW) -> Observation:
    return sign_observation(k, subject=subject, service="fl", ok=True, weight=1.0,
                            evidence=os.urandom(8), ts=int(ts))


def test_devices_topic_check() -> None:
    a, b = key("a"), key("b")
    rec = record(a).encode()
    for env in (envelope("record", record=rec), envelope("hb", seq=3), envelope("bye")):
        check_device_gossip(env, pid(a))
    # expired or stale records are the core's to judge (timing, state), not the check's
    check_device_gossip(envelope("record", record=record(a, issued=0).encode()), pid(a))
    cases = [
        (b"\x92junk", pid(a), "malformed"),
        (envelope("nope"), pid(a), "unknown message type 'nope'"),
        (envelope("hb"), pid(a), "malformed.*seq"),
        (envelope("record", record=rec), pid(b), "wrong_key: record of .* announced on gossip by"),
        (envelope("record", record=tampered(rec, seq=99)), pid(a), "bad_signature"),
        (envelope("record", record=b"\x80"), pid(a), "malformed|unsigned"),
    ]
    for data, origin, why in cases:
        with pytest.raises(Rejected, match=why):
            check_device_gossip(data, origin)


def test_observations_topic_check() -> None:
    a, b = key("a"), key("b")
    o = observation(a, pid(b)).encode()
    assert check_observation(o, pid(a)).observer == pid(a)
    cases = [
        (o, pid(b), "spoofed_origin"),
        (tampered(o, weight=50.0), pid(a), "bad_signature"),
        (b"\x81\xa1v\x01", pid(a), "malformed|unsigned"),
        (b"\x00" * 2000, pid(a), "oversize"),
    ]
    for data, origin, why in cases:
        with pytest.raises(Rejected, match=why):
            check_observation(data, origin)


def errors(n: Node, topic: str) -> float:
    return n.role.ctx.metrics.get_sample_value(ERRORS, {"protocol": topic}) or 0.0


@pytest.mark.slow
async def test_bad_registry_gossip_is_charged_to_its_relayer_and_not_relayed(
        tmp_path: Path) -> None:
    keys = [SigningKey(os.urandom(32)) for _ in range(2)]
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nodes: list[Node] = []
            for i, k in enumerate(keys):
                boot = [nodes[0].overlay.listen_addrs()[0]] if nodes else []
                (tmp_path / f"n{i}").mkdir()
                nodes.append(await start_node(nursery, k, tmp_path / f"n{i}", {}, boot, "eu-west"))
            a, b = nodes
            b_id = ID.from_base58(b.overlay.peer_id)
            await wait_until(lambda: all(b_id in a.overlay.gossipsub.mesh.get(t, set())
                                         for t in (DEVICES_TOPIC, OBSERVATIONS_TOPIC)),
                             30, "B in A's meshes")
            target = a.overlay.listen_addrs()[0]
            good = SigningKey(os.urandom(32))
            fresh = [SigningKey(os.urandom(32)) for _ in range(6)]
            now = time.time()
            good_rec = record(good, issued=now).encode()
            async with hostile_peer(target) as evil, hostile_peer(target) as evil2:
                # good messages from a throw-away origin are relayed to B and taken
                await send_forged(evil, [
                    (good, DEVICES_TOPIC, envelope("record", record=good_rec)),
                    (good, OBSERVATIONS_TOPIC, observation(good, b.overlay.peer_id, now).encode())])
                await wait_until(lambda: b.role.core.view.get(pid(good)) is not None
                                 and b.role.core.book.accepted == 1, 30, "the good messages at B")
                # bad ones, each from a throw-away origin; one RPC per topic and hostile peer
                # (the first one or two checked graylist the sender: A ignores the rest unread)
                await send_forged(evil, [
                    (fresh[0], DEVICES_TOPIC, envelope("nope")),
                    (fresh[1], DEVICES_TOPIC, envelope("record", record=good_rec)),   # not its own
                    (fresh[2], DEVICES_TOPIC, envelope("record", record=tampered(
                        record(fresh[2], issued=now).encode(), seq=7)))])
                await send_forged(evil2, [
                    (fresh[3], OBSERVATIONS_TOPIC, observation(good, pid(fresh[4]), now).encode()),
                    (fresh[4], OBSERVATIONS_TOPIC, tampered(
                        observation(fresh[4], pid(good), now).encode(), ok=False)),
                    (fresh[5], OBSERVATIONS_TOPIC, b"\x81\xa1v\x01")])
                await wait_until(lambda: errors(a, DEVICES_TOPIC) >= 1
                                 and errors(a, OBSERVATIONS_TOPIC) >= 1, 30, "A's charges")
                # barriers: A's own next record and observation reach B after anything A
                # relayed before them
                await a.role.rpc_update(roles=["fl", "market"])
                await a.role.rpc_reputation_report(pid(good), "fl", True)
                await wait_until(lambda: "market" in getattr(b.role.core.view.get(a.overlay.peer_id),
                                                              "profile").roles
                                 and b.role.core.book.accepted == 2, 30, "A's barriers at B")
                assert errors(b, DEVICES_TOPIC) == errors(b, OBSERVATIONS_TOPIC) == 0
                assert set(b.overlay.violations) == set()
                assert set(a.overlay.violations) == {evil.peer_id, evil2.peer_id}
                assert all(b.role.core.view.get(pid(k)) is None for k in fresh)
                # each observation was verified once per node: the handler took what the
                # check kept (checked.py); the bad ones were never kept
                assert (b.role.checked.hits, b.role.checked.misses, len(b.role.checked)) == (2, 0, 0)
                assert (a.role.checked.hits, a.role.checked.misses, len(a.role.checked)) == (1, 0, 0)
            for n in nodes:
                await n.stop()
