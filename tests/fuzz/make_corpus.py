"""Write the seed corpus: real encodings produced by fognode's own encoders, one directory per
fuzz target (tests/fuzz/corpus/<target>/), plus a few edge cases per target.

    python -m tests.fuzz.make_corpus            # rewrite tests/fuzz/corpus (all targets)
    python -m tests.fuzz.make_corpus fl_gossip  # only these targets

File names are the BLAKE2b-128 of the content; each target's directory is rewritten whole.
Everything is deterministic (fixed keys, fixed times) except fl_secagg's seeds: a secagg
participant draws its X25519 keys itself, so regenerating changes those files (harmlessly).
Inputs found by a fuzzing run are not kept here: a crash's input goes to tests/fuzz/crashes/.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
from nacl.signing import SigningKey

from fognode.ledger.committee import CommitteeBody, CommitteeCertificate, CommitteeVote
from fognode.ledger.handover import HandoverPage
from fognode.ledger.messages import (BondOrder, Certificate, ForkProof, MintOrder, Rejection,
                                     SignedOrder, TransferOrder, UnbondOrder, Vote)
from fognode.ledger.errors import Reason
from fognode.ledger.escrow_orders import (BreachReport, DebitNote, EscrowCollateralOrder, EscrowOpenOrder,
                                          EscrowPayoutOrder, EscrowRefundOrder, EscrowSlashOrder, escrow_id)
from fognode.ledger.receipts import Receipt, uptime_claim
from fognode.ledger.rewardpool import RewardPool
from fognode.ledger.rewardpool_orders import PoolCloseOrder, PoolOpenOrder, PoolPayOrder, digest_bytes
from fognode.node.gossip import seal
from fognode.node.gossip_envelope import pack_batch
from fognode.node.wire import pack
from fognode.protocols.fl.messages import (Ack, CoordinatorSilent, DeviceFacts, ModelRequest, ModelResponse, MemberMeta,
                                           OptIn, RoundFailed, RoundResult, SessionEnded, UpdateHeader,
                                           encode_gossip)
from fognode.protocols.fl.secagg.core import SecAggAggregator, SecAggConfig, SecAggParticipant, Send
from fognode.protocols.fl.session.rounds import UpdateMeta
from fognode.protocols.fl.secagg.round import encode as secagg_encode
from fognode.protocols.fl.transfer.tensors import encode_tensor
from fognode.protocols.market.agreement import (SLA, Agreement, Terms, sign_accept, sign_proposal,
                                                sign_reject)
from fognode.protocols.market.messages import sign_bid, sign_demand, sign_offer, sign_withdraw
from fognode.protocols.market.sla_messages import Probe, sign_pong
from fognode.protocols.monitor.protocol import NodeStatus
from fognode.protocols.registry.actions import Publish
from fognode.protocols.registry.core import RegistryCore
from fognode.protocols.registry.config import RegistryConfig
from fognode.protocols.registry.observation import sign_observation
from fognode.protocols.registry.record import HarvestInfo, make_profile, sign_record
from tests.fl.test_evidence import announcement, issued, plan_for, round_receipt
from tests.ledger.rewardpool_helpers import funded_announcement, round_receipts
from tests.fuzz.targets import FUZZ_KEY, FUZZ_PEER, NOW, PARAMS_SHAPE, TARGETS
from tests.fuzz.targets import LOCAL_KEY as TARGET_LOCAL_KEY
from tests.registry.helpers import caps, record

CORPUS = Path(__file__).resolve().parent / "corpus"
CHAIN = "fognode-fuzz"


def key(i: int) -> SigningKey:
    return SigningKey(bytes([i]) * 32)


def pub(k: SigningKey) -> bytes:
    return bytes(k.verify_key)


EDGE = [b"", b"\xc0", b"\x80", b"\x90", b"\xde\x00\x01", b"\xdd\xff\xff\xff\xff", b"\x91" * 64,
        b"\xc1", b"\xd4\x01\x00", b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00"]


def _orders() -> list[SignedOrder]:
    a, b = key(1), key(2)
    t = TransferOrder(chain=CHAIN, epoch=0, sender=pub(a), sequence=0, fee=1000, recipient=pub(b),
                      amount=5_000_000, memo="rent")
    r = Receipt.issue(key(9), "uptime", pub(a), 4, {"seconds": 3600, "claim": uptime_claim(4)})
    m = MintOrder(chain=CHAIN, epoch=5, sender=pub(a), sequence=1, fee=1000, recipient=pub(a),
                  amount=1000, receipt=r)
    return [SignedOrder.sign(a, t), SignedOrder.sign(a, m),
            SignedOrder.sign(a, BondOrder(chain=CHAIN, epoch=1, sender=pub(a), sequence=2, fee=0, amount=7)),
            SignedOrder.sign(a, UnbondOrder(chain=CHAIN, epoch=1, sender=pub(a), sequence=3, fee=0, amount=7)),
            *_escrow_orders(), *_pool_orders()]


def _escrow_orders() -> list[SignedOrder]:
    """Every escrow order kind, the fuzz key as customer and witness (FUZZ_ESCROW in targets.py)."""
    c, p = FUZZ_KEY, key(2)
    e = escrow_id(CHAIN, pub(c), b"\x01" * 32)
    common = dict(chain=CHAIN, epoch=0, fee=1000)
    report = BreachReport(e, 3, 100, 20, ())
    report = BreachReport(e, 3, 100, 20, (report.witness_signature(FUZZ_KEY),))
    return [SignedOrder.sign(c, EscrowOpenOrder(**common, sender=pub(c), sequence=4, agreement=b"\x01" * 32,
                                                payee=pub(p), amount=10_000, deadline=int(NOW) + 60, grace=600,
                                                uptime_ppm=990_000, penalty=300, witnesses=(pub(c),), threshold=1)),
            SignedOrder.sign(p, EscrowCollateralOrder(**common, sender=pub(p), sequence=0, escrow=e, escrow_sequence=1,
                                                      amount=500)),
            SignedOrder.sign(p, EscrowPayoutOrder(**common, sender=pub(p), sequence=1, escrow=e, escrow_sequence=1,
                                                  note=DebitNote.sign(c, e, 4000))),
            SignedOrder.sign(c, EscrowRefundOrder(**common, sender=pub(c), sequence=5, escrow=e, escrow_sequence=1)),
            SignedOrder.sign(c, EscrowSlashOrder(**common, sender=pub(c), sequence=5, escrow=e, escrow_sequence=1,
                                                 report=report))]


def ledger_escrow() -> list[bytes]:
    so = _escrow_orders()
    payout, slash = so[2].order, so[4].order
    assert isinstance(payout, EscrowPayoutOrder) and isinstance(slash, EscrowSlashOrder)
    return ([b"\x00" + pack(payout.note.to_wire()), b"\x01" + pack(slash.report.to_wire())]
            + [b"\x02" + pack(s.to_wire()) for s in so])


def _pool_orders() -> list[SignedOrder]:
    """Every pool order kind, the fuzz key as funder (FUZZ_POOL in targets.py): a payout of a
    real "fl_update" receipt, and a close stating FUZZ_POOL's payouts (so it applies)."""
    f, p = FUZZ_KEY, key(2)
    common = dict(chain=CHAIN, epoch=0, fee=1000)
    pool = b"\x03" * 32
    r = round_receipts(funded_announcement(pub(f), 3_000_000), 1)[0]
    return [SignedOrder.sign(f, PoolOpenOrder(**common, sender=pub(f), sequence=0, session=b"\x02" * 32,
                                              receipt_kind="fl_update", amount=10_000, deadline=int(NOW) + 60,
                                              grace=600)),
            SignedOrder.sign(p, PoolPayOrder(**common, sender=pub(p), sequence=0, pool=pool, amount=700, receipt=r)),
            SignedOrder.sign(f, PoolCloseOrder(**common, sender=pub(f), sequence=1, pool=pool, payouts=2, paid=1000,
                                               payouts_digest=digest_bytes(12345)))]


def ledger_pool() -> list[bytes]:
    rec = RewardPool(pub(FUZZ_KEY), b"\x02" * 32, "fl_update", 10_000, int(NOW), 600, paid=1000, payouts=2, acc=7)
    return [b"\x00" + pack(so.to_wire()) for so in _pool_orders()] + [b"\x01" + rec.encode()]


def _certificates() -> list[Certificate]:
    signers = [key(100), key(101), key(102)]
    return [Certificate.from_votes(so, [Vote.sign(k, so.tx_id) for k in signers]) for so in _orders()]


def ledger_order() -> list[bytes]:
    return [pack(so.to_wire()) for so in _orders()]


def ledger_certificate() -> list[bytes]:
    return [pack(c.to_wire()) for c in _certificates()]


def ledger_replies() -> list[bytes]:
    so = _orders()
    t = so[0].order
    assert isinstance(t, TransferOrder)
    other = SignedOrder.sign(key(1), TransferOrder(chain=CHAIN, epoch=0, sender=t.sender, sequence=0, fee=1000,
                                                   recipient=pub(key(3)), amount=1, memo=""))
    members = tuple(sorted((pub(key(100 + i)), 1000) for i in range(3)))
    body = CommitteeBody(CHAIN, 2, members, b"\x11" * 32)
    votes = [CommitteeVote.sign(key(100 + i), body) for i in range(3)]
    cc = CommitteeCertificate(body, tuple(sorted((v.validator, v.signature) for v in votes)))
    page = HandoverPage(3, 17, tuple(sorted([so[0], so[2]], key=lambda s: s.key)), True)
    parts = [
        (0, Vote.sign(key(100), so[0].tx_id).to_wire()),
        (1, Rejection(so[0].tx_id, Reason.WRONG_SEQUENCE, "expected sequence 4").to_wire()),
        (2, ForkProof(so[0], other).to_wire()),
        (3, body.to_wire()), (4, votes[0].to_wire()), (5, cc.to_wire()),
        (6, page.to_wire()), (6, HandoverPage(3, 0, (), False).to_wire()),
    ]
    return [bytes([i]) + pack(m) for i, m in parts]


def ledger_receipt() -> list[bytes]:
    r = Receipt.issue(key(9), "uptime", pub(key(1)), 4, {"seconds": 3600, "claim": uptime_claim(4)})
    scoped = Receipt.issue(key(9), "fl_update", pub(key(1)), 5,
                           {"scope": b"s" * 32, "commit": b"c" * 32, "claim": b"k" * 32, "ppm": 10})
    _, fl = issued(announcement(), plan_for(announcement()))
    return [pack(x.to_wire()) for x in (r, scoped, *fl[:2])]


def fl_gossip() -> list[bytes]:
    ann = announcement()
    plan = plan_for(ann)
    rr = round_receipt(ann, plan, plan.header.order[0] if plan.header else "")
    msgs = [ann, plan, OptIn(ann.session_id, DeviceFacts(region="eu", cores=4, memory_mb=1024, charging=False)),
            RoundResult(rr, 0.5, 0.75, 0.4, ("p1",), {"p2": "stale"}),
            RoundFailed(ann.session_id, 1, 0, "too few updates"),
            SessionEnded(ann.session_id, "completed", 3, b"f" * 32),
            CoordinatorSilent(ann.session_id, 0, 2)]
    return [encode_gossip(m) for m in msgs]


def fl_stream() -> list[bytes]:
    ann = announcement()
    plan = plan_for(ann)
    h, _ = encode_tensor(np.arange(32, dtype=np.float32).reshape(PARAMS_SHAPE), chunk_size=1024)
    up = UpdateHeader(ann.session_id, 1, 0, 0, 20, 0.9, 0.5, 0.7, h)
    regional = UpdateHeader(ann.session_id, 1, 0, 1, 40, 0.9, 0.5, 0.7, h,
                            (MemberMeta("p1", 20, 1.0, 0.5, 0.6), MemberMeta("p2", 20, 0.8, 0.5, 0.6)), 2.0)
    h16, _ = encode_tensor(np.ones(3, dtype=np.float32), wire_dtype="float16", chunk_size=1024)
    assert plan.header is not None
    rr = round_receipt(ann, plan, plan.header.order[0])
    parts = [(0, up.to_wire()), (0, regional.to_wire()), (1, Ack(True).to_wire()),
             (1, Ack(False, "round closed").to_wire()), (2, ModelRequest(ann.session_id, b"m" * 32).to_wire()),
             (3, ModelResponse(True, "", (("params", h), ("adam_m", h16))).to_wire()),
             (3, ModelResponse(False, "unknown model", ()).to_wire()),
             (4, plan.header.to_wire()), (5, rr.to_wire())]
    return [bytes([i]) + pack(m) for i, m in parts]


def fl_tensor() -> list[bytes]:
    out = []
    for arr, dt, chunk in [(np.arange(32, dtype=np.float32).reshape(PARAMS_SHAPE), "float32", 1024),
                           (np.linspace(-1, 1, 700, dtype=np.float32), "float32", 1024),
                           (np.ones((3, 2), dtype=np.float32), "float16", 1024),
                           (np.zeros(0, dtype=np.float32), "float32", 1024)]:
        h, chunks = encode_tensor(arr, wire_dtype=dt, chunk_size=chunk)
        out.append(pack([h.to_wire(), [bytes(c) for c in chunks], False]))
        out.append(pack([h.to_wire(), [bytes(c) for c in chunks], True]))
    h, chunks = encode_tensor(np.ones(4, dtype=np.float32), chunk_size=1024)
    nan = np.array([1.0, np.nan, 0.0, 2.0], dtype="<f4").tobytes()
    out.append(pack([h.to_wire(), [nan], True]))
    return out


def fl_secagg() -> list[bytes]:
    peers = ("p-a", "p-b", "p-c")
    rid = bytes(range(32))
    cfg = SecAggConfig(rid, peers, 8, threshold=2)
    parts = {p: SecAggParticipant(cfg, p) for p in peers}
    agg = SecAggAggregator(cfg, now=0.0, phase_timeout=5.0)
    msgs: list[Any] = []
    sends: list[Any] = []
    for p, part in parts.items():
        adv = part.advertise()
        msgs.append(adv)
        sends += agg.receive(p, adv, 0.0)
    for phase in range(3):
        nxt: list[Any] = []
        for a in sends:
            if not isinstance(a, Send):
                continue
            msgs.append(a.message)
            reply = parts[a.peer].receive(a.message)
            if reply is not None:
                msgs.append(reply)
                nxt += agg.receive(a.peer, reply, 1.0 + phase)
        sends = nxt
    seen: set[str] = set()
    out = []
    for m in msgs:
        t = type(m).__name__
        out.append(pack(m.to_wire()))
        if t not in seen:   # the envelope + frames form, once per message type
            seen.add(t)
            env, frames = secagg_encode(b"s" * 32, 1, 0, 0, m, UpdateMeta(10, 0.5, 0.5, 0.4)
                                        if t == "AdvertiseKeys" else None, frame_size=64)
            out.append(pack([env, frames]))
    return out


def _fuzz_core() -> RegistryCore:
    return RegistryCore(FUZZ_KEY, RegistryConfig(), make_profile("eu-west", "server", ["fl"]),
                        pretrusted=[], now=NOW)


def registry_record() -> list[bytes]:
    return [record(FUZZ_KEY, 3, issued=NOW, ttl=600).encode(),
            record(key(7), 1, issued=NOW - 100, roles=("fl", "ledger"), gpu="RTX", gpu_memory_bytes=8 << 30,
                   battery_present=True, battery_percent=55.5, charging=True).encode(),
            sign_record(key(9), seq=2, issued=int(NOW), expires=int(NOW) + 600, caps=caps(),   # version 2
                        profile=make_profile("eu-west", "phone", ["harvest"]),
                        harvest=HarvestInfo(False, "on_battery", 0, 0)).encode()]


def registry_observation() -> list[bytes]:
    obs = [sign_observation(FUZZ_KEY, subject="12D3KooWSubject", service="fl", ok=True, weight=1.0,
                            evidence=b"e" * 32, ts=int(NOW) - 5),
           sign_observation(key(8), subject=FUZZ_PEER, service="relay", ok=False, weight=0.25,
                            evidence=b"", ts=int(NOW))]
    return [pack({**o.body(), "sig": o.sig}) for o in obs]


def registry_gossip() -> list[bytes]:
    core = _fuzz_core()
    acts = core.start(caps(), NOW) + core.tick(NOW + 60) + core.goodbye(NOW + 61)
    return [a.data for a in acts if isinstance(a, Publish) and a.topic.endswith("devices/1")] or \
        [a.data for a in acts if isinstance(a, Publish)]


def registry_direct() -> list[bytes]:
    def frame(m: Any) -> bytes:
        b = pack(m)
        return len(b).to_bytes(4, "big") + b
    return [frame({"v": 1, "t": "ping"}), frame({"v": 1, "t": "get"}),
            frame({"v": 1, "t": "sync", "epoch": b"", "after": 0}),
            frame({"v": 1, "t": "osync", "epoch": b"e" * 8, "after": 3}),
            frame({"v": 1, "t": "nope"}), frame({"v": 1, "t": "ping"})[:6]]


def market_gossip() -> list[bytes]:
    o = sign_offer(FUZZ_KEY, id="o1", seq=3, service="compute.wasm", cores=8, memory_mib=8192,
                   disk_mib=50_000, region="eu-west", prices={"fuel": 9, "cpu_s": 2, "gb_h": 1},
                   uptime_bp=9950, issued=int(NOW), valid_until=int(NOW) + 600)
    w = sign_withdraw(FUZZ_KEY, id="o1", seq=4, issued=int(NOW))
    d1 = sign_demand(FUZZ_KEY, id="d1", service="compute.wasm", constraints="", usage={"fuel": 50},
                     budget=5000, replication=1, issued=int(NOW), deadline=int(NOW) + 300)
    d2 = sign_demand(FUZZ_KEY, id="d2", service="compute.wasm",
                     constraints="(&(cores>=2)(|(region=eu-*)(!(price.fuel>20)))(uptime>=99.5))",
                     usage={"fuel": 10, "cpu_s": 3}, budget=90_000, replication=3, issued=int(NOW),
                     deadline=int(NOW) + 300)
    return [o.encode(), w.encode(), d1.encode(), d2.encode()]


def market_stream() -> list[bytes]:
    local = TARGET_LOCAL_KEY
    terms = Terms(nonce=b"n" * 16, round=0, customer=pub(FUZZ_KEY), provider=pub(local),
                  service="compute.wasm", offer="o1", demand=b"d" * 32, prices=(("fuel", 10),),
                  usage=(("fuel", 100),), max_total=2000, start=int(NOW), deadline=int(NOW) + 600,
                  debit_interval=120, sla=SLA(9900, 500, 10))
    counter = terms.revise(prices=(("fuel", 12),))
    agreement = Agreement(terms, sign_accept(FUZZ_KEY, "customer", terms).sig,
                          sign_accept(local, "provider", terms).sig)
    bid = sign_bid(FUZZ_KEY, demand=b"d" * 32, offer="o1", price=900, seq=1, issued=int(NOW),
                   valid_until=int(NOW) + 60)
    return [sign_proposal(FUZZ_KEY, "customer", terms).encode(),
            sign_proposal(FUZZ_KEY, "customer", counter).encode(),
            sign_accept(FUZZ_KEY, "customer", terms).encode(),
            sign_reject(FUZZ_KEY, "customer", terms.nonce, 0, "too dear").encode(),
            agreement.encode(), bid.encode()]


def market_sla() -> list[bytes]:
    probe = Probe(b"c" * 32, 3, b"n" * 16)
    return [pack(probe.wire()), pack(sign_pong(FUZZ_KEY, probe, True).wire()),
            pack({"v": 1, "t": "ready", "collateral": 2_500_000}), pack({"v": 1, "t": "debit", "due": 7}),
            pack({"v": 1, "t": "note", "due": 7, "sig": b"s" * 64}), pack({"v": 1, "t": "end"})]


def onion_relay_stream() -> list[bytes]:
    from fognode.protocols.onion.cells import Cell, CellCommand, create_body, destroy_body
    from fognode.protocols.onion.errors import TeardownReason
    from fognode.protocols.onion.ntor import ClientHandshake
    from tests.fuzz.targets import ONION_PUBLIC, _ONION_IDENTITY
    hs = ClientHandshake.start(bytes(_ONION_IDENTITY.verify_key), ONION_PUBLIC, secret=b"\x05" * 32)
    create = Cell(5, CellCommand.CREATE, create_body(hs.onionskin()))
    relay = Cell(5, CellCommand.RELAY, b"\x11" * 64)
    destroy = Cell(5, CellCommand.DESTROY, destroy_body(TeardownReason.NONE))
    pad = Cell(0, CellCommand.PADDING, b"")
    fixed = [c.encode()[:5] + bytes(4091) for c in (create, relay, destroy, pad)]   # deterministic padding
    frames = [len(c).to_bytes(2, "big") + c[:5] + create.body + bytes(4091 - len(create.body)) if i == 0 else
              len(c).to_bytes(2, "big") + c for i, c in enumerate(fixed)]
    return [frames[0], frames[0] + frames[1] + frames[2], frames[0] + frames[1] * 4 + frames[2],
            frames[3] + frames[0] * 2,
            (100).to_bytes(2, "big") + b"x" * 100 + frames[0], (5000).to_bytes(2, "big") + b"y" * 5000,
            frames[0][:300]]


def monitor_status() -> list[bytes]:
    return [NodeStatus(True, 3, 12.5, "0.1.0", NOW).encode(), NodeStatus(False, 0, 0.0, "", 0.0).encode()]


def wire_unpack() -> list[bytes]:
    return ledger_order()[:2] + fl_gossip()[:2] + registry_record()[:1] + \
        [pack({"a": [1, -1, 2**64 - 1, -2**63, 1.5, None, True, "x", b"y"], "m": {"k": {}}})]


def gossip_envelope() -> list[bytes]:
    one = [seal(FUZZ_KEY, "m", 3, "fognode/ledger/certs/1", 7, ledger_certificate()[0]).raw,
           seal(key(5), "h", 0, "fognode/fl/sessions/1", 1, b"").raw]
    batch = [seal(FUZZ_KEY, "m", 3, "fognode/ledger/certs/1", s, b"c%d" % s).raw for s in (8, 9)]
    return one + [pack_batch(batch + [seal(FUZZ_KEY, "h", 3, "fognode/ledger/certs/1", 9, b"").raw])]


def stream_frames() -> list[bytes]:
    def frame(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b
    frames = b"".join(frame(m) for m in ledger_order()[:2] + [pack({"v": 1})])
    return [b"\x00" + frames, b"\x03\x01\x05\xff" + frames, b"\x00" + frame(b"\xc1"),
            b"\x00" + (5000).to_bytes(4, "big") + b"x" * 10, b"\x00" + frames[:7]]


def rpc_line() -> list[bytes]:
    reqs: list[Any] = [
        {"jsonrpc": "2.0", "method": "fuzz.scalars", "params": [1, 2.5, "x", True], "id": 1},
        {"jsonrpc": "2.0", "method": "fuzz.scalars", "params": {"a": "7", "d": "true"}, "id": "a"},
        {"jsonrpc": "2.0", "method": "fuzz.containers", "params": [["a", "b"], {"w": 0.5}, [1, 2]], "id": 2},
        {"jsonrpc": "2.0", "method": "fuzz.containers", "params": ["a,b", None, "3,4"], "id": 3},
        {"jsonrpc": "2.0", "method": "fuzz.choice", "params": {"mode": "b", "limit": 3, "anything": [{}]}, "id": 4},
        {"jsonrpc": "2.0", "method": "help", "params": ["fuzz.choice"], "id": 5},
        {"jsonrpc": "2.0", "method": "help", "id": 6},
        {"jsonrpc": "2.0", "method": "rpc.discover", "id": 7},
        {"jsonrpc": "2.0", "method": "fuzz.scalar", "id": None},
        [{"jsonrpc": "2.0", "method": "fuzz.scalars", "params": [1]}, {"jsonrpc": "2.0", "method": "help", "id": 8}],
    ]
    return [json.dumps(r).encode() for r in reqs] + [b"[]", b"{", b"\xff", b'{"a":NaN}', b"[" * 100]


GENERATORS: dict[str, Callable[[], list[bytes]]] = {
    "wire_unpack": wire_unpack, "gossip_envelope": gossip_envelope, "stream_frames": stream_frames,
    "ledger_order": ledger_order, "ledger_certificate": ledger_certificate, "ledger_replies": ledger_replies,
    "ledger_receipt": ledger_receipt, "ledger_escrow": ledger_escrow, "ledger_pool": ledger_pool, "fl_gossip": fl_gossip, "fl_stream": fl_stream, "fl_tensor": fl_tensor,
    "fl_secagg": fl_secagg, "registry_record": registry_record, "registry_observation": registry_observation,
    "registry_gossip": registry_gossip, "registry_direct": registry_direct, "monitor_status": monitor_status, "rpc_line": rpc_line,
    "market_gossip": market_gossip, "market_stream": market_stream, "market_sla": market_sla,
    "onion_relay_stream": onion_relay_stream,
}


def corpus() -> dict[str, dict[str, bytes]]:
    """{target: {file name: bytes}} for every target."""
    missing = set(TARGETS) ^ set(GENERATORS)
    if missing:
        raise SystemExit(f"targets and corpus generators differ: {sorted(missing)}")
    out = {}
    for name, gen in GENERATORS.items():
        seeds = gen() + ([] if name == "rpc_line" else EDGE)
        out[name] = {hashlib.blake2b(s, digest_size=16).hexdigest(): s for s in seeds}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help="targets to regenerate (default: all)")
    args = ap.parse_args(argv)
    for name, files in corpus().items():
        if args.targets and name not in args.targets:
            continue
        d = CORPUS / name
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            if old.name not in files:
                old.unlink()
        for fn, data in files.items():
            (d / fn).write_bytes(data)
        print(f"{name}: {len(files)} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
