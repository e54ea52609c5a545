"""Wire counters for the ledger benchmark's daemons (`bench.ledger --count-wire`), bench-only.

`install(path)` runs in a benchmark daemon before it starts (tools/bench/ledger.py's runner,
never in a real node): it wraps a few methods of our py-libp2p subclasses and our framed
stream to count, per daemon, what goes over the wire, and a thread writes the counters to
`path` (JSON) every WRITE_EVERY seconds, so the benchmark can read them before and after its
burst:
- `yamux_out.<type>`: yamux frames written (data, window_update, ping, go_away), by
  `_write_frame` alone or in a write batch of `_write_frames` (each frame one Noise message);
  `yamux_out_bytes`;
- `frames_out.<protocol id>`: length-prefixed frames our streams sent (order stream requests
  and replies, sync), `Libp2pFramedStream.send_bytes` and `send_frames`; `frame_writes.<protocol
  id>`: the muxer writes that carried them (one per send_bytes, one or more per send_frames);
- `stream_opens.<protocol id>`: streams this daemon opened (`Libp2pOverlay.open_stream`);
- `pubsub_in.messages`: pubsub messages received (every copy, as its RPC is parsed),
  `pubsub_in.first`: those not seen before (when their task runs);
- `pubsub_in.<ihave|iwant|idontwant|graft|prune>`: control entries received; `pubsub_in.rpcs`:
  RPCs with a control part.
- `ledger.<what>`: the ledger's work per node (in the module's globals its callers look up):
  `signed_orders_built` (each packs an order body and hashes it: signing and every decode),
  `cert_decodes.<gossip|order|sync>` (certificates decoded from a gossip batch, from an order
  request's `prev`, from a sync response) and `cert_decodes_full.<site>` (those the memo,
  ledger/certmemo.py, did not answer: a full decode each), `sync_skipped_stored` (pulled
  certificates skipped undecoded as the very ones stored here: sync.py), `sig_checks` (check_signature calls) and
  `sig_verifies` (those the cache did not answer: an Ed25519 verification each),
  `replica.<applied|duplicate|queued|refused>` (certificates the replica received, by outcome),
  `orders_validated` (orders this node's validator decided);
- `trio.task_steps`: trio task steps (scheduler runs of a task), `trio.tasks_spawned`: tasks
  started; counted by a trio Instrument added to the daemon's `trio.run`; `steps_by_task.<the
  task function's name>`: the steps by task (the bench prints the 12 largest).
The wrappers add a dictionary increment per call; the CPU figures of a counting run are not
comparable with a run without it.
"""
from __future__ import annotations

import collections
import json
import os
import threading
import time
from typing import Any

import trio

WRITE_EVERY = 0.25
_YAMUX_TYPES = {0: "data", 1: "window_update", 2: "ping", 3: "go_away"}


def install(path: str) -> None:
    from fognode.ledger import writer as ledger_writer
    from fognode.node import host, p2pfix_yamux, scored_pubsub, streams

    counts: collections.Counter[str] = collections.Counter()

    orig_write = p2pfix_yamux.QuickYamux._write_frame

    async def _write_frame(self: Any, data: bytes) -> None:
        counts["yamux_out." + _YAMUX_TYPES.get(data[1] if len(data) > 1 else -1, "other")] += 1
        counts["yamux_out_bytes"] += len(data)
        await orig_write(self, data)
    p2pfix_yamux.QuickYamux._write_frame = _write_frame

    orig_write_many: Any = getattr(p2pfix_yamux.QuickYamux, "_write_frames", None)   # session 24 on

    async def _write_frames(self: Any, frames: list[bytes]) -> None:
        for data in frames:     # whole frames: a stream's write batch, one TCP write
            counts["yamux_out." + _YAMUX_TYPES.get(data[1] if len(data) > 1 else -1, "other")] += 1
            counts["yamux_out_bytes"] += len(data)
        await orig_write_many(self, frames)
    if orig_write_many is not None:
        p2pfix_yamux.QuickYamux._write_frames = _write_frames

    orig_send = streams.Libp2pFramedStream.send_bytes

    async def send_bytes(self: Any, data: bytes) -> None:
        counts["frames_out." + self.protocol_id] += 1
        counts["frame_writes." + self.protocol_id] += 1
        await orig_send(self, data)
    streams.Libp2pFramedStream.send_bytes = send_bytes

    orig_frames: Any = getattr(streams, "send_frames", None)     # absent before session 24

    async def send_frames(stream: Any, frames: list[bytes]) -> None:
        counts["frames_out." + stream.protocol_id] += len(frames)
        counts["frame_writes." + stream.protocol_id] += 1     # one per COALESCE_BYTES, in practice 1
        await orig_frames(stream, frames)
    if orig_frames is not None:
        streams.send_frames = send_frames
        ledger_writer.send_frames = send_frames     # imported there by name

    orig_open = host.Libp2pOverlay.open_stream

    async def open_stream(self: Any, peer: str, protocol: str, *args: Any, **kwargs: Any) -> Any:
        counts["stream_opens." + protocol] += 1
        return await orig_open(self, peer, protocol, *args, **kwargs)
    host.Libp2pOverlay.open_stream = open_stream

    orig_push = scored_pubsub.ScoredPubsub.push_msg

    async def push_msg(self: Any, msg_forwarder: Any, msg: Any) -> None:
        if msg_forwarder != self.my_id and not self._is_msg_seen(msg):
            counts["pubsub_in.first"] += 1
        await orig_push(self, msg_forwarder, msg)
    scored_pubsub.ScoredPubsub.push_msg = push_msg

    orig_subscribed = scored_pubsub.ScoredPubsub._is_subscribed_to_msg

    def _is_subscribed_to_msg(self: Any, msg: Any) -> bool:
        if scored_pubsub._READING_FROM.get() is not None:    # a copy read from a peer
            counts["pubsub_in.messages"] += 1
        return bool(orig_subscribed(self, msg))
    scored_pubsub.ScoredPubsub._is_subscribed_to_msg = _is_subscribed_to_msg

    orig_rpc = scored_pubsub.ScoredGossipSub.handle_rpc

    async def handle_rpc(self: Any, rpc: Any, sender_peer_id: Any) -> None:
        c = rpc.control
        counts["pubsub_in.rpcs"] += 1
        for kind in ("ihave", "iwant", "idontwant", "graft", "prune"):
            n = len(getattr(c, kind))
            if n:
                counts["pubsub_in." + kind] += n
        await orig_rpc(self, rpc, sender_peer_id)
    scored_pubsub.ScoredGossipSub.handle_rpc = handle_rpc

    _count_ledger_work(counts)

    class _Steps(trio.abc.Instrument):
        def before_task_step(self, task: Any) -> None:
            counts["trio.task_steps"] += 1
            counts["steps_by_task." + ".".join(task.name.split(".")[-2:])[:60]] += 1

        def task_spawned(self, task: Any) -> None:
            counts["trio.tasks_spawned"] += 1

    orig_run = trio.run

    def run(*args: Any, **kwargs: Any) -> Any:
        kwargs["instruments"] = [*kwargs.get("instruments", ()), _Steps()]
        return orig_run(*args, **kwargs)
    trio.run = run

    def writer() -> None:
        while True:
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(dict(counts), f)
            os.replace(tmp, path)
            time.sleep(WRITE_EVERY)
    threading.Thread(target=writer, name="bench-wire-counters", daemon=True).start()


def _count_ledger_work(counts: collections.Counter[str]) -> None:
    """The `ledger.*` counters (module docstring)."""
    from fognode.ledger import certcheck, certgossip, certmemo, messages, quorum, replica, service, sync, validator
    from fognode.ledger.actions import CertificateRefused, Commit, Queued

    orig_post_init = messages.SignedOrder.__post_init__

    def __post_init__(self: Any) -> None:
        counts["ledger.signed_orders_built"] += 1
        orig_post_init(self)
    messages.SignedOrder.__post_init__ = __post_init__    # type: ignore[method-assign]

    for module, site in ((certgossip, "gossip"), (service, "order"), (sync, "sync")):
        def decode(raw: Any, *, peer: str | None = None, _site: str = site) -> Any:
            misses = certmemo.MEMO.misses
            try:
                return certmemo.decode_certificate_once(raw, peer=peer)
            finally:
                counts["ledger.cert_decodes." + _site] += 1
                if certmemo.MEMO.misses != misses:
                    counts["ledger.cert_decodes_full." + _site] += 1
        module.decode_certificate_once = decode    # type: ignore[attr-defined]

    orig_stored = sync.stored_already

    def stored_already(store: Any, raw: Any) -> bool:
        skipped = orig_stored(store, raw)
        counts["ledger.sync_skipped_stored"] += skipped
        return skipped
    sync.stored_already = stored_already    # type: ignore[attr-defined]

    orig_check = quorum.check_signature

    def check_signature(pubkey: bytes, message: bytes, signature: bytes) -> bool:
        counts["ledger.sig_checks"] += 1
        return orig_check(pubkey, message, signature)
    for module in (quorum, certcheck, certgossip, messages):
        module.check_signature = check_signature    # type: ignore[attr-defined]

    orig_open = quorum.crypto_sign_open

    def crypto_sign_open(signed: bytes, pk: bytes) -> bytes:
        counts["ledger.sig_verifies"] += 1
        return orig_open(signed, pk)
    quorum.crypto_sign_open = crypto_sign_open

    orig_receive = replica.Replica.receive

    def receive(self: Any, peer: str, cert: Any) -> Any:
        dups = self.duplicates
        out = orig_receive(self, peer, cert)
        outcome = ("applied" if any(isinstance(a, Commit) for a in out) else
                   "duplicate" if self.duplicates > dups else
                   "queued" if any(isinstance(a, Queued) for a in out) else
                   "refused" if any(isinstance(a, CertificateRefused) for a in out) else "other")
        counts["ledger.replica." + outcome] += 1
        return out
    replica.Replica.receive = receive    # type: ignore[method-assign]

    orig_validate = validator.Validator.receive

    def validate(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["ledger.orders_validated"] += 1
        return orig_validate(self, *args, **kwargs)
    validator.Validator.receive = validate    # type: ignore[method-assign]


def read(path: str) -> dict[str, int]:
    """The counters a daemon wrote last ({} if none yet)."""
    try:
        with open(path) as f:
            return dict(json.load(f))
    except (OSError, ValueError):
        return {}
