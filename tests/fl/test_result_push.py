"""The aggregator's push of a round's result and new model to the acting coordinator
(session/push.py, transfer/push.py). The cores run a real session in the in-memory harness up
to a round's result, which is held back from gossip; the push then goes between two real
libp2p overlays on 127.0.0.1 carrying those cores (their peer ids are the harness's keys), on
the real transfer-session handler: the coordinator completes the round without a model fetch;
a pushed model that does not match its hash is refused, charged to the aggregator, and the
coordinator fetches instead; a result gossiped first makes the push declined, and one gossiped
while a taken push runs starts no second fetch and completes the round once. A coordinator
that does not advertise the capability (an older node) is never sent a push."""
from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import replace
from typing import AsyncIterator

import trio
from prometheus_client import CollectorRegistry

from fognode.node.events import EventBus
from fognode.node.host import OverlayConfig, open_overlay
from fognode.protocols.fl.actions import Action, Emit, FetchModel, PushResult
from fognode.protocols.fl.config import FlConfig
from fognode.protocols.fl.events import TrainingRoundCompleted
from fognode.protocols.fl.messages import RoundResult
from fognode.protocols.fl.messages_stream import RESULT_PUSH
from fognode.protocols.fl.metrics import FlMetrics
from fognode.protocols.fl.session.state import ModelBundle
from fognode.protocols.fl.transfer.push import push_result
from fognode.protocols.fl.transfer.sessions import TransferSessions
from fognode.protocols.fl.transfer.streams import XFER_STREAM, Link
from fognode.protocols.fl.transfer.xfer import serve_xfer
from tests.fl.harness import Sim, SimNode
from tests.fl.test_session import spec
from tests.polling import wait_until

LOCAL = ["/ip4/127.0.0.1/tcp/0"]


def held_round(sim: Sim) -> tuple[bytes, SimNode, PushResult]:
    """Run a session until an aggregator other than the coordinator (node 0) published a
    round's result, held back from gossip; that aggregator and its push."""
    sim.hold = lambda nd, msg: isinstance(msg, RoundResult) and nd.index != 0
    sid = sim.start(spec(rounds=3, min_participants=4, participants=4))
    sim.run_until(lambda: bool(sim.held), 600)
    agg = sim.held[0][0]
    assert len(agg.pushes) == 1 and agg.pushes[0].coordinator == sim.nodes[0].peer
    return sid, agg, agg.pushes[0]


def completed(actions: list[Action]) -> list[int]:
    return [a.event.round for a in actions if isinstance(a, Emit)
            and isinstance(a.event, TrainingRoundCompleted)]


class Ends:
    def __init__(self, coord: Link, agg: Link, coord_done: list[Action], reg: CollectorRegistry) -> None:
        self.coord, self.agg, self.coord_done, self.reg = coord, agg, coord_done, reg

    def charged(self) -> float:
        return self.reg.get_sample_value("fognode_node_remote_protocol_errors_total",
                                         {"protocol": XFER_STREAM}) or 0.0


@asynccontextmanager
async def overlays(coord: SimNode, agg: SimNode) -> AsyncIterator[Ends]:
    cfg = FlConfig(stream_timeout=30.0)
    regs = [CollectorRegistry(), CollectorRegistry()]
    async with open_overlay(OverlayConfig(listen=LOCAL), coord.key, EventBus(regs[0]), regs[0]) as co, \
            open_overlay(OverlayConfig(listen=LOCAL), agg.key, EventBus(regs[1]), regs[1]) as ag:
        assert (co.peer_id, ag.peer_id) == (coord.peer, agg.peer)
        done: list[Action] = []
        links = []
        for ov, nd, reg, apply in ((co, coord, regs[0], done.extend), (ag, agg, regs[1], lambda _: None)):
            m = FlMetrics.create(reg)
            links.append(Link(overlay=ov, config=cfg, metrics=m, core=nd.core, apply=apply,
                              now=lambda: 2000.0, closed=lambda: False,
                              sessions=TransferSessions(ov, m, idle=30.0)))
        co.set_stream_handler(XFER_STREAM, lambda st: serve_xfer(links[0], st))
        await ag.connect(co.listen_addrs()[0])
        yield Ends(links[0], links[1], done, regs[0])


def model_bytes_in(link: Link) -> float:
    return link.metrics.bytes_in.labels("model")._value.get()


async def test_the_coordinator_takes_the_pushed_model_without_a_fetch() -> None:
    sim = Sim(4)
    sid, agg, push = held_round(sim)
    coord = sim.nodes[0]
    r = push.result.receipt
    with trio.fail_after(60):
        async with overlays(coord, agg) as ends:
            assert await push_result(ends.agg, push)
            await wait_until(lambda: bool(ends.coord_done), timeout=30, what="the pushed model to arrive")
            assert not any(isinstance(a, FetchModel) for a in ends.coord_done)     # no fetch
            assert completed(ends.coord_done) == [r.round]
            assert r.model_hash in coord.core.sessions[sid].models
            assert model_bytes_in(ends.coord) > 0 and ends.charged() == 0
    history = coord.core.status(sid)["history"]
    sim.release()       # the gossiped result arrives late: nothing is applied twice
    assert coord.core.status(sid)["history"] == history
    assert [h["round"] for h in history].count(r.round) == 1


async def test_a_pushed_model_not_matching_its_hash_is_charged_and_then_fetched() -> None:
    sim = Sim(4)
    sid, agg, push = held_round(sim)
    coord, h = sim.nodes[0], push.result.receipt.model_hash
    s = agg.core.sessions[sid]
    s.models[h] = ModelBundle(s.models[h].params + 1.0, s.models[h].state)     # a lying aggregator
    with trio.fail_after(60):
        async with overlays(coord, agg) as ends:
            await push_result(ends.agg, push)
            await wait_until(lambda: ends.charged() == 1, timeout=30, what="the aggregator to be charged")
            fetches = [a for a in ends.coord_done if isinstance(a, FetchModel)]
            assert [(f.model_hash, f.sources) for f in fetches] == [(h, (agg.peer,))]
            assert h not in coord.core.sessions[sid].models and completed(ends.coord_done) == []


async def test_a_result_gossiped_first_makes_the_push_declined() -> None:
    sim = Sim(4)
    sid, agg, push = held_round(sim)
    coord = sim.nodes[0]
    sim.release()       # gossip first: the coordinator fetches (in memory) and completes the round
    history = coord.core.status(sid)["history"]
    assert push.result.receipt.round in [x["round"] for x in history]
    with trio.fail_after(60):
        async with overlays(coord, agg) as ends:
            assert not await push_result(ends.agg, push)
            assert ends.coord_done == [] and model_bytes_in(ends.coord) == 0
    assert coord.core.status(sid)["history"] == history


def test_a_result_gossiped_during_a_taken_push_starts_no_fetch_and_completes_once() -> None:
    sim = Sim(4)
    sid, agg, push = held_round(sim)
    core, res, h = sim.nodes[0].core, push.result, push.result.receipt.model_hash
    assert core.push.refusal(agg.peer, res) is None               # taken
    gossiped = core.receive(agg.peer, res, sim.now)               # the gossip overtakes the model
    assert not any(isinstance(a, FetchModel) for a in gossiped)
    bundle = agg.core.sessions[sid].models[h]
    out = core.push.arrived(agg.peer, res, bundle.params.copy(), dict(bundle.state), sim.now)
    assert completed(gossiped + out) == [res.receipt.round]
    assert core.push.refusal(agg.peer, res) is not None           # a second push: declined


def test_a_coordinator_that_does_not_advertise_the_push_is_never_sent_one() -> None:
    sim = Sim(4)
    old = sim.nodes[0].core
    assert RESULT_PUSH in old.facts.capabilities          # every node of this version does
    old.facts = replace(old.facts, capabilities=())        # an older node's opt-in
    sid = sim.start(spec(rounds=3, min_participants=4, participants=4))
    sim.run_until(lambda: sim.ended(sid), 600)
    assert sim.status(sid)["state"] == "completed"
    assert all(nd.pushes == [] for nd in sim.nodes)
    # and with the capability, the aggregators other than the coordinator push each round
    sim2 = Sim(4)
    sid2 = sim2.start(spec(rounds=3, min_participants=4, participants=4))
    sim2.run_until(lambda: sim2.ended(sid2), 600)
    aggs = [h["aggregator"] for h in sim2.status(sid2)["history"]]
    pushed = sorted(p.result.receipt.round for nd in sim2.nodes for p in nd.pushes)
    assert pushed == [i + 1 for i, a in enumerate(aggs) if a != sim2.nodes[0].peer]
