"""Attack: monitor statuses that do not decode, each from a fresh throw-away origin.

A hostile peer seals, for each payload, one gossip envelope with a fresh Ed25519 key (the
code the daemon itself uses, via forged_gossip.py) on the monitor's status topic
and writes them straight onto its pubsub stream to the victim. The envelopes and libp2p
signatures are valid, so only the content check can refuse them; charging the origin reaches
nobody (the key is never used again). A defended victim refuses them before relaying and
charges the peer that relayed them to it, the hostile peer (issue 10 item 5,
protocols/monitor/protocol.py `_check_status`). Used by tests/monitor/test_status_charges.py;
`attack` floods such statuses for tools/bench/attack.py (forged_gossip.flood).
"""
from __future__ import annotations

import os

from nacl.signing import SigningKey

from fognode.tools.bench.attacks import HostilePeer
from fognode.tools.bench.attacks.forged_gossip import flood, send_forged
from fognode.tools.bench.attacks.gap_bomb import STATUS_TOPIC


async def send_statuses(peer: HostilePeer, payloads: list[bytes], *,
                        timeout: float = 30.0) -> list[str]:
    """Write one status per payload, each from a fresh origin (seq 1), in one RPC on the
    pubsub stream to the victim; returns the origins' peer ids. trio.TooSlowError if the
    pubsub stream does not open within `timeout` seconds; RuntimeError if the write fails."""
    return await send_forged(peer, [(SigningKey(os.urandom(32)), STATUS_TOPIC, d) for d in payloads],
                             timeout=timeout)


async def attack(target: str, *, seconds: float) -> dict[str, float]:
    """Statuses that do not decode, from throw-away origins, for `seconds`."""
    return await flood(target, seconds=seconds, topic=STATUS_TOPIC, payload=b"\x81\xa1v\x01")
