"""Fuzz targets: one function per decoder that takes bytes from the network, and the RPC line handler.

Each target takes the bytes a peer (or a control-socket client) could send and runs them
through the same decoder the node runs them through, then through what the node does with a
decoded value right away (ids, canonical re-encoding, signature and quorum checks). A target
returns normally or raises one of its `expected` errors (the decoders' own errors:
RemoteProtocolError and its subclasses Rejected, TensorRejected, UpdateRejected, plus the
documented verification errors a target lists); anything else it raises is a bug.

Signed messages are run twice: as given, and re-signed with the fuzz key (key, peer id and
signature fields replaced, see `_resign`), so that the fuzzer also reaches the code behind the
signature check instead of stopping at "bad signature" on every input.

Multi-part inputs (a tensor header and its chunks, a secagg envelope and its frames, a framed
stream) are one msgpack array or raw bytes as documented on each target; `tests/fuzz/make_corpus.py`
writes real encodings of each in that form.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import msgpack
import numpy as np
import trio
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry

from fognode.ledger.committee import (decode_committee_body, decode_committee_certificate,
                                      decode_committee_vote)
from fognode.ledger.errors import CertificateRejected
from fognode.ledger import escrow as escrow_rules
from fognode.ledger import rewardpool as pool_rules
from fognode.ledger.rewardpool_orders import POOL_ORDERS, PoolOpenOrder
from fognode.ledger.escrow_orders import (ESCROW_ORDERS, EscrowCollateralOrder, decode_breach_report,
                                          decode_debit_note)
from fognode.ledger.handover import HandoverPage
from fognode.ledger.messages import (decode_certificate, decode_fork_proof, decode_rejection,
                                     decode_signed_order, decode_vote, order_problem, vote_message)
from fognode.ledger.certcheck import verify_certificate
from fognode.ledger.quorum import Committee
from fognode.ledger.receipts import EvidenceError, VerifyContext, decode_receipt, default_registry
from fognode.node.errors import LocalProtocolError, RemoteProtocolError, StreamClosed
from fognode.node.gossip import open_envelope
from fognode.node.gossip_envelope import open_gossip
from fognode.node.peerid import peer_id_from_pubkey
from fognode.node.rpc.methods import INTERNAL_ERROR, MethodTable, rpc_method
from fognode.node.rpc.server import RpcServer
from fognode.node.streams import Libp2pFramedStream
from fognode.node.wire import pack, sign, unpack
from fognode.protocols.fl.messages import Ack, ModelRequest, ModelResponse, UpdateHeader, decode_gossip
from fognode.protocols.fl.secagg.messages import decode_message
from fognode.protocols.fl.rewards.receipts import decode_round_receipt
from fognode.protocols.fl.rewards.round_header import RoundHeader
from fognode.protocols.fl.secagg.round import Envelope as SecAggEnvelope
from fognode.protocols.fl.secagg.round import decode_body as secagg_decode_body
from fognode.protocols.fl.transfer.tensors import TensorDecoder, decode_header, tensor_hash
from fognode.protocols.market.agreement import decode_negotiation
from fognode.protocols.market.config import MarketConfig
from fognode.protocols.market.core import DEMANDS_TOPIC, OFFERS_TOPIC, MarketCore
from fognode.protocols.market.messages import decode_demand, decode_offer_gossip
from fognode.protocols.market.sla_messages import MAX_FRAME as MAX_SLA_FRAME
from fognode.protocols.market.sla_messages import Probe, decode_pong, decode_probe, decode_service
from fognode.protocols.monitor.protocol import NodeStatus
from fognode.protocols.onion.actions import SendCell
from fognode.protocols.onion.cells import CellError, CellFramer, RelayRun
from fognode.protocols.onion.links import CircIdAllocator
from fognode.protocols.onion.ntor import keypair as onion_keypair
from fognode.protocols.onion.relay import RelayCore
from fognode.protocols.registry import direct
from fognode.protocols.registry.config import RegistryConfig
from fognode.protocols.registry.core import RegistryCore
from fognode.protocols.registry.observation import decode_observation
from fognode.protocols.registry.record import decode_record, make_profile

FUZZ_KEY = SigningKey(b"\x5a" * 32)
FUZZ_PUB = bytes(FUZZ_KEY.verify_key)
FUZZ_PEER = peer_id_from_pubkey(FUZZ_PUB)
LOCAL_KEY = SigningKey(b"\x17" * 32)
NOW = 1_800_000_000.0
# a committee of the fuzz key alone: certificates the fuzzer re-signs can pass verification
FUZZ_COMMITTEE = Committee.of({FUZZ_PUB: 10})
MAX_TENSOR = 1 << 20          # receiver's byte limit for a fuzzed tensor
PARAMS_SHAPE = (4, 8)         # the receiver's model layout in the FL targets

Expected = tuple[type[BaseException], ...]


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    what: str                              # the network path it stands for
    expected: Expected = (RemoteProtocolError,)


TARGETS: dict[str, Target] = {}


def target(name: str, what: str, expected: Expected = (RemoteProtocolError,)) -> Callable[
        [Callable[[bytes], None]], Callable[[bytes], None]]:
    def add(fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
        if name in TARGETS:
            raise ValueError(f"fuzz target {name!r} defined twice")
        TARGETS[name] = Target(name, fn, what, expected)
        return fn
    return add


def run_one(name: str, data: bytes) -> None:
    """Run target `name` on `data`; its expected errors are swallowed, anything else raised."""
    t = TARGETS[name]
    try:
        t.run(data)
    except t.expected:
        pass


def _resign(raw: Any, *, key: str | None, peer: str | None, sig: str = "sig",
            body: Callable[[dict[str, Any]], Any] | None = None) -> Any:
    """A copy of map `raw` with its key/peer-id fields set to the fuzz identity and `sig`
    re-signed over the map without `sig` (or over `body(map)`); None when `raw` cannot be
    signed (not a map, or not canonically encodable: the decoder must refuse those anyway)."""
    if not isinstance(raw, dict):
        return None
    out = dict(raw)
    if key is not None:
        out[key] = FUZZ_PUB
    if peer is not None:
        out[peer] = FUZZ_PEER
    out.pop(sig, None)
    try:
        out[sig] = sign(FUZZ_KEY, body(out) if body is not None else out)
    except LocalProtocolError:
        return None
    return out


def _twice(raw: Any, decode: Callable[[Any], None], **resign: Any) -> None:
    """Decode `raw` as given, then re-signed by the fuzz key (see _resign)."""
    try:
        decode(raw)
    except RemoteProtocolError:
        pass
    again = _resign(raw, **resign)
    if again is not None:
        decode(again)


def _roundtrip(obj: Any, decode: Callable[[Any], Any]) -> None:
    """A decoded message re-encodes canonically and decodes to itself (what relaying needs)."""
    again = decode(unpack(pack(obj.to_wire())))
    assert again == obj, f"{type(obj).__name__} does not survive re-encoding: {obj!r} != {again!r}"


# ---- node -------------------------------------------------------------------------------------

@target("wire_unpack", "node/wire.unpack: every msgpack frame and gossip payload")
def wire_unpack(data: bytes) -> None:
    v = unpack(data)

    def walk(x: Any, depth: int) -> None:
        assert depth < 1100, "unpack built a value nested deeper than msgpack's limit"
        if isinstance(x, dict):
            for k, y in x.items():
                assert isinstance(k, (str, bytes)), type(k)
                walk(y, depth + 1)
        elif isinstance(x, list):
            for y in x:
                walk(y, depth + 1)
        else:
            # msgpack's timestamp (ext -1) is decoded before ext_hook sees it (wire.py docstring)
            assert x is None or isinstance(x, (bool, int, float, str, bytes, msgpack.Timestamp)), type(x)
    walk(v, 0)


@target("gossip_envelope", "node/gossip_envelope.open_gossip: every message on a gossip topic "
        "(one envelope or a batch)")
def gossip_envelope(data: bytes) -> None:
    try:
        env = open_envelope(data, max_size=64 * 1024, peer="fuzz")
        assert open_envelope(env.raw, max_size=64 * 1024) == env
    except RemoteProtocolError:
        pass
    try:
        envs = open_gossip(data, max_size=64 * 1024, peer="fuzz", signed_by_origin=True)
        assert envs and all(open_envelope(e.raw, max_size=64 * 1024, peer="fuzz",
                                          signed_by_origin=True) == e for e in envs)
    except RemoteProtocolError:
        pass
    try:
        raw = unpack(data, max_size=64 * 1024)
    except RemoteProtocolError:
        return
    if isinstance(raw, dict) and isinstance(raw.get("b"), dict):
        b = dict(raw["b"])
        b["o"] = FUZZ_PUB
        try:
            raw = {**raw, "b": b, "sig": sign(FUZZ_KEY, b)}
            data = pack(raw)
        except LocalProtocolError:
            return
        env = open_envelope(data, max_size=64 * 1024, peer="fuzz")
        assert env.origin == FUZZ_PUB


class _ByteStream:
    """A py-libp2p stream's reading side over fixed bytes, handed out in the sizes the input
    asks for (Libp2pFramedStream only calls read, reset, close and the two attributes)."""

    class _Conn:
        peer_id = "fuzz-peer"

    muxed_conn = _Conn()

    def __init__(self, data: bytes, cuts: list[int]) -> None:
        self.data = data
        self.cuts = cuts
        self.written: list[bytes] = []

    def get_protocol(self) -> str:
        return "/fognode/fuzz/1"

    async def read(self, n: int | None = None) -> bytes:
        if not self.data:
            return b""
        step = self.cuts.pop(0) if self.cuts else len(self.data)
        k = max(1, min(n or len(self.data), step))
        out, self.data = self.data[:k], self.data[k:]
        return out

    async def reset(self) -> None:
        self.data = b""

    async def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    async def close(self) -> None:
        pass


@target("stream_frames", "node/streams.Libp2pFramedStream.recv: length-prefixed frames on every stream",
        expected=(RemoteProtocolError, StreamClosed))
def stream_frames(data: bytes) -> None:
    """Input: one byte N, N read sizes (bytes), then the stream's bytes."""
    n = data[0] % 8 if data else 0
    cuts = [c + 1 for c in data[1:1 + n]]
    fs = Libp2pFramedStream(_ByteStream(data[1 + n:], cuts), max_frame=4096)

    async def read_all() -> None:
        for _ in range(64):
            try:
                await fs.recv()
            except StreamClosed:
                if fs._buf:   # ended inside a frame: the error is the expected outcome
                    raise
                return        # a clean end between frames
    trio.run(read_all)


# ---- ledger -----------------------------------------------------------------------------------

def _check_signed_order(raw: Any) -> None:
    so = decode_signed_order(raw, peer="fuzz")
    _ = so.tx_id, so.key, so.signature_ok(), order_problem(so.order)
    assert so.encoded() == pack(so.to_wire()), "SignedOrder.encoded() is not pack(to_wire())"
    _roundtrip(so, decode_signed_order)


@target("ledger_order", "ledger order stream: a client's signed order (decode_signed_order)")
def ledger_order(data: bytes) -> None:
    raw = unpack(data, what="fuzz")
    _check_signed_order(raw)
    if isinstance(raw, dict) and isinstance(raw.get("order"), dict):
        o = {**raw["order"], "sender": FUZZ_PUB}
        try:
            again = {**raw, "order": o, "sig": sign(FUZZ_KEY, o)}
        except LocalProtocolError:
            return
        _check_signed_order(again)


def _check_certificate(raw: Any) -> None:
    cert = decode_certificate(raw, peer="fuzz")
    assert cert.encoded() == pack(cert.to_wire()), "Certificate.encoded() is not pack(to_wire())"
    _roundtrip(cert, decode_certificate)
    verify_certificate(cert, FUZZ_COMMITTEE)


@target("ledger_certificate", "ledger gossip batches and sync replies: one certificate (decode_certificate)",
        expected=(RemoteProtocolError, CertificateRejected))
def ledger_certificate(data: bytes) -> None:
    raw = unpack(data, what="fuzz")
    try:
        _check_certificate(raw)
    except (RemoteProtocolError, CertificateRejected):
        pass
    # re-signed: the order by the fuzz key, one vote by the fuzz key (a quorum of FUZZ_COMMITTEE)
    if not (isinstance(raw, dict) and isinstance(raw.get("order"), dict)
            and isinstance(raw["order"].get("order"), dict)):
        return
    o = {**raw["order"]["order"], "sender": FUZZ_PUB}
    try:
        so = decode_signed_order({**raw["order"], "order": o, "sig": sign(FUZZ_KEY, o)})
    except (RemoteProtocolError, LocalProtocolError):
        return
    vote = FUZZ_KEY.sign(vote_message(so.tx_id)).signature
    _check_certificate({**raw, "order": so.to_wire(), "votes": [[FUZZ_PUB, vote]]})


@target("ledger_replies", "ledger order/committee streams: votes, rejections, fork proofs, committee "
                          "bodies, votes and certificates, handover pages (first byte picks the decoder)")
def ledger_replies(data: bytes) -> None:
    if not data:
        return
    which, raw = data[0] % 7, unpack(data[1:], what="fuzz")
    if which == 0:
        v = decode_vote(raw, peer="fuzz")
        _ = v.signature_ok()
        _roundtrip(v, decode_vote)
    elif which == 1:
        _roundtrip(decode_rejection(raw, peer="fuzz"), decode_rejection)
    elif which == 2:
        p = decode_fork_proof(raw, peer="fuzz")
        _ = p.valid()
        _roundtrip(p, decode_fork_proof)
    elif which == 3:
        b = decode_committee_body(raw, peer="fuzz")
        _ = b.body_hash, b.vote_message()
        _roundtrip(b, decode_committee_body)
    elif which == 4:
        _roundtrip(decode_committee_vote(raw, peer="fuzz"), decode_committee_vote)
    elif which == 5:
        c = decode_committee_certificate(raw, peer="fuzz")
        _ = c.committee()
        _roundtrip(c, decode_committee_certificate)
    else:
        after = (b"\x00" * 32, 0)
        page = HandoverPage.decode(raw, epoch=3, after=after, peer="fuzz")
        assert HandoverPage.decode(unpack(pack(page.to_wire())), epoch=3, after=after) == page


# the escrow every fuzzed escrow order is checked against: the fuzz key is customer and witness
FUZZ_ESCROW = escrow_rules.Escrow(FUZZ_PUB, LOCAL_KEY.verify_key.encode(), b"\x01" * 32, 10_000, int(NOW), 600,
                                  990_000, 300, (FUZZ_PUB,), 1, paid=1000, collateral=500)


def _escrow_rules(order: Any) -> None:
    """The escrow rules on a decoded escrow order; an order they accept moves no micro-unit
    out of thin air (what the escrow held plus a deposit = what it holds plus the credits)."""
    if escrow_rules.order_problem(order) is not None:
        return
    e = None if order.escrow_sequence == 0 else FUZZ_ESCROW
    if escrow_rules.state_problem(e, order) is not None:
        return
    for t in (NOW - 1, NOW + 1, NOW + 700):
        escrow_rules.time_problem(e, order, t)
    new, credits = escrow_rules.effect(e, order)
    before = (e.held if e is not None else 0) + (order.amount if isinstance(order, EscrowCollateralOrder) else 0)
    if e is None:
        before = new.held
    assert all(a > 0 for _, a in credits), credits
    assert before == new.held + sum(a for _, a in credits), (e, new, credits)
    assert new.next_sequence == (e.next_sequence + 1 if e is not None else 1)
    assert escrow_rules.Escrow.decode(new.encode()) == new and not new.problems()


@target("ledger_escrow", "ledger escrow evidence and orders: debit notes, SLA breach reports (first byte "
                         "picks), escrow orders through the escrow rules (decode_* + escrow.py)")
def ledger_escrow(data: bytes) -> None:
    if not data:
        return
    which, raw = data[0] % 3, unpack(data[1:], what="fuzz")
    if which == 0:
        note = decode_debit_note(raw, peer="fuzz")
        _ = note.signed_by(FUZZ_PUB)
        _roundtrip(note, decode_debit_note)
    elif which == 1:
        report = decode_breach_report(raw, peer="fuzz")
        _ = report.signers((FUZZ_PUB,))
        _roundtrip(report, decode_breach_report)
    else:
        so = decode_signed_order(raw, peer="fuzz")
        _roundtrip(so, decode_signed_order)
        if not isinstance(so.order, ESCROW_ORDERS):
            return
        _escrow_rules(so.order)
        o = raw["order"]     # re-signed evidence: the note or report signed by the fuzz key
        if isinstance(o.get("note"), dict) and isinstance(o["note"].get("escrow"), bytes):
            n = {"v": 1, "kind": "ledger.debit_note", "escrow": o["note"]["escrow"], "due": o["note"].get("due")}
            try:
                o = {**o, "note": {**o["note"], "sig": sign(FUZZ_KEY, n)}}
            except LocalProtocolError:
                return
        elif isinstance(o.get("report"), dict):
            r = {k: o["report"].get(k) for k in ("escrow", "window", "probes", "failures")}
            try:
                o = {**o, "report": {**o["report"], "sigs": [[FUZZ_PUB, sign(FUZZ_KEY, {"v": 1, "kind": "ledger.sla_breach", **r})]]}}
            except LocalProtocolError:
                return
        _escrow_rules(decode_signed_order({**raw, "order": o}, peer="fuzz").order)


# the pool every fuzzed pool order is checked against: the fuzz key is its funder
FUZZ_POOL = pool_rules.RewardPool(FUZZ_PUB, b"\x02" * 32, "fl_update", 10_000, int(NOW), 600, paid=1000, payouts=2,
                                  acc=12345)


def _pool_rules(order: Any) -> None:
    """The pool rules on a decoded pool order; one they let apply moves no micro-unit out of
    thin air (what the pool held = what it holds plus the credits; an open creates its amount)."""
    if pool_rules.order_problem(order) is not None:
        return
    p = None if isinstance(order, PoolOpenOrder) else FUZZ_POOL
    if pool_rules.state_problem(p, order) is not None:
        return
    for t in (NOW - 1, NOW + 1, NOW + 700):
        pool_rules.time_problem(p, order, t)
    if pool_rules.blocked(p, order, set()) is not None:
        return
    new, credits = pool_rules.effect(p, order, b"\x00" * 32)
    before = p.held if p is not None else new.held
    assert all(a > 0 for _, a in credits), credits
    assert before == new.held + sum(a for _, a in credits), (p, new, credits)
    assert pool_rules.RewardPool.decode(new.encode()) == new and not new.problems()


@target("ledger_pool", "ledger reward pools: pool orders through the pool rules (decode_signed_order + "
                       "rewardpool.py), stored pool records (first byte picks)")
def ledger_pool(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2 == 0:
        so = decode_signed_order(unpack(data[1:], what="fuzz"), peer="fuzz")
        _roundtrip(so, decode_signed_order)
        if isinstance(so.order, POOL_ORDERS):
            _pool_rules(so.order)
    else:
        rec = pool_rules.RewardPool.decode(data[1:])
        _ = rec.problems(), rec.view(), rec.held
        assert pool_rules.RewardPool.decode(rec.encode()) == rec


@target("ledger_receipt", "ledger mint evidence: a receipt inside a mint order (decode_receipt + verifier)",
        expected=(RemoteProtocolError, EvidenceError))
def ledger_receipt(data: bytes) -> None:
    raw = unpack(data, what="fuzz")
    ctx = VerifyContext(committee=Committee.of({FUZZ_PUB: 10, LOCAL_KEY.verify_key.encode(): 10}),
                        epoch=5, epoch_length=3600, uptime_reward_per_hour=1000)
    reg = default_registry()

    def check(r: Any) -> None:
        rec = decode_receipt(r, peer="fuzz")
        _ = rec.receipt_id, rec.claim_id, rec.scope_id
        _roundtrip(rec, decode_receipt)
        try:
            reg.max_reward(rec, ctx)
        except EvidenceError:
            pass
    try:
        check(raw)
    except RemoteProtocolError:
        pass
    again = _resign(raw, key="issuer", peer=None)
    if again is not None:
        check(again)


# ---- fl -----------------------------------------------------------------------------------------

def _fl_gossip_resigned(raw: Any) -> Any:
    """The FL gossip envelope with its signed body (announcement or round result receipt)
    re-signed by the fuzz key."""
    if not (isinstance(raw, dict) and isinstance(raw.get("body"), dict)):
        return None
    body = raw["body"]
    if raw.get("type") == "announce":
        again = _resign(body, key="key", peer="starter")
    elif raw.get("type") == "result" and isinstance(body.get("receipt"), dict):
        rc = _resign(body["receipt"], key="key", peer="aggregator")
        again = None if rc is None else {**body, "receipt": rc}
    else:
        return None
    return None if again is None else {**raw, "body": again}


@target("fl_gossip", "fl gossip topic: announcements, opt-ins, plans, results, failures, endings")
def fl_gossip(data: bytes) -> None:
    raw = unpack(data, what="fuzz")
    for r in (raw, _fl_gossip_resigned(raw)):
        if r is None:
            continue
        try:
            m = decode_gossip(r, peer="fuzz")
        except RemoteProtocolError:
            continue
        assert decode_gossip(unpack(pack({"v": 1, "type": r["type"], "body": m.to_wire()}))) == m


@target("fl_stream", "fl update/model streams: update headers, acks, model requests and responses, "
                     "round headers, round receipts (first byte picks the decoder)")
def fl_stream(data: bytes) -> None:
    if not data:
        return
    which, raw = data[0] % 6, unpack(data[1:], what="fuzz")
    if which == 0:
        h = UpdateHeader.decode(raw, expected_shape=PARAMS_SHAPE, max_bytes=MAX_TENSOR, peer="fuzz")
        _ = UpdateHeader.peek_session(raw)
        assert UpdateHeader.decode(unpack(pack(h.to_wire())), expected_shape=PARAMS_SHAPE,
                                   max_bytes=MAX_TENSOR) == h
    elif which == 1:
        _roundtrip(Ack.decode(raw, peer="fuzz"), Ack.decode)
    elif which == 2:
        _roundtrip(ModelRequest.decode(raw, peer="fuzz"), ModelRequest.decode)
    elif which == 3:
        m = ModelResponse.decode(raw, params_shape=PARAMS_SHAPE, max_bytes=MAX_TENSOR, peer="fuzz")
        assert ModelResponse.decode(unpack(pack(m.to_wire())), params_shape=PARAMS_SHAPE,
                                    max_bytes=MAX_TENSOR) == m
    elif which == 4:
        _twice(raw, lambda r: _roundtrip(RoundHeader.decode(r, peer="fuzz"), RoundHeader.decode),
               key="key", peer="signer")
    else:
        _twice(raw, lambda r: _roundtrip(decode_round_receipt(r, peer="fuzz"), decode_round_receipt),
               key="key", peer="aggregator")


@target("fl_tensor", "fl tensor transfer: a header then raw chunks (decode_header + TensorDecoder)")
def fl_tensor(data: bytes) -> None:
    """Input: msgpack [header map, [chunk bytes, ...], fix_hash bool]; with fix_hash the
    header's hash is replaced by that of the chunks, so the fuzzer gets past the hash check."""
    raw = unpack(data, what="fuzz")
    if not isinstance(raw, list) or len(raw) != 3 or not isinstance(raw[1], list):
        return
    header, chunks, fix = raw
    chunks = [c for c in chunks if isinstance(c, bytes)]
    if fix is True and isinstance(header, dict):
        header = {**header, "hash": tensor_hash(b"".join(chunks))}
    h = decode_header(header, expected_shape=None, max_bytes=MAX_TENSOR, peer="fuzz")
    assert decode_header(unpack(pack(h.to_wire())), expected_shape=None, max_bytes=MAX_TENSOR) == h
    dec = TensorDecoder(h, peer="fuzz")
    for c in chunks:
        dec.feed(c)
    arr = dec.finish()
    assert arr.shape == h.shape and arr.dtype == np.float32 and bool(np.isfinite(arr).all())


@target("fl_secagg", "fl secure aggregation stream: an envelope then the message's byte frames")
def fl_secagg(data: bytes) -> None:
    """Input: msgpack [envelope map, [frame bytes, ...]] or a bare secagg message map."""
    raw = unpack(data, what="fuzz")
    if isinstance(raw, list) and len(raw) == 2 and isinstance(raw[1], list):
        env = SecAggEnvelope.decode(raw[0], peer="fuzz")
        assert SecAggEnvelope.decode(unpack(pack(env.to_wire()))) == env
        frames = [f for f in raw[1] if isinstance(f, bytes)]
        if len(frames) != env.parts:
            return
        msg = secagg_decode_body(frames, peer="fuzz")
    else:
        msg = decode_message(raw, peer="fuzz")
    assert decode_message(unpack(pack(msg.to_wire()))) == msg


# ---- market -----------------------------------------------------------------------------------

def _market_core() -> MarketCore:
    """A market node holding one offer of its own (so demands can draw a bid from it)."""
    core = MarketCore(LOCAL_KEY, MarketConfig(), region="eu-west", reputation=lambda p: 0.5,
                      latency=lambda p: None)
    core.publish_offer(id="o1", service="compute.wasm", cores=4, memory_mib=4096, disk_mib=1000,
                       prices={"fuel": 10, "cpu_s": 2}, uptime_bp=9900, ttl=3600, now=NOW)
    return core


def _market_resigned(data: bytes) -> bytes | None:
    """`data` re-signed by the fuzz key as the party it names (negotiation messages: the
    customer, facing LOCAL_KEY as the provider)."""
    try:
        raw = unpack(data, max_size=8192)
    except RemoteProtocolError:
        return None
    if not isinstance(raw, dict):
        return None
    if isinstance(raw.get("terms"), dict):
        terms = {**raw["terms"], "customer": FUZZ_PUB, "provider": bytes(LOCAL_KEY.verify_key)}
        raw = {**raw, "terms": terms, "by": "customer"}
    party = next((k for k in ("provider", "customer", "signer") if k in raw), None)
    again = _resign(raw, key=party, peer=None)
    return None if again is None else pack(again)


@target("market_gossip", "market offers and demands topics: offers, withdrawals, demands "
                         "(MarketCore.on_gossip, decode_offer_gossip, decode_demand)")
def market_gossip(data: bytes) -> None:
    core = _market_core()
    for d in (data, _market_resigned(data)):
        if d is None:
            continue
        core.on_gossip(OFFERS_TOPIC, FUZZ_PEER, d, NOW)
        core.on_gossip(DEMANDS_TOPIC, FUZZ_PEER, d, NOW)
        for decode in (decode_offer_gossip, decode_demand):
            try:
                msg = decode(d, peer="fuzz")
            except RemoteProtocolError:
                continue
            assert decode(msg.encode()) == msg, f"{type(msg).__name__} does not re-encode"
    core.tick(NOW + 10_000)


@target("market_stream", "market stream: negotiation messages and auction bids (MarketCore.on_stream)")
def market_stream(data: bytes) -> None:
    core = _market_core()
    for d in (data, _market_resigned(data)):
        if d is None:
            continue
        core.on_stream(FUZZ_PEER, d, NOW)
        try:
            msg = decode_negotiation(d, peer="fuzz")
        except RemoteProtocolError:
            continue
        assert decode_negotiation(msg.encode()) == msg, f"{type(msg).__name__} does not re-encode"
    core.tick(NOW + 10_000)


@target("market_sla", "market service and probe streams: hello/payee/escrow/ready/debit/note, probes and "
                      "pongs (decode_service, decode_probe, decode_pong)")
def market_sla(data: bytes) -> None:
    try:
        raw = unpack(data, max_size=MAX_SLA_FRAME)
    except RemoteProtocolError:
        return
    for decode in (decode_service, decode_probe, decode_pong):
        try:
            decode(raw, peer="fuzz")
        except RemoteProtocolError:
            continue
    try:
        pong = decode_pong(raw, peer="fuzz")
    except RemoteProtocolError:
        return
    assert decode_pong(pong.wire()) == pong
    pong.answers(Probe(pong.contract, pong.seq, pong.nonce), bytes(FUZZ_KEY.verify_key))


# ---- registry and monitor ---------------------------------------------------------------------

def _registry_core() -> RegistryCore:
    return RegistryCore(LOCAL_KEY, RegistryConfig(), make_profile("eu-west", "server", ["fl"]),
                        pretrusted=[], now=NOW)


def _record_resigned(data: bytes) -> bytes | None:
    try:
        raw = unpack(data, max_size=8192)
    except RemoteProtocolError:
        return None
    again = _resign(raw, key="pubkey", peer="peer")
    return None if again is None else pack(again)


@target("registry_record", "registry: device records from the DHT, sync replies and gossip (decode_record)")
def registry_record(data: bytes) -> None:
    for d in (data, _record_resigned(data)):
        if d is None:
            continue
        try:
            rec = decode_record(d, peer="fuzz")
        except RemoteProtocolError:
            continue
        assert decode_record(rec.encode()) == rec
        _registry_core().on_sync_reply("fuzz", b"e" * 8, 1, False, [d], NOW)


@target("registry_observation", "registry: signed observations from gossip and sync (decode_observation)")
def registry_observation(data: bytes) -> None:
    again: bytes | None = None
    try:
        r = _resign(unpack(data, max_size=8192), key="pubkey", peer="observer")
        again = None if r is None else pack(r)
    except RemoteProtocolError:
        pass
    for d in (data, again):
        if d is None:
            continue
        try:
            o = decode_observation(d, peer="fuzz")
        except RemoteProtocolError:
            continue
        assert decode_observation(pack({**o.body(), "sig": o.sig})) == o
        core = _registry_core()
        core.on_observation(o.observer, d, NOW)
        core.on_observation_sync_reply("fuzz", b"e" * 8, 1, False, [d], NOW)


@target("registry_gossip", "registry devices topic: record / heartbeat / goodbye envelopes (RegistryCore)")
def registry_gossip(data: bytes) -> None:
    core = _registry_core()
    core.on_device_gossip(FUZZ_PEER, data, NOW)
    try:
        raw = unpack(data, max_size=8192)
    except RemoteProtocolError:
        return
    if isinstance(raw, dict) and isinstance(raw.get("record"), bytes):
        rec = _record_resigned(raw["record"])
        try:   # the envelope's other fields may not re-encode (NaN): then there is nothing to re-sign
            again = None if rec is None else pack({**raw, "record": rec})
        except LocalProtocolError:
            again = None
        if again is not None:
            core.on_device_gossip(FUZZ_PEER, again, NOW)


@target("registry_direct", "registry direct stream: ping / get / sync / osync requests (direct.serve)")
def registry_direct(data: bytes) -> None:
    """Input: the request stream's bytes (length-prefixed frames, as stream_frames)."""
    core = _registry_core()
    raw = _ByteStream(data, [])
    fs = Libp2pFramedStream(raw, max_frame=direct.MAX_REQUEST)
    trio.run(direct.serve, fs, lambda: None if len(data) % 2 else b"record", lambda: False,
             core.serve_sync, core.serve_observation_sync)
    for frame in raw.written:
        unpack(frame[4:])   # whatever it answered is valid msgpack


_ONION_IDENTITY = SigningKey(b"\x07" * 32)
ONION_SECRET, ONION_PUBLIC = onion_keypair(b"\x09" * 32)


@target("onion_relay_stream", "onion relay stream: framed cells from a neighbour (CellFramer, RelayCore)")
def onion_relay_stream(data: bytes) -> None:
    """Input: the bytes a neighbour writes on /fognode/onion/1.0.0 (u16-framed 4096-byte
    cells), fed whole and then split in two, to a relay that holds ONION_SECRET, cell by cell
    (`feed`, `receive`) and as the daemon reads a link (`feed_runs`, `receive_run` for a run of
    one circuit's RELAY cells). The relay must never raise: bad frames become PeerFaults, cells
    out of protocol are dropped."""
    for runs in (False, True):
        for split in (len(data), len(data) // 2):
            ids = CircIdAllocator("relay")
            relay = RelayCore("relay", bytes(_ONION_IDENTITY.verify_key), {ONION_PUBLIC: ONION_SECRET}, ids)
            framer = CellFramer()
            for part in (data[:split], data[split:]):
                for item in (framer.feed_runs(part) if runs else framer.feed(part)):
                    if isinstance(item, CellError):
                        acts = relay.garbage("peer", item)
                    elif isinstance(item, RelayRun):
                        acts = relay.receive_run("peer", item, 1000.0)
                    else:
                        acts = relay.receive("peer", item, 1000.0)
                    for a in acts:
                        if isinstance(a, SendCell):
                            a.cell.frame()
            relay.tick(2000.0)
            relay.link_failed("peer", 2000.0)


@target("monitor_status", "monitor status topic (NodeStatus.decode)")
def monitor_status(data: bytes) -> None:
    st = NodeStatus.decode(data, "fuzz")
    assert NodeStatus.decode(st.encode(), "fuzz") == st


# ---- the control socket -------------------------------------------------------------------------

class _FuzzMethods:
    """Methods with every parameter shape the daemon's RPC methods use (methods.py docstring)."""

    @rpc_method("fuzz.scalars")
    async def scalars(self, a: int, b: float = 0.0, c: str = "", d: bool = False) -> list[Any]:
        """Echo the scalars."""
        return [a, b, c, d]

    @rpc_method("fuzz.containers")
    async def containers(self, tags: list[str], weights: dict[str, float] | None = None,
                         nums: list[int] | None = None) -> dict[str, Any]:
        """Echo the containers."""
        return {"tags": tags, "weights": weights, "nums": nums}

    @rpc_method("fuzz.choice")
    async def choice(self, mode: Literal["a", "b", "c"] = "a", *, limit: int | None = None,
                     anything: Any = None) -> dict[str, Any]:
        """Echo the choice."""
        return {"mode": mode, "limit": limit, "anything": anything}


_rpc_server: RpcServer | None = None


def _server() -> RpcServer:
    global _rpc_server
    if _rpc_server is None:
        table = MethodTable()
        table.add_object(_FuzzMethods(), "node")
        _rpc_server = RpcServer(table, Path("/tmp/fognode-fuzz-unbound.sock"), CollectorRegistry())
    return _rpc_server


@target("rpc_line", "control socket: one request line (RpcServer.handle_line)", expected=())
def rpc_line(data: bytes) -> None:
    reply = trio.run(_server().handle_line, data.split(b"\n", 1)[0])
    if reply is None:
        return
    out = json.loads(reply)
    for r in out if isinstance(out, list) else [out]:
        assert r["jsonrpc"] == "2.0" and "id" in r and (("result" in r) != ("error" in r)), r
        if "error" in r:
            assert isinstance(r["error"]["code"], int) and r["error"]["message"], r
            assert r["error"]["code"] != INTERNAL_ERROR, f"internal error: {r['error']}"
