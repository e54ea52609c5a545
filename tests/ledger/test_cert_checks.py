"""The certificate topic's content check (ledger/certgossip.py `check_batch`, issue 10 item 5):
a batch that fails is refused before relay and charged to the peer that relayed it, not to
its (throw-away) origin. Sans-IO checks first, then two in-process ledger nodes on real
overlays and a hostile py-libp2p host connected to one of them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
from libp2p.peer.id import ID
from nacl.signing import SigningKey

from fognode.ledger.address import encode_address
from fognode.ledger.certgossip import CERT_TOPIC, check_batch
from fognode.ledger.committee import CommitteeCertificate
from fognode.ledger.messages import Certificate
from fognode.ledger.wallet import Keystore
from fognode.node.errors import RemoteProtocolError
from fognode.node.wire import pack
from fognode.tools.bench.attacks import hostile_peer
from fognode.tools.bench.attacks.forged_gossip import send_forged

from .cluster import ledger_cluster, wait_until
from .helpers import CHAIN, certify, key, pk, transfer, validator_keys

ERRORS = "fognode_node_remote_protocol_errors_total"
DELIVERED = "fognode_node_gossip_messages_in_total"


@pytest.fixture(autouse=True)
def dev_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOGNODE_PASSPHRASE", "")


def no_committees(raw: list[Any], peer: str) -> list[CommitteeCertificate]:
    if raw:
        raise RemoteProtocolError("this test's batches carry no committee certificates", peer=peer)
    return []


def batch(*certs: Certificate) -> bytes:
    return pack({"v": 1, "certs": [c.to_wire() for c in certs]})


def forged(cert: Certificate, *, vote: bool = False, sender: bool = False) -> Certificate:
    """`cert` with the first vote's or the sender's signature altered."""
    votes = list(cert.votes)
    if vote:
        v, sig = votes[0]
        votes[0] = (v, bytes([sig[0] ^ 1]) + sig[1:])
    order = cert.order
    if sender:
        order = type(order)(order.order, bytes([order.signature[0] ^ 1]) + order.signature[1:])
    return Certificate(order, tuple(votes))


def good_cert(chain: str = CHAIN) -> Certificate:
    return certify(transfer(key(0), pk(key(1)), 5, 0, chain=chain), validator_keys(3))


def check(data: bytes, *, verify_sender: bool = True) -> None:
    check_batch(data, "peer", no_committees, chain=CHAIN, verify_sender=verify_sender)


def test_a_valid_batch_passes_and_every_content_fault_is_named() -> None:
    check(batch(good_cert(), good_cert()))
    check(batch())
    cases = [
        (pack({"v": 1}), "certs"),
        (pack({"v": 1, "certs": [b"junk"]}), "Certificate"),
        (batch(good_cert(), forged(good_cert(), vote=True)), r"certs\[1\].*vote of .* is invalid"),
        (batch(forged(good_cert(), sender=True)), "sender's signature is invalid"),
        (batch(good_cert("another-chain")), "for chain 'another-chain'"),
    ]
    c = good_cert()
    cases.append((batch(Certificate(c.order, (c.votes[0], c.votes[0]))), "a validator twice"))
    for data, why in cases:
        with pytest.raises(RemoteProtocolError, match=why):
            check(data)
    # the sender's signature is the replica's to check only when it checks it
    check(batch(forged(good_cert(), sender=True)), verify_sender=False)


def sample(node: Any, name: str, **labels: str) -> float:
    return node.ctx.metrics.get_sample_value(name, labels) or 0.0


@pytest.mark.slow
async def test_a_bad_batch_is_charged_to_its_relayer_and_not_relayed(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with ledger_cluster(tmp_path, 2) as c:
            n0, n1 = c.nodes
            assert n0.ctx is not None and n1.ctx is not None and n0.role is not None
            ov0 = n0.ctx.overlay
            await wait_until(lambda: ID.from_base58(n1.ctx.peer_id)
                             in ov0.gossipsub.mesh.get(CERT_TOPIC, set()), timeout=30)
            wallet = Keystore(n0.datadir).unlock(n0.wallet, "")
            validators = [n.identity for n in c.nodes]
            to = n1.wallet
            good = certify(transfer(wallet, to, 5, 0, chain="fog-test"), validators)
            nxt = certify(transfer(wallet, to, 5, 1, chain="fog-test"), validators)
            bad = [pack({"v": 1}),                                # no certificates field
                   batch(forged(nxt, vote=True)),                 # a vote that does not verify
                   batch(forged(nxt, sender=True)),               # nor does the sender's
                   batch(certify(transfer(wallet, to, 5, 1, chain="other"), validators))]
            fresh = [SigningKey(os.urandom(32)) for _ in range(1 + len(bad))]
            async with hostile_peer(n0.addr) as evil:
                # a good batch from a throw-away origin: relayed to n1, applied everywhere
                await send_forged(evil, [(fresh[0], CERT_TOPIC, batch(good))])
                await wait_until(lambda: n1.svc.state.applied == 1
                                 and sample(n1, DELIVERED, topic=CERT_TOPIC) == 1)
                # four bad ones, each from a throw-away origin, in one RPC (the first one or
                # two checked put the hostile peer below the graylist threshold: n0 ignores the
                # rest unread)
                await send_forged(evil, [(k, CERT_TOPIC, b) for k, b in zip(fresh[1:], bad)])
                await wait_until(lambda: sample(n0, ERRORS, protocol=CERT_TOPIC) >= 1)
                # barrier: n0's own next certificate reaches n1 after anything n0 relayed before
                res = await n0.role.wallet_send(encode_address(to), "1")
                assert res["status"] == "final"
                await wait_until(lambda: sample(n1, DELIVERED, topic=CERT_TOPIC) >= 2
                                 and n1.svc.state.applied == 2)
                assert sample(n1, DELIVERED, topic=CERT_TOPIC) == 2     # the bad ones never came
                assert sample(n1, ERRORS, protocol=CERT_TOPIC) == 0
                assert set(ov0.violations) == {evil.peer_id}            # not the origins
                assert n0.svc.state.applied == 2
