"""The `fl` role: a thin trio adapter around the sans-IO core (session.py).

Wire: gossip topic `fognode/fl/sessions/1` (announcements naming the session's coordinators,
opt-ins, plans, results, failures, session ends), stream `/fognode/fl/update/1.0.0` (updates in: header frame, raw chunks, ack),
`/fognode/fl/model/1.0.0` (global models out: request, response with tensor headers, raw
chunks) and `/fognode/fl/secagg/1.0.0` (one secure-aggregation message per stream, both ways
between a participant and the round's aggregator: envelope frame, byte frames, ack; see
secagg_round.py). Only `ctx.overlay` is used. Task loading, local training and aggregation run in worker
threads (`trio.to_thread.run_sync`), so the node keeps serving while it trains; torch is only
imported there, never when this module is imported.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import trio
from prometheus_client import Counter, Histogram

from fognode.node.errors import RemoteProtocolError, RpcError, StreamClosed
from fognode.node.events import Event
from fognode.node.metrics import metric
from fognode.node.overlay import FramedStream, GossipMessage as OverlayGossip
from fognode.node.protocol import Protocol
from fognode.node.rpc.methods import rpc_method
from fognode.node.wire import digest, unpack
from fognode.protocols.fl import errors as E
from fognode.protocols.fl import secagg_round
from fognode.protocols.fl.actions import (
    Action, Aggregate, AggregateSum, Emit, FetchModel, MessageRefused, PayRewards, PrepareTask,
    Publish, ReportOutcome, SaveModel, SendSecAgg, SendUpdate, Train, UpdateRefused)
from fognode.protocols.fl.errors import SessionRejected
from fognode.protocols.fl.events import TrainingRoundCompleted
from fognode.protocols.fl.messages import (
    MAX_COORDINATORS, Ack, DeviceFacts, ModelRequest, ModelResponse, PrivacyOptions,
    SelectionCriteria, SessionSpec, UpdateHeader, decode_gossip, encode_gossip)
from fognode.protocols.fl.modelstore import load_model, save_model
from fognode.protocols.fl.prepared import PreparedTask, TaskKey, init_seed_of
from fognode.protocols.fl.receipts import VERIFIER, issue_ledger_receipts, reward_of
from fognode.protocols.fl.selection import DeviceCandidate
from fognode.protocols.fl.session import FlCore, build_strategy
from fognode.protocols.fl.strategies.base import StrategyError
from fognode.protocols.fl.task_process import TaskProcess
from fognode.protocols.fl.tasks import TaskError
from fognode.protocols.fl.tensors import TensorDecoder, TensorRejected, encode_tensor, params_hash

log = logging.getLogger("fognode.fl")

MODEL_STREAM = "/fognode/fl/model/1.0.0"
UPDATE_STREAM = "/fognode/fl/update/1.0.0"
SECAGG_STREAM = "/fognode/fl/secagg/1.0.0"
TOPIC = "fognode/fl/sessions/1"
MAX_CONTROL_FRAME = 64 * 1024
MAX_GOSSIP = 512 * 1024
MIB = 1 << 20
SECAGG_ATTEMPTS = 4          # sends of one SecAgg message while the receiver lacks the plan
SECAGG_RETRY_DELAY = 0.25    # seconds, times the attempt number


@dataclass(frozen=True)
class FlConfig:
    tasks: list[str] = field(default_factory=lambda: ["synthetic", "synthetic_mlp"])
    max_model_bytes: int = 256 * MIB      # largest model/update accepted (bytes on the wire)
    chunk_size: int = MIB                 # tensor chunk (one stream frame), 1 KiB..4 MiB
    default_deadline: float = 60.0        # seconds per round attempt when fl.start gives none
    optin_seconds: float = 5.0            # how long a starter collects opt-ins before round 1
    data_seed: int = 0                    # seed of this node's task data (synthetic tasks)
    data_index: int = -1                  # this node's data index; -1 = derived from the peer id
    capabilities: list[str] = field(default_factory=list)   # what this node offers (e.g. "gpu")
    tick_interval: float = 0.25           # seconds between deadline checks
    republish_interval: float = 2.0       # seconds between re-gossiping the current plan
    stream_timeout: float = 120.0         # bound on one model or update transfer
    aggregation_threads: int = 1          # aggregations (and model saves) run at once
    torch_threads: int = 1                # torch intra-op threads in the task process (0 =
                                          # torch's default); 1 is fastest for small models
    training_nice: int = 0                # how much lower the task process's CPU priority is
                                          # (0..19): raise it where the owner's work comes first
    coordinator_fallbacks: int = 2        # fallback coordinators named in the announcements of
                                          # sessions this node starts (0..16; 0 = none)


class FlRole(Protocol):
    """Serverless federated learning: coordinator, participant and aggregator in one role."""

    name = "fl"
    Config = FlConfig
    stream_ids = (MODEL_STREAM, UPDATE_STREAM, SECAGG_STREAM)
    topics = (TOPIC,)

    def __init__(self, ctx: Any, config: FlConfig) -> None:
        super().__init__(ctx, config)
        if not 1024 <= config.chunk_size <= 4 * MIB:
            from fognode.node.errors import ConfigError
            raise ConfigError("must be between 1024 and 4194304", key="protocols.fl.chunk_size")
        if not 0 <= config.coordinator_fallbacks <= MAX_COORDINATORS:
            from fognode.node.errors import ConfigError
            raise ConfigError(f"must be between 0 and {MAX_COORDINATORS}",
                              key="protocols.fl.coordinator_fallbacks")
        reg = ctx.metrics
        self.m_round = metric(reg, Histogram, "fognode_fl_round_duration_seconds",
                              "Duration of completed rounds this node coordinated",
                              buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900))
        self.m_bytes_in = metric(reg, Counter, "fognode_fl_bytes_received_total",
                                 "Tensor bytes received", ["stream"])
        self.m_bytes_out = metric(reg, Counter, "fognode_fl_bytes_sent_total",
                                  "Tensor bytes sent", ["stream"])
        self.m_rejected = metric(reg, Counter, "fognode_fl_updates_rejected_total",
                                 "Updates refused by this node as aggregator, by reason", ["reason"])
        self.m_rounds = metric(reg, Counter, "fognode_fl_rounds_total",
                               "Rounds this node saw complete", ["role"])
        self.m_train = metric(reg, Histogram, "fognode_fl_training_seconds",
                              "Local training time per round", buckets=(0.1, 0.5, 1, 5, 15, 60, 300))
        self.m_transfer = metric(reg, Histogram, "fognode_fl_transfer_seconds",
                                 "Time to send one update or fetch one model", ["stream"],
                                 buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60))
        self.m_aggregate = metric(reg, Histogram, "fognode_fl_aggregation_seconds",
                                  "Time the strategy took to aggregate one round",
                                  buckets=(0.001, 0.01, 0.1, 0.5, 1, 5, 30))
        self.m_bad_gossip = metric(reg, Counter, "fognode_fl_bad_messages_total",
                                   "Malformed FL messages from peers", ["channel"])
        self.m_refused = metric(reg, Counter, "fognode_fl_messages_refused_total",
                                "Plans and session ends refused (not from the acting coordinator)",
                                ["kind"])
        self.m_task_starts = metric(reg, Counter, "fognode_fl_task_process_starts_total",
                                    "Task processes started (the first, and one after each death)")
        self.m_rewards = metric(reg, Counter, "fognode_fl_rewards_paid_total",
                                "Micro-units minted to participants of rounds this node aggregated")
        self.core: FlCore | None = None
        self._verifier_registered = False
        self._closed = False
        self._save_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._limiter = trio.CapacityLimiter(max(1, config.aggregation_threads))
        if not 0 <= config.training_nice <= 19:
            from fognode.node.errors import ConfigError
            raise ConfigError("must be between 0 and 19", key="protocols.fl.training_nice")
        self.tasks = TaskProcess(torch_threads=config.torch_threads, nice=config.training_nice,
                                 max_frame=2 * config.max_model_bytes + MIB,
                                 on_start=self.m_task_starts.inc)
        index = config.data_index if config.data_index >= 0 else \
            int.from_bytes(digest(ctx.peer_id.encode())[:4], "big") % 1_000_000
        self.data_index = index
        self.model_root = Path(ctx.datadir) / "fl"

    # == the loop ===========================================================================

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.core = FlCore(self.ctx.peer_id, self.ctx.identity, tasks_enabled=set(self.config.tasks),
                           facts=self._facts(), candidate_view=self._candidate,
                           republish_interval=self.config.republish_interval,
                           fl_peers=self._fl_peers,
                           coordinator_fallbacks=self.config.coordinator_fallbacks)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.ctx.overlay.set_stream_handler(UPDATE_STREAM, self._serve_update)
            self.ctx.overlay.set_stream_handler(MODEL_STREAM, self._serve_model)
            self.ctx.overlay.set_stream_handler(SECAGG_STREAM, self._serve_secagg)
            # subscribing again after a restart replaces the previous instance's handler
            await self.ctx.overlay.subscribe(TOPIC, self._on_gossip)
            self._register_verifier()
            self.ctx.services.provide("fl", self)
            task_status.started()
            try:
                while True:
                    await trio.sleep(self.config.tick_interval)
                    if not self._verifier_registered:
                        self._register_verifier()   # the ledger may start after this role
                    self._apply(self.core.tick(self.ctx.clock()))
            finally:
                self._closed = True
                self.ctx.services.withdraw("fl")
                await self.tasks.aclose()

    def _register_verifier(self) -> bool:
        """Teach the ledger (if it runs here) to price "fl_update" receipts."""
        ledger = self.ctx.services.get("ledger")
        if ledger is None or self._verifier_registered:
            return self._verifier_registered
        ledger.register_receipt_verifier(VERIFIER)
        self._verifier_registered = True
        self._use_wallet(ledger)
        return True

    def _use_wallet(self, ledger: Any) -> None:
        """Opt in with the node's default ledger wallet as the address FL rewards go to (the
        identity key stays the payee if the node has no wallet)."""
        from fognode.ledger.errors import WalletError

        try:
            wallet = ledger.default_wallet()
        except WalletError as e:
            log.info("fl: rewards go to this node's identity key: %s", e)
            return
        if self.core is not None:
            self.core.facts = dataclasses.replace(self.core.facts, wallet=wallet)

    async def _pay(self, a: PayRewards) -> None:
        """Mint each accepted participant's share of the round reward (ledger mint orders
        carrying the "fl_update" receipts as evidence; this node's wallet pays the fees)."""
        ledger = self.ctx.services.get("ledger")
        if ledger is None:
            log.info("fl: no ledger on this node: round %d of %s is not paid", a.receipt.round,
                     a.receipt.session_id.hex()[:16])
            return
        self._register_verifier()
        from fognode.ledger.rewards import Allocation

        receipts = issue_ledger_receipts(self.ctx.identity, a.receipt, a.announcement, a.plan,
                                         ledger.genesis.epoch_at(self._now()))
        allocations = [Allocation(r, reward_of(r)) for r in receipts]
        try:
            txs = await ledger.distribute_rewards(allocations)
        except Exception as e:   # not certified, no wallet, rejected evidence: log, keep going
            log.warning("fl: rewards of round %d not paid: %s", a.receipt.round, e)
            return
        self.m_rewards.inc(sum(x.amount for x in allocations))
        log.info("fl: round %d rewards paid in %d mint orders", a.receipt.round, len(txs))

    def health_detail(self) -> dict[str, Any]:
        if self.core is None:
            return {}
        return {"sessions": len(self.core.sessions),
                "running": sum(1 for s in self.core.sessions.values() if not s.state.ended)}

    def _now(self) -> float:
        return self.ctx.clock()

    def _facts(self) -> DeviceFacts:
        import psutil

        charging = True
        try:
            bat = psutil.sensors_battery()
            if bat is not None:
                charging = bool(bat.power_plugged)
        except (AttributeError, NotImplementedError, OSError):
            pass
        return DeviceFacts(region=self.ctx.region, cores=os.cpu_count() or 1,
                           memory_mb=int(psutil.virtual_memory().total // MIB), charging=charging,
                           capabilities=tuple(self.config.capabilities))

    def _fl_peers(self) -> list[tuple[str, DeviceFacts]]:
        """Online devices whose registry record offers the "fl" role (fallback coordinator
        candidates for sessions this node starts; `_candidate` adds the record's facts)."""
        registry = self.ctx.services.get("registry")
        if registry is None:
            return []
        from fognode.protocols.registry.view import Criteria

        return [(rec.peer_id, DeviceFacts(region=rec.profile.region))
                for rec in registry.devices(Criteria(role="fl", online=True))
                if rec.peer_id != self.ctx.peer_id]

    def _candidate(self, peer: str, facts: DeviceFacts) -> DeviceCandidate:
        """A candidate from the registry's record when there is one, else the device's own
        opt-in facts; reputation s (1.0 = average peer) is mapped to s / (1 + s) in [0, 1)."""
        region, cores, mem, charging, online = facts.region, facts.cores, facts.memory_mb, facts.charging, True
        caps = set(facts.capabilities)
        registry = self.ctx.services.get("registry")
        if registry is not None:
            rec = registry.get(peer)
            if rec is not None:
                region = rec.profile.region or region
                cores = rec.caps.cores if rec.caps.cores is not None else cores
                if rec.caps.memory_bytes is not None:
                    mem = rec.caps.memory_bytes // MIB
                if rec.caps.charging is not None:
                    charging = rec.caps.charging
                if rec.caps.gpu:
                    caps.add("gpu")
                online = bool(registry.is_online(peer)) or peer == self.ctx.peer_id
        rep = 0.5
        reputation = self.ctx.services.get("reputation")
        if reputation is not None:
            s = float(reputation.score(peer, "fl"))
            rep = s / (1.0 + s) if s > 0 and math.isfinite(s) else 0.0
        return DeviceCandidate(peer, region, cores, mem, charging, online, rep, tuple(sorted(caps)))

    # == carrying out actions ===============================================================

    def _apply(self, actions: list[Action]) -> None:
        assert self._nursery is not None and self.core is not None
        if self._closed:
            return      # the role stopped; late outcomes of worker threads are dropped
        for a in actions:
            if isinstance(a, Publish):
                self._nursery.start_soon(self._publish, a)
            elif isinstance(a, PrepareTask):
                self._nursery.start_soon(self._prepare, a)
            elif isinstance(a, FetchModel):
                self._nursery.start_soon(self._fetch_model, a)
            elif isinstance(a, Train):
                self._nursery.start_soon(self._train, a)
            elif isinstance(a, SendUpdate):
                self._nursery.start_soon(self._send_update, a)
            elif isinstance(a, Aggregate):
                self._nursery.start_soon(self._aggregate, a)
            elif isinstance(a, SendSecAgg):
                self._nursery.start_soon(self._send_secagg, a)
            elif isinstance(a, AggregateSum):
                self._nursery.start_soon(self._aggregate_sum, a)
            elif isinstance(a, Emit):
                self._emit(a.event)
            elif isinstance(a, ReportOutcome):
                self._report(a)
            elif isinstance(a, MessageRefused):
                self.m_refused.labels(a.kind).inc()
                log.info("fl: refused %s from %s for session %s: %s", a.kind, a.peer,
                         a.session_id.hex()[:16], a.reason)
            elif isinstance(a, UpdateRefused):
                self.m_rejected.labels(a.reason).inc()
                log.info("fl: refused update from %s for session %s: %s", a.peer, a.session_id.hex()[:16], a.reason)
            elif isinstance(a, SaveModel):
                self._nursery.start_soon(self._save, a)
            elif isinstance(a, PayRewards):
                self._nursery.start_soon(self._pay, a)

    def _emit(self, ev: Event) -> None:
        self.ctx.events.publish(ev)
        if isinstance(ev, TrainingRoundCompleted):
            assert self.core is not None
            s = self.core.sessions.get(bytes.fromhex(ev.session_id))
            if s is not None and s.coordinator is not None and s.coordinator.history:
                self.m_round.observe(s.coordinator.history[-1].duration)
                self.m_rounds.labels("coordinator").inc()
            else:
                self.m_rounds.labels("participant").inc()

    def _report(self, a: ReportOutcome) -> None:
        svc = self.ctx.services.get("reputation")
        if svc is None:
            return
        try:
            svc.report_outcome(a.subject, "fl", a.ok, min(max(a.weight, 1e-6), 100.0), a.evidence)
        except Exception as e:   # the reputation service refuses (rate limit, self): log only
            log.debug("fl: reputation report about %s not recorded: %s", a.subject, e)

    async def _publish(self, a: Publish) -> None:
        try:
            await self.ctx.overlay.publish(TOPIC, encode_gossip(a.msg))
        except Exception as e:
            log.warning("fl: publish of %s failed: %s", type(a.msg).__name__, e)

    async def _on_gossip(self, msg: OverlayGossip) -> None:
        if self.core is None or self._closed:
            return
        try:
            m = decode_gossip(unpack(msg.data, max_size=MAX_GOSSIP, what="fl gossip"), peer=msg.origin)
        except RemoteProtocolError as e:
            self.m_bad_gossip.labels("gossip").inc()
            # signed by its origin (the gossip envelope): a rate-limited WARNING, charged to it
            self.ctx.overlay.penalize(msg.origin, str(e), protocol=TOPIC)
            return
        self._apply(self.core.receive(msg.origin, m, self._now()))

    def _task_key(self, task: str, params: dict[str, float], init_seed: int) -> TaskKey:
        return TaskKey.of(task, params, init_seed, data_seed=self.config.data_seed,
                          data_index=self.data_index)

    async def _prepare(self, a: PrepareTask) -> None:
        assert self.core is not None
        try:
            prepared = await self.tasks.prepare(self._task_key(a.task, a.task_params, a.init_seed))
        except TaskError as e:
            self._apply(self.core.task_failed(a.session_id, str(e), self._now()))
            return
        self._apply(self.core.task_ready(a.session_id, prepared, self._now()))

    async def _train(self, a: Train) -> None:
        assert self.core is not None
        s = self.core.sessions.get(a.session_id)
        if s is None or s.prepared is None:
            return
        started = trio.current_time()
        try:
            outcome = await self.tasks.train(s.prepared.key, a.base, a.config, a.seed)
        except TaskError as e:
            log.warning("fl: local training for %s failed: %s", a.session_id.hex()[:16], e)
            return
        self.m_train.observe(trio.current_time() - started)
        self._apply(self.core.trained(a.session_id, a.round, a.try_no, outcome, self._now()))

    async def _aggregate(self, a: Aggregate) -> None:
        assert self.core is not None
        started = trio.current_time()
        try:
            result = await trio.to_thread.run_sync(lambda: a.strategy.aggregate(a.base, list(a.updates)),
                                                   limiter=self._limiter)
            self.m_aggregate.observe(trio.current_time() - started)
        except StrategyError as e:
            self._apply(self.core.aggregated(a.session_id, a.round, a.try_no, a.fallback, None, str(e), self._now()))
            return
        self._apply(self.core.aggregated(a.session_id, a.round, a.try_no, a.fallback, result, "",
                                         self._now(), a.strategy.state_arrays()))

    async def _aggregate_sum(self, a: AggregateSum) -> None:
        assert self.core is not None
        started = trio.current_time()
        try:
            result = await trio.to_thread.run_sync(
                lambda: a.strategy.aggregate_sum(a.base, a.delta_sum, a.total_weight, a.peers,
                                                 num_samples=a.num_samples),
                limiter=self._limiter)
            self.m_aggregate.observe(trio.current_time() - started)
        except StrategyError as e:
            self._apply(self.core.aggregated(a.session_id, a.round, a.try_no, a.fallback, None, str(e), self._now()))
            return
        self._apply(self.core.aggregated(a.session_id, a.round, a.try_no, a.fallback, result, "",
                                         self._now(), a.strategy.state_arrays()))

    async def _save(self, a: SaveModel) -> None:
        assert self.core is not None
        s = self.core.sessions.get(a.session_id)
        if s is None or s.prepared is None:
            return
        task, layout = s.spec.task, s.prepared.layout
        try:
            async with self._save_lock:   # model.json is read-modified-written
                await trio.to_thread.run_sync(lambda: save_model(
                    self.model_root, a.session_id, task, layout, a.params, a.model_hash, final=a.final))
        except OSError as e:
            log.error("fl: cannot save the model of session %s: %s", a.session_id.hex()[:16], e)

    # == streams: updates ===================================================================

    async def _send_update(self, a: SendUpdate) -> None:
        assert self.core is not None
        s = self.core.sessions.get(a.session_id)
        dtype = s.spec.wire_dtype if s is not None else "float32"
        ok, reason = False, ""
        started = trio.current_time()
        try:
            th, chunks = encode_tensor(a.delta, wire_dtype=dtype, chunk_size=self.config.chunk_size)
            with trio.fail_after(self.config.stream_timeout):
                st = await self.ctx.overlay.open_stream(a.to, UPDATE_STREAM)
                try:
                    await st.send(a.header(th).to_wire())
                    for c in chunks:
                        await st.send_bytes(bytes(c))
                    self.m_bytes_out.labels("update").inc(th.nbytes)
                    ack = Ack.decode(await st.recv(max_size=MAX_CONTROL_FRAME), peer=a.to)
                    ok, reason = ack.ok, ack.reason
                finally:
                    await _close(st)
        except trio.TooSlowError:
            reason = "timed out"
        except Exception as e:   # unreachable peer, reset stream, refused: try the next one
            reason = f"{type(e).__name__}: {e}"
        if ok:
            self.m_transfer.labels("update").observe(trio.current_time() - started)
        else:
            log.info("fl: update for round %d to %s not delivered: %s", a.round, a.to, reason)
        self._apply(self.core.update_delivered(a.session_id, a.round, a.try_no, a.fallback, ok, reason,
                                               self._now(), forward=bool(a.members)))

    async def _serve_update(self, st: FramedStream) -> None:
        """Receive one update: admit by header before reading the tensor, then chunks."""
        assert self.core is not None
        peer, core = st.remote_peer, self.core
        with trio.fail_after(self.config.stream_timeout):
            raw = await st.recv(max_size=MAX_CONTROL_FRAME)
            ids = _update_ids(raw)
            if ids is None:
                self.m_bad_gossip.labels("update").inc()
                raise RemoteProtocolError("fl.UpdateHeader: not a header map", peer=peer)
            sid, rnd, try_no, fallback = ids
            admission = core.admit_update(peer, sid, rnd, try_no, fallback)
            why = admission.refusal
            if why is None:
                try:
                    hdr = UpdateHeader.decode(raw, expected_shape=admission.expected_shape,
                                              max_bytes=self.config.max_model_bytes, peer=peer)
                    dec = TensorDecoder(hdr.tensor, peer=peer)
                    for _ in range(hdr.tensor.num_chunks):
                        dec.feed(await st.recv_bytes(max_size=hdr.tensor.chunk_size))
                    values = dec.finish()
                    self.m_bytes_in.labels("update").inc(hdr.tensor.nbytes)
                except TensorRejected as e:
                    why = e.reason
                except RemoteProtocolError:
                    why = "malformed"
                else:
                    why, actions = core.receive_update(peer, hdr, values, self._now())
                    self._apply(actions)
                    await st.send(Ack(why is None, why or "").to_wire())
                    await _close(st)
                    return
            self._apply(core.reject_update(peer, sid, rnd, try_no, why, self._now()))
            try:
                await st.send(Ack(False, why).to_wire())
            except StreamClosed:
                pass
            await _close(st)

    # == streams: secure aggregation ========================================================

    async def _send_secagg(self, a: SendSecAgg) -> None:
        """Carry one SecAgg message. A refusal because the receiver has not seen the round
        plan yet ("unknown round") is retried a few times; a participant whose aggregator
        cannot be reached is told (`secagg_delivered`), and moves to the next aggregator."""
        assert self.core is not None
        env, frames = secagg_round.encode(a.session_id, a.round, a.try_no, a.fallback, a.message,
                                          a.meta, self.config.chunk_size)
        reached, reason = False, ""
        for attempt in range(SECAGG_ATTEMPTS):
            reached, reason = False, ""
            try:
                with trio.fail_after(self.config.stream_timeout):
                    st = await self.ctx.overlay.open_stream(a.to, SECAGG_STREAM)
                    try:
                        await st.send(env)
                        for fr in frames:
                            await st.send_bytes(fr)
                        self.m_bytes_out.labels("secagg").inc(sum(len(fr) for fr in frames))
                        ack = Ack.decode(await st.recv(max_size=MAX_CONTROL_FRAME), peer=a.to)
                        reached, reason = True, "" if ack.ok else ack.reason
                    finally:
                        await _close(st)
            except trio.TooSlowError:
                reason = "timed out"
            except Exception as e:   # unreachable peer, reset stream
                reason = f"{type(e).__name__}: {e}"
            if not (reached and reason == "unknown round") or self._closed:
                break
            await trio.sleep(SECAGG_RETRY_DELAY * (attempt + 1))
        if reason:
            log.info("fl: secagg %s for round %d to %s: %s", type(a.message).__name__, a.round, a.to, reason)
        if a.participant and not reached:
            self._apply(self.core.secagg_delivered(a.session_id, a.round, a.try_no, a.fallback,
                                                   False, reason, self._now()))

    async def _serve_secagg(self, st: FramedStream) -> None:
        """Receive one SecAgg message: envelope, byte frames (bounded), then the core's verdict."""
        assert self.core is not None
        peer = st.remote_peer
        with trio.fail_after(self.config.stream_timeout):
            try:
                env = secagg_round.Envelope.decode(await st.recv(max_size=MAX_CONTROL_FRAME), peer=peer)
                frames: list[bytes] = []
                total = 0
                for _ in range(env.parts):
                    fr = await st.recv_bytes(max_size=4 * MIB)
                    total += len(fr)
                    if total > secagg_round.MAX_BODY:
                        raise RemoteProtocolError("secagg message too large", peer=peer)
                    frames.append(fr)
                msg = secagg_round.decode_body(frames, peer=peer)
            except RemoteProtocolError as e:
                self.m_bad_gossip.labels("secagg").inc()
                self.ctx.overlay.penalize(peer, f"malformed secagg message: {e}",
                                          protocol=SECAGG_STREAM)
                try:
                    await st.send(Ack(False, "malformed").to_wire())
                except StreamClosed:
                    pass
                await _close(st)
                return
            self.m_bytes_in.labels("secagg").inc(total)
            why, actions = self.core.receive_secagg(peer, env.session_id, env.round, env.try_no,
                                                    env.fallback, msg, env.meta, self._now())
            self._apply(actions)
            try:
                await st.send(Ack(why is None, why or "").to_wire())
            except StreamClosed:
                pass
            await _close(st)

    # == streams: models ====================================================================

    async def _serve_model(self, st: FramedStream) -> None:
        assert self.core is not None
        with trio.fail_after(self.config.stream_timeout):
            req = ModelRequest.decode(await st.recv(max_size=MAX_CONTROL_FRAME), peer=st.remote_peer)
            bundle = self.core.model_for(req.session_id, req.model_hash)
            if bundle is None:
                await st.send(ModelResponse(False, "this node does not hold that model", ()).to_wire())
                await _close(st)
                return
            tensors = [("params", bundle.params)] + sorted(bundle.state.items())
            encoded = [(n, *encode_tensor(t, chunk_size=self.config.chunk_size)) for n, t in tensors]
            await st.send(ModelResponse(True, "", tuple((n, h) for n, h, _ in encoded)).to_wire())
            for _, h, chunks in encoded:
                for c in chunks:
                    await st.send_bytes(bytes(c))
                self.m_bytes_out.labels("model").inc(h.nbytes)
            await _close(st)

    async def _fetch_model(self, a: FetchModel) -> None:
        assert self.core is not None
        shape = self.core.expected_shape(a.session_id)
        last = "no source"
        started = trio.current_time()
        for src in a.sources:
            try:
                with trio.fail_after(self.config.stream_timeout):
                    st = await self.ctx.overlay.open_stream(src, MODEL_STREAM)
                    try:
                        await st.send(ModelRequest(a.session_id, a.model_hash).to_wire())
                        resp = ModelResponse.decode(await st.recv(max_size=MAX_CONTROL_FRAME),
                                                    params_shape=shape or (0,),
                                                    max_bytes=self.config.max_model_bytes, peer=src)
                        if not resp.ok:
                            last = f"{src}: {resp.reason}"
                            continue
                        arrays: dict[str, np.ndarray] = {}
                        for name, h in resp.tensors:
                            dec = TensorDecoder(h, peer=src)
                            for _ in range(h.num_chunks):
                                dec.feed(await st.recv_bytes(max_size=h.chunk_size))
                            arrays[name] = dec.finish()
                            self.m_bytes_in.labels("model").inc(h.nbytes)
                    finally:
                        await _close(st)
                params = arrays.pop("params")
                if params_hash(params) != a.model_hash:
                    last = f"{src}: the model does not match its hash"
                    continue
                self.m_transfer.labels("model").observe(trio.current_time() - started)
                self._apply(self.core.model_fetched(a.session_id, a.model_hash, params, arrays, self._now()))
                return
            except trio.TooSlowError:
                last = f"{src}: timed out"
            except Exception as e:
                last = f"{src}: {type(e).__name__}: {e}"
        self._apply(self.core.model_fetch_failed(a.session_id, a.model_hash, last, self._now()))

    # == RPC ================================================================================

    @rpc_method("fl.start")
    async def start(self, task: str, rounds: int = 10, min_participants: int = 2,
                    participants: int = 5, strategy: str = "fedavg",
                    strategy_params: dict[str, float] | None = None,
                    task_params: dict[str, float] | None = None, deadline: float = 0.0,
                    local_epochs: int = 1, lr: float = 0.01, batch_size: int = 10,
                    wire_dtype: Literal["float32", "float16"] = "float32", fallbacks: int = 2,
                    max_retries: int = 3, optin_seconds: float = -1.0, dp_clip: float = 0.0,
                    dp_noise: float = 0.0, dp_delta: float = 1e-5, secagg: bool = False,
                    region: str = "", capabilities: list[str] | None = None,
                    min_reputation: float = 0.0, charging_only: bool = False, min_cores: int = 0,
                    min_memory_mb: int = 0, reward_budget: int = 0,
                    hierarchical: bool = False) -> dict[str, Any]:
        """Start a federated-learning session that this node coordinates; returns its id.

        TASK is an installed task (`synthetic`, `synthetic_mlp`, ...). The session runs ROUNDS
        rounds of PARTICIPANTS selected nodes each, needing MIN_PARTICIPANTS usable updates per
        round within DEADLINE seconds (default from the node config). STRATEGY is fedavg,
        fedprox, fedadam, fedyogi, fedadagrad, median, trimmed_mean, krum, multikrum or bulyan,
        with STRATEGY_PARAMS (e.g. {"mu": 0.1}, {"f": 1}). DP_CLIP > 0 turns on central DP with
        noise multiplier DP_NOISE. SECAGG runs secure aggregation: the aggregator sees only the sum
        of the updates (mean-based strategies only; robust ones get 507). HIERARCHICAL
        aggregates per registry region first (one elected aggregator per region, then a global
        one; mean-based strategies only, robust ones get 502, with SECAGG 507). Selection criteria: REGION, CAPABILITIES, MIN_REPUTATION (0..1),
        CHARGING_ONLY, MIN_CORES, MIN_MEMORY_MB. Errors: 500 bad parameter, 501 task not
        available, 502 strategy, 507 unsupported privacy option.
        """
        assert self.core is not None and self._nursery is not None
        if task not in self.config.tasks:
            raise RpcError(E.FL_UNKNOWN_TASK, f"task {task!r} is not enabled on this node "
                                              f"(enabled: {self.config.tasks})")
        try:
            spec = SessionSpec(
                task=task, rounds=rounds, min_participants=min_participants,
                participants=participants, strategy=strategy,
                strategy_params=dict(strategy_params or {}), task_params=dict(task_params or {}),
                deadline=deadline if deadline > 0 else self.config.default_deadline,
                local_epochs=local_epochs, lr=lr, batch_size=batch_size, wire_dtype=wire_dtype,
                fallbacks=fallbacks, max_retries=max_retries,
                optin_seconds=optin_seconds if optin_seconds >= 0 else self.config.optin_seconds,
                reward_budget=reward_budget,
                privacy=PrivacyOptions(dp_clip, dp_noise, dp_delta, secagg),
                criteria=SelectionCriteria(region, tuple(capabilities or ()), min_reputation,
                                           charging_only, min_cores, min_memory_mb),
                hierarchical=hierarchical)
            # the same checks every receiving node applies to the announcement
            SessionSpec.decode(_fields_of(spec))
        except RemoteProtocolError as e:
            raise RpcError(E.FL_BAD_REQUEST, str(e).replace("fl.SessionSpec: ", "")) from None
        try:
            build_strategy(spec)
        except StrategyError as e:
            code = E.FL_UNSUPPORTED if secagg else E.FL_BAD_STRATEGY
            raise RpcError(code, str(e)) from None
        nonce = os.urandom(16)
        try:
            prepared = await self.tasks.prepare(self._task_key(task, spec.task_params, init_seed_of(nonce)))
        except TaskError as e:
            raise RpcError(E.FL_UNKNOWN_TASK if "installed" in str(e) else E.FL_BAD_REQUEST, str(e)) from None
        if prepared.layout.size * 4 > self.config.max_model_bytes:
            raise RpcError(E.FL_BAD_REQUEST, f"the model has {prepared.layout.size} parameters, over "
                                             f"this node's max_model_bytes {self.config.max_model_bytes}")
        if secagg and (prepared.layout.size + 1) * 8 > secagg_round.MAX_BODY - (1 << 20):
            raise RpcError(E.FL_BAD_REQUEST, f"the model has {prepared.layout.size} parameters: its "
                                             f"masked secure-aggregation input (8 bytes each) is over "
                                             f"the {secagg_round.MAX_BODY >> 20} MiB limit")
        now = self._now()
        ann = self.core.new_announcement(spec, prepared, nonce, now)
        try:
            actions = self.core.start_session(ann, prepared, now)
        except SessionRejected as e:
            raise RpcError(E.FL_BAD_REQUEST, str(e)) from None
        self._apply(actions)
        return {"session_id": ann.session_id.hex(), "initial_model_hash": ann.initial_model_hash.hex(),
                "parameters": prepared.layout.size}

    def _sid(self, session: str) -> bytes:
        try:
            sid = bytes.fromhex(session)
        except ValueError:
            sid = b""
        if len(sid) != 32:
            raise RpcError(E.FL_BAD_REQUEST, f"session id must be 64 hex characters, got {session!r}")
        assert self.core is not None
        if sid not in self.core.sessions:
            raise RpcError(E.FL_UNKNOWN_SESSION, f"no session {session} on this node")
        return sid

    @rpc_method("fl.status")
    async def status(self, session: str) -> dict[str, Any]:
        """State of SESSION (running, completed, failed or stopped), its history per round
        (loss and accuracy of the round's base model on the participants' data, participants,
        accepted, dropped and rejected peers), the DP epsilon spent, the session's coordinators
        (starter first, then its fallbacks) and the acting one. Error 503: unknown."""
        assert self.core is not None
        sid = self._sid(session)
        st = self.core.status(sid)
        final = self._final_path(sid)
        st["model_file"] = str(final) if final is not None else None
        return st

    @rpc_method("fl.sessions")
    async def sessions(self) -> list[dict[str, Any]]:
        """Every session this node knows: id, task, state, its role, rounds done."""
        assert self.core is not None
        return self.core.session_list()

    @rpc_method("fl.stop")
    async def stop(self, session: str) -> dict[str, Any]:
        """Stop SESSION (only on its acting coordinator: the starter, or the fallback coordinator
        that took it over); the final model is saved in the data dir with its hash. Errors: 503
        unknown session, 504 not the acting coordinator."""
        assert self.core is not None
        sid = self._sid(session)
        try:
            actions = self.core.stop_session(sid, self._now())
        except PermissionError as e:
            raise RpcError(E.FL_NOT_COORDINATOR, f"only the acting coordinator can stop a session: {e}") from None
        except ValueError as e:
            raise RpcError(E.FL_BAD_REQUEST, str(e)) from None
        saves = [a for a in actions if isinstance(a, SaveModel)]
        self._apply([a for a in actions if not isinstance(a, SaveModel)])
        for a in saves:
            await self._save(a)
        st = self.core.status(sid)
        final = self._final_path(sid)
        return {"session_id": session, "state": st["state"], "rounds_done": st["rounds_done"],
                "model_hash": st["model_hash"], "model_file": str(final) if final else None}

    def _final_path(self, sid: bytes) -> Path | None:
        assert self.core is not None
        s = self.core.sessions[sid]
        p = self.model_root / sid.hex() / f"final-{s.latest_model.hex()[:16]}.npy"
        return p if p.exists() else None

    @rpc_method("fl.export")
    async def export(self, session: str, path: str) -> dict[str, Any]:
        """Write SESSION's latest global model to PATH (absolute) as a torch state dict file
        (`torch.load(PATH)` gives name -> tensor). Errors: 505 no model here, 506 cannot write."""
        assert self.core is not None
        sid = self._sid(session)
        s = self.core.sessions[sid]
        target = Path(path)
        if not target.is_absolute():
            raise RpcError(E.FL_BAD_REQUEST, f"path must be absolute, got {path!r}")
        if s.prepared is None:
            raise RpcError(E.FL_NO_MODEL, "this node has not loaded the session's task")
        bundle = self.core.model_for(sid, s.latest_model)
        params = bundle.params if bundle is not None else None
        if params is None:
            final = self._final_path(sid)
            if final is None:
                raise RpcError(E.FL_NO_MODEL, "this node holds no model of that session")
            params = await trio.to_thread.run_sync(load_model, final, s.latest_model)
        prepared: PreparedTask = s.prepared
        try:
            await self.tasks.export(prepared.key, params, target)
        except TaskError as e:
            raise RpcError(E.FL_EXPORT_FAILED, f"cannot export the model: {e}") from None
        except OSError as e:
            raise RpcError(E.FL_EXPORT_FAILED, f"cannot write {path}: {e.strerror or e}") from None
        return {"path": str(target), "model_hash": s.latest_model.hex(), "rounds_done": s.rounds_done,
                "tensors": [t.name for t in prepared.layout.tensors]}


def _fields_of(spec: SessionSpec) -> Any:
    from fognode.node.wire import Fields, pack

    return Fields(unpack(pack(spec.to_wire())), "fl.SessionSpec")


def _update_ids(raw: Any) -> tuple[bytes, int, int, int] | None:
    if not isinstance(raw, dict):
        return None
    sid, rnd, try_no, fb = raw.get("session"), raw.get("round"), raw.get("try"), raw.get("fallback")
    if not (isinstance(sid, bytes) and len(sid) == 32):
        return None
    for x in (rnd, try_no, fb):
        if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x <= 100_000:
            return None
    return sid, rnd, try_no, fb  # type: ignore[return-value]


async def _close(st: FramedStream) -> None:
    try:
        await st.close()
    except Exception:
        pass
