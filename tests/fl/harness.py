"""In-memory harness: N FL cores with real tasks, real local training, real strategies and
the real wire codecs (gossip envelopes, tensor chunks), under a simulated clock.

Actions are carried out through the role's dispatch table (protocols/fl/dispatch.py) by
`SimActions`. What it replaces is only the transport: gossip is delivered to every live node (optionally
dropping a share of messages), streams are function calls between cores through the same
encoders/decoders the role uses. Nodes can be killed (they stop receiving, ticking and
serving) and can be made Byzantine (their update deltas are replaced before encoding).
The network can be split into groups (`partition`) and healed: gossip, update and model
streams reach only the nodes of the sender's group, as in a real split.
"""
from __future__ import annotations

import dataclasses
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack
import numpy as np
from nacl.signing import SigningKey

from fognode.node.peerid import peer_id_from_pubkey
from fognode.node.wire import pack
from fognode.protocols.fl.actions import (
    Action, Aggregate, AggregateSum, Emit, FetchModel, MessageRefused, PayRewards, PrepareTask, Publish,
    PushResult, ReportOutcome, RoundJudged, SaveModel, SendSecAgg, SendUpdate, Train, UpdateRefused)
from fognode.protocols.fl.dispatch import carry_out
from fognode.protocols.fl.messages import (
    DeviceFacts, RoundPlan, SessionEnded, SessionSpec, UpdateHeader, decode_gossip, encode_gossip)
from fognode.protocols.fl.secagg import round as secagg_round
from fognode.protocols.fl.secagg.messages import MaskedInput, UnmaskRequest
from fognode.protocols.fl.session.core import FlCore
from fognode.protocols.fl.session.election import aggregator_order, regional_orders
from fognode.protocols.fl.session.selection import DeviceCandidate
from fognode.protocols.fl.strategies.base import AggregateResult, StrategyError
from fognode.protocols.fl.tasks import TaskError
from fognode.protocols.fl.training.prepared import PreparedTask, init_seed_of, prepare_task, train_round
from fognode.protocols.fl.transfer.tensors import (
    TensorDecoder, TensorHeader, TensorRejected, decode_chunks, decode_header, encode_tensor,
    tensor_hash)

MAX_BYTES = 64 << 20


def wire(obj_bytes: bytes) -> Any:
    return msgpack.unpackb(obj_bytes, raw=False, strict_map_key=True)


@dataclass
class SimNode:
    index: int
    key: SigningKey
    core: FlCore
    alive: bool = True
    byzantine: Callable[[np.ndarray], np.ndarray] | None = None
    claim_samples: int | None = None        # a Byzantine node may lie about its sample count
    drop_aggregate: bool = False            # dies at the moment it would aggregate
    hold_updates: bool = False              # a straggler: its updates are parked in `held`
    held: list[SendUpdate] = field(default_factory=list)
    never_trains: bool = False              # a straggler that never finishes local training
    hold_prepare: bool = False              # a slow task load: its PrepareTask parks in `prepares`
    prepares: list[PrepareTask] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    reports: list[ReportOutcome] = field(default_factory=list)
    refused: list[UpdateRefused] = field(default_factory=list)
    payments: list[PayRewards] = field(default_factory=list)     # rounds it would mint
    judged: list[RoundJudged] = field(default_factory=list)      # receipts of rounds it trained for
    pushes: list[PushResult] = field(default_factory=list)       # result pushes (not carried: lost)
    refused_messages: list[MessageRefused] = field(default_factory=list)
    saved: dict[bytes, np.ndarray] = field(default_factory=dict)
    aggregations: list[Aggregate] = field(default_factory=list)   # what it asked a strategy
    final: list[bytes] = field(default_factory=list)
    trained_rounds: int = 0

    @property
    def peer(self) -> str:
        return self.core.me


class Sim:
    def __init__(self, n: int, *, data_seed: int = 7, drop: float = 0.0, rng_seed: int = 0,
                 tasks: set[str] | None = None, regions: list[str] | None = None,
                 deadline_hint: float = 10.0, coordinator_fallbacks: int = 2) -> None:
        self.now = 1000.0
        self.data_seed = data_seed
        self.drop = drop
        self.rng = random.Random(rng_seed)
        self.queue: deque[tuple[SimNode, Action]] = deque()
        self.nodes: list[SimNode] = []
        self.published = 0
        # fault injection: the elected aggregator of a round (never node 0, the usual
        # coordinator) dies when the plan is out, or when it is about to aggregate
        self.kill_planned_aggregator_from_round: int | None = None
        self.kill_aggregating_from_round: int | None = None
        self.killed: list[tuple[int, str]] = []
        # secure aggregation faults: in this round, the first participant (never node 0, never
        # the aggregator) to send its masked input dies right after it; and per (round, try),
        # how many participants ignore the aggregator's unmask request
        self.kill_after_masked_round: int | None = None
        self.kill_after_masked_count = 1
        self.silent_unmask: dict[tuple[int, int], int] = {}
        self.secagg_frames = 0
        # hierarchical sessions: every update sent (participants' and regional forwards), and
        # in this round the primary regional aggregator of one region (never node 0, never the
        # global primary) dies when the plan is out
        self.sent_updates: list[tuple[str, SendUpdate]] = []
        # every update send carried out: (time, sender, the send, its outcome: "" delivered)
        self.send_log: list[tuple[float, str, SendUpdate, str]] = []
        self.kill_regional_aggregator_round: int | None = None
        # coordinator failover: the starter (node 0) dies right after publishing its first
        # plan of this round
        self.kill_starter_at_round: int | None = None
        # transient faults: every update send fails as unreachable while `now` is before this
        # (an overloaded network: the aggregators are alive but streams cannot be opened)
        self.sends_fail_until: float | None = None
        self.failed_sends = 0
        # this many SessionEnded messages are lost (for every receiver)
        self.lose_ends = 0
        # a network split: node index -> group number (None: one network)
        self.groups: dict[int, int] | None = None
        # gossip held back (delivered late by `release`): messages `hold` says True to
        self.hold: Callable[[SimNode, Any], bool] | None = None
        self.held: list[tuple[SimNode, Publish]] = []
        # gossip a receiver misses: messages `deaf(receiver, msg)` says True to never reach it
        self.deaf: Callable[[SimNode, Any], bool] | None = None
        # called after each gossip message was delivered to the live nodes
        self.after_publish: Callable[[SimNode, Any], None] | None = None
        for i in range(n):
            key = SigningKey(bytes([i + 1]) * 32)
            peer = peer_id_from_pubkey(bytes(key.verify_key))
            facts = DeviceFacts(region=(regions[i] if regions else "eu"), cores=2, memory_mb=2048)
            core = FlCore(peer, key, tasks_enabled=tasks if tasks is not None else {"synthetic", "synthetic_mlp"},
                          facts=facts, candidate_view=self._view, republish_interval=2.0,
                          fl_peers=self._fl_peers, coordinator_fallbacks=coordinator_fallbacks)
            self.nodes.append(SimNode(i, key, core))
        self.by_peer = {nd.peer: nd for nd in self.nodes}

    # the registry's view: killed nodes show offline
    def _view(self, peer: str, facts: DeviceFacts) -> DeviceCandidate:
        nd = self.by_peer.get(peer) if hasattr(self, "by_peer") else None
        return DeviceCandidate(peer, facts.region, facts.cores, facts.memory_mb, facts.charging,
                               online=nd.alive if nd is not None else True,
                               capabilities=facts.capabilities)

    # the registry's devices offering fl: every live node
    def _fl_peers(self) -> list[tuple[str, DeviceFacts]]:
        return [(nd.peer, nd.core.facts) for nd in getattr(self, "nodes", []) if nd.alive]

    # -- driving ------------------------------------------------------------------------

    def partition(self, groups: list[list[int]]) -> None:
        """Split the network: a node reaches only the nodes of its own group."""
        self.groups = {i: g for g, members in enumerate(groups) for i in members}

    def heal(self) -> None:
        self.groups = None

    def release(self, pick: Callable[[Any], bool] = lambda msg: True) -> None:
        """Deliver the held gossip messages `pick` chooses, now."""
        keep, hold, self.hold = [], self.hold, None
        for nd, act in self.held:
            if pick(act.msg):
                SimActions(self, nd).publish(act)
                self._run(nd, [])
            else:
                keep.append((nd, act))
        self.held, self.hold = keep, hold

    def finish_prepare(self, nd: SimNode) -> None:
        """The parked task loads of `nd` finish now (and later ones are no longer parked)."""
        nd.hold_prepare = False
        for act in nd.prepares:
            SimActions(self, nd).prepare_task(act)
        nd.prepares.clear()
        self._run(nd, [])

    def reaches(self, a: SimNode, b: SimNode) -> bool:
        return self.groups is None or self.groups.get(a.index) == self.groups.get(b.index)

    def start(self, spec: SessionSpec, starter: int = 0) -> bytes:
        nd = self.nodes[starter]
        nonce = bytes([starter + 1]) * 16
        prepared = self._prepare(nd, spec.task, spec.task_params, init_seed_of(nonce))
        ann = nd.core.new_announcement(spec, prepared, nonce, self.now)
        self._run(nd, nd.core.start_session(ann, prepared, self.now))
        return ann.session_id

    def _prepare(self, nd: SimNode, task: str, params: dict[str, Any], seed: int) -> PreparedTask:
        return prepare_task(task, params, seed, data_seed=self.data_seed, data_index=nd.index)

    def _run(self, nd: SimNode, actions: list[Action]) -> None:
        for a in actions:
            self.queue.append((nd, a))
        while self.queue:
            node, act = self.queue.popleft()
            if node.alive:
                self._do(node, act)

    def step(self, dt: float = 0.25) -> None:
        self.now += dt
        for nd in self.nodes:
            if nd.alive:
                self._run(nd, nd.core.tick(self.now))

    def run_until(self, pred: Callable[[], bool], max_seconds: float, dt: float = 0.25) -> None:
        end = self.now + max_seconds
        while not pred():
            if self.now >= end:
                raise TimeoutError(f"condition not reached within {max_seconds} simulated seconds")
            self.step(dt)

    # -- carrying out actions ------------------------------------------------------------

    def _do(self, nd: SimNode, act: Action) -> None:
        carry_out(SimActions(self, nd), [act])

    def _push(self, nd: SimNode, actions: list[Action]) -> None:
        for a in actions:
            self.queue.append((nd, a))

    def _send_update(self, nd: SimNode, act: SendUpdate) -> None:
        target = self.by_peer.get(act.to)
        delta = act.delta if nd.byzantine is None else nd.byzantine(act.delta)
        if nd.claim_samples is not None:
            act = dataclasses.replace(act, num_samples=nd.claim_samples)
        if target is None or not target.alive or not self.reaches(nd, target) or \
                (self.sends_fail_until is not None and self.now < self.sends_fail_until):
            self.failed_sends += 1
            self.send_log.append((self.now, nd.peer, act, "unreachable"))
            self._push(nd, nd.core.update_delivered(act.session_id, act.round, act.try_no,
                                                    act.fallback, False, "unreachable", self.now,
                                                    forward=bool(act.members)))
            return
        reason = self.deliver_raw(nd.peer, target, act, delta)
        self.send_log.append((self.now, nd.peer, act, reason or ""))
        self._push(nd, nd.core.update_delivered(act.session_id, act.round, act.try_no, act.fallback,
                                                reason is None, reason or "", self.now,
                                                forward=bool(act.members)))

    def _send_secagg(self, nd: SimNode, act: SendSecAgg) -> None:
        """The secagg stream, as transfer/secagg.py does it: envelope map plus byte frames through
        the real codecs, then `receive_secagg` at the target."""
        target = self.by_peer.get(act.to)
        key = (act.round, act.try_no)
        if isinstance(act.message, UnmaskRequest) and self.silent_unmask.get(key, 0) > 0:
            self.silent_unmask[key] -= 1
            return
        if target is None or not target.alive or not self.reaches(nd, target):
            if act.participant:
                self._push(nd, nd.core.secagg_delivered(act.session_id, act.round, act.try_no,
                                                        act.fallback, False, "unreachable", self.now))
            return
        env_map, frames = secagg_round.encode(act.session_id, act.round, act.try_no, act.fallback,
                                              act.message, act.meta, frame_size=4096)
        self.secagg_frames += len(frames)
        env = secagg_round.Envelope.decode(wire(pack(env_map)), peer=nd.peer)
        msg = secagg_round.decode_body([bytes(f) for f in frames], peer=nd.peer)
        _, actions = target.core.receive_secagg(nd.peer, env.session_id, env.round, env.try_no,
                                                env.fallback, msg, env.meta, self.now)
        self._push(target, actions)
        if isinstance(act.message, MaskedInput) and self.kill_after_masked_round == act.round \
                and nd.index != 0 and self.kill_after_masked_count > 0:
            self.kill_after_masked_count -= 1
            nd.alive = False
            self.killed.append((act.round, nd.peer))

    def deliver_raw(self, sender: str, target: SimNode, act: SendUpdate, delta: np.ndarray,
                    *, tamper: Callable[[dict[str, Any], list[bytes]], None] | None = None) -> str | None:
        """The update stream's receiving side, as transfer/updates.py does it: admit by header,
        decode the tensor header against the expected shape, decode chunks (into the row the
        admission leased), hand over.
        `tamper` may alter the header map / chunks in flight. Returns the refusal reason."""
        tc, now = target.core, self.now
        if np.isfinite(delta).all():
            h, chunks = encode_tensor(delta, chunk_size=4096)
            raw_chunks = [bytes(c) for c in chunks]
        else:   # a hostile sender bypasses encode_tensor's refusal and sends the bytes anyway
            raw = np.ascontiguousarray(delta, dtype="<f4").tobytes()
            raw_chunks = [raw[i:i + 4096] for i in range(0, len(raw), 4096)]
            h = TensorHeader("float32", delta.shape, len(raw), 4096, tensor_hash(raw))
        header_map = act.header(h).to_wire()
        if tamper is not None:
            tamper(header_map, raw_chunks)
        raw_header = wire(pack(header_map))
        sid, rnd = header_map["session"], header_map["round"]
        admission = tc.admit_update(sender, sid, rnd, header_map["try"], header_map["fallback"])
        if admission.refusal is not None:
            self._push(target, tc.reject_update(sender, sid, rnd, header_map["try"], admission.refusal, now))
            return admission.refusal
        try:
            try:
                hdr = UpdateHeader.decode(raw_header, expected_shape=admission.expected_shape,
                                          max_bytes=MAX_BYTES, peer=sender)
                # into the update's row of the round's matrix, as the role does
                dec = TensorDecoder(hdr.tensor, peer=sender, sink=admission.row)
                for c in raw_chunks:
                    dec.feed(c)
                values = dec.finish()
            except TensorRejected as e:
                self._push(target, tc.reject_update(sender, sid, rnd, header_map["try"], e.reason, now))
                return e.reason
            why, actions = tc.receive_update(sender, hdr, values, now)
            self._push(target, actions)
            return why
        finally:
            if admission.row is not None:
                admission.row.release()     # no-op once the update is received

    # -- views ----------------------------------------------------------------------------

    def status(self, sid: bytes, node: int = 0) -> dict[str, Any]:
        return self.nodes[node].core.status(sid)

    def ended(self, sid: bytes, node: int = 0) -> bool:
        return self.status(sid, node)["state"] in ("completed", "failed", "stopped")


class SimActions:
    """The harness's `ActionHandler` (protocols/fl/dispatch.py) for one node: the same
    dispatch table as the role, with the transport replaced by function calls."""

    def __init__(self, sim: Sim, nd: SimNode) -> None:
        self.sim = sim
        self.nd = nd

    def publish(self, act: Publish) -> None:
        sim, nd, now = self.sim, self.nd, self.sim.now
        if isinstance(act.msg, RoundPlan) and sim.kill_planned_aggregator_from_round is not None \
                and act.msg.round >= sim.kill_planned_aggregator_from_round and not sim.killed:
            s = nd.core.sessions[act.msg.session_id]
            victim = sim.by_peer[aggregator_order(act.msg.seed, act.msg.participants,
                                                  1 + s.spec.fallbacks)[0]]
            if victim.index != 0:
                victim.alive = False
                sim.killed.append((act.msg.round, victim.peer))
        if isinstance(act.msg, RoundPlan) and act.msg.round == sim.kill_regional_aggregator_round \
                and act.msg.regions and not sim.killed:
            s = nd.core.sessions[act.msg.session_id]
            glob = aggregator_order(act.msg.seed, act.msg.participants, 1 + s.spec.fallbacks)
            orders = regional_orders(act.msg.seed, act.msg.participants, act.msg.regions,
                                     1 + s.spec.fallbacks)
            for order in orders.values():
                victim = sim.by_peer[order[0]]
                if victim.index != 0 and victim.peer != glob[0] and len(order) > 1:
                    victim.alive = False
                    sim.killed.append((act.msg.round, victim.peer))
                    break
        if sim.hold is not None and sim.hold(nd, act.msg):
            sim.held.append((nd, act))
            return
        data = encode_gossip(act.msg)
        sim.published += 1
        lost = isinstance(act.msg, SessionEnded) and sim.lose_ends > 0
        if lost:
            sim.lose_ends -= 1
        for other in sim.nodes:
            if other is nd or not other.alive or lost or not sim.reaches(nd, other) \
                    or sim.rng.random() < sim.drop or (sim.deaf is not None and sim.deaf(other, act.msg)):
                continue
            msg = decode_gossip(wire(data), peer=nd.peer)
            for a in other.core.receive(nd.peer, msg, now):
                sim.queue.append((other, a))
        if isinstance(act.msg, RoundPlan) and nd.index == 0 \
                and act.msg.round == sim.kill_starter_at_round:
            nd.alive = False
            sim.kill_starter_at_round = None
            sim.killed.append((act.msg.round, nd.peer))
        if sim.after_publish is not None:
            sim.after_publish(nd, act.msg)

    def prepare_task(self, act: PrepareTask) -> None:
        sim, nd, core = self.sim, self.nd, self.nd.core
        if nd.hold_prepare:
            nd.prepares.append(act)
            return
        try:
            p = sim._prepare(nd, act.task, act.task_params, act.init_seed)
        except TaskError as e:
            sim._push(nd, core.task_failed(act.session_id, str(e), sim.now))
        else:
            sim._push(nd, core.task_ready(act.session_id, p, sim.now))

    def fetch_model(self, act: FetchModel) -> None:
        sim, nd, core = self.sim, self.nd, self.nd.core
        for src in act.sources:
            other = sim.by_peer.get(src)
            if other is None or not other.alive or not sim.reaches(nd, other):
                continue
            bundle = other.core.model_for(act.session_id, act.model_hash)
            if bundle is None:
                continue
            h, chunks = encode_tensor(bundle.params)
            shape = core.expected_shape(act.session_id)
            hdr = decode_header(wire(pack(h.to_wire())), expected_shape=shape, max_bytes=MAX_BYTES)
            params = decode_chunks(hdr, [bytes(c) for c in chunks])
            state = {k: v.copy() for k, v in bundle.state.items()}
            sim._push(nd, core.model_fetched(act.session_id, act.model_hash, params, state, sim.now))
            return
        sim._push(nd, core.model_fetch_failed(act.session_id, act.model_hash, "no source reachable", sim.now))

    def train(self, act: Train) -> None:
        sim, nd, core = self.sim, self.nd, self.nd.core
        if nd.never_trains:
            return
        s = core.sessions[act.session_id]
        assert s.prepared is not None and s.prepared.local is not None
        outcome = train_round(s.prepared.local, act.base, act.config, act.seed)
        nd.trained_rounds += 1
        sim._push(nd, core.trained(act.session_id, act.round, act.try_no, outcome, sim.now))

    def send_update(self, act: SendUpdate) -> None:
        self.sim.sent_updates.append((self.nd.peer, act))
        if self.nd.hold_updates:
            self.nd.held.append(act)
        else:
            self.sim._send_update(self.nd, act)

    def _dies_aggregating(self, round_no: int) -> bool:
        sim, nd = self.sim, self.nd
        if nd.drop_aggregate or (sim.kill_aggregating_from_round is not None and not sim.killed
                                 and round_no >= sim.kill_aggregating_from_round and nd.index != 0):
            nd.alive = False
            sim.killed.append((round_no, nd.peer))
            return True
        return False

    def _aggregated(self, act: Aggregate | AggregateSum, run: Callable[[], AggregateResult]) -> None:
        sim, nd, core = self.sim, self.nd, self.nd.core
        if self._dies_aggregating(act.round):
            return
        try:
            res = run()
        except StrategyError as e:
            sim._push(nd, core.aggregated(act.session_id, act.round, act.try_no, act.fallback,
                                          None, str(e), sim.now))
        else:
            sim._push(nd, core.aggregated(act.session_id, act.round, act.try_no, act.fallback,
                                          res, "", sim.now, act.strategy.state_arrays()))

    def aggregate(self, act: Aggregate) -> None:
        self.nd.aggregations.append(act)
        self._aggregated(act, lambda: act.strategy.aggregate(act.base, list(act.updates)))

    def aggregate_sum(self, act: AggregateSum) -> None:
        self._aggregated(act, lambda: act.strategy.aggregate_sum(
            act.base, act.delta_sum, act.total_weight, act.peers, num_samples=act.num_samples))

    def send_secagg(self, act: SendSecAgg) -> None:
        self.sim._send_secagg(self.nd, act)

    def emit(self, act: Emit) -> None:
        self.nd.events.append(act.event)

    def pay_rewards(self, act: PayRewards) -> None:
        self.nd.payments.append(act)

    def round_judged(self, act: RoundJudged) -> None:
        self.nd.judged.append(act)

    def push_result(self, act: PushResult) -> None:
        self.nd.pushes.append(act)      # a push is best effort: here it is always lost

    def report_outcome(self, act: ReportOutcome) -> None:
        self.nd.reports.append(act)

    def update_refused(self, act: UpdateRefused) -> None:
        self.nd.refused.append(act)

    def message_refused(self, act: MessageRefused) -> None:
        self.nd.refused_messages.append(act)

    def save_model(self, act: SaveModel) -> None:
        self.nd.saved[act.model_hash] = act.params
        if act.final:
            self.nd.final.append(act.model_hash)
