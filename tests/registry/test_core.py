"""The registry core driven by a tiny in-memory network (no sockets)."""
from __future__ import annotations

import dataclasses

import pytest

from fognode.node.errors import LocalProtocolError
from fognode.node.wire import pack, unpack
from fognode.protocols.registry.actions import (Action, DhtProvide, DhtPut, Emit, FetchRecord,
                                                Ping, Publish, Refused, SetAppScore, SyncFrom,
                                                SyncObservationsFrom)
from fognode.protocols.registry.config import RegistryConfig
from fognode.protocols.registry.core import DEVICES_TOPIC, OBSERVATIONS_TOPIC, RegistryCore
from fognode.protocols.registry.errors import RejectReason
from fognode.protocols.registry.events import (DeviceCapabilitiesChanged, DeviceOffline,
                                               DeviceOnline, DeviceRegistered, ReputationUpdated)
from fognode.protocols.registry.record import make_profile
from fognode.protocols.registry.reputation import compute, snapshot
from fognode.protocols.registry.validator import DeviceRecordValidator
from fognode.protocols.registry.view import Criteria

from .helpers import NOW, caps, key, record


class Net:
    """Delivers gossip to every other core; a dict DHT guarded by one validator."""

    def __init__(self, names: list[str], cfg: RegistryConfig) -> None:
        self.now = NOW
        self.cores = {n: RegistryCore(key(n), cfg, make_profile("eu-west", "server", ["fl"]),
                                      pretrusted=[], now=NOW) for n in names}
        self.dht: dict[str, bytes] = {}
        self.dht_validator = DeviceRecordValidator(lambda: self.now)
        self.events: dict[str, list[object]] = {n: [] for n in names}
        self.refused: dict[str, list[Refused]] = {n: [] for n in names}
        self.scores: dict[str, dict[str, float]] = {n: {} for n in names}
        self.providers: set[str] = set()
        self.down: set[str] = set()          # killed: neither heartbeats nor pongs
        self.mute: set[str] = set()          # gossip from them is lost, pings work
        self.pings = 0

    def run(self, who: str, actions: list[Action]) -> None:
        queue = [(who, a) for a in actions]
        while queue:
            src, a = queue.pop(0)
            core = self.cores[src]
            if isinstance(a, Publish):
                if src in self.mute:
                    continue
                for n, c in self.cores.items():
                    if n == src:
                        continue
                    fn = c.on_device_gossip if a.topic == DEVICES_TOPIC else c.on_observation
                    assert a.topic in (DEVICES_TOPIC, OBSERVATIONS_TOPIC)
                    queue += [(n, x) for x in fn(core.peer_id, a.data, self.now)]
            elif isinstance(a, DhtPut):
                self.dht_validator.validate(a.key, a.value)
                old = self.dht.get(a.key)
                if old is None or self.dht_validator.select(a.key, [old, a.value]) == 1:
                    self.dht[a.key] = a.value
            elif isinstance(a, DhtProvide):
                self.providers.add(a.key)
            elif isinstance(a, FetchRecord):
                queue += [(src, x) for x in core.on_dht_record(
                    a.peer_id, self.dht.get("/fognode/device/" + a.peer_id), self.now)]
            elif isinstance(a, Ping):
                self.pings += 1
                target = next(n for n, c in self.cores.items() if c.peer_id == a.peer_id)
                if target not in self.down:
                    queue += [(src, x) for x in core.on_pong(a.peer_id, self.now)]
            elif isinstance(a, Emit):
                self.events[src].append(a.event)
            elif isinstance(a, Refused):
                self.refused[src].append(a)
            elif isinstance(a, SetAppScore):
                self.scores[src][a.peer_id] = a.score

    def start(self) -> None:
        for n, c in self.cores.items():
            self.run(n, c.start(caps(), self.now))

    def tick(self, dt: float) -> None:
        self.now += dt
        for n, c in self.cores.items():
            if n not in self.down:
                self.run(n, c.tick(self.now))


CFG = RegistryConfig(heartbeat_interval=5.0, offline_after=15.0, republish_interval=600.0,
                     record_ttl=1800.0)


def kinds(evs: list[object], t: type) -> list[object]:
    return [e for e in evs if isinstance(e, t)]


def test_records_spread_and_capability_changes() -> None:
    net = Net(["a", "b", "c"], CFG)
    net.start()
    assert "/fognode/region/eu-west" in net.providers and len(net.dht) == 3
    for n, c in net.cores.items():
        assert len(c.view) == 3, n
        assert len(kinds(net.events[n], DeviceRegistered)) == 3
    a = net.cores["a"]
    net.run("a", a.update_capabilities(caps(battery_percent=None, cores=4), net.now))  # same
    assert not kinds(net.events["b"], DeviceCapabilitiesChanged)
    net.run("a", a.update_capabilities(caps(cores=8), net.now + 1))
    [ch] = kinds(net.events["b"], DeviceCapabilitiesChanged)
    assert ch.peer_id == a.peer_id and ch.changed == ("cores",)  # type: ignore[attr-defined]
    assert net.cores["c"].view.get(a.peer_id).caps.cores == 8
    net.run("a", a.update_profile(make_profile("eu-west", "server", ["fl", "market"]), net.now + 2))
    assert net.cores["b"].query(Criteria(role="market")) == [a.own]


def test_liveness_offline_and_back() -> None:
    net = Net(["a", "b", "c"], CFG)
    net.start()
    for _ in range(3):
        net.tick(5.0)
    assert all(c.liveness.online_count() == 3 for c in net.cores.values())
    net.mute.add("b")                    # b's gossip is lost: pings keep it online
    net.down.add("c")                    # c is killed: no heartbeats, no pongs
    for _ in range(4):
        net.tick(5.0)
    c_id = net.cores["c"].peer_id
    offs = [e for e in net.events["a"] if isinstance(e, DeviceOffline)]
    assert [(e.peer_id, e.reason) for e in offs] == [(c_id, "silent")]
    assert net.cores["a"].query(Criteria(online=True)) == [
        r for r in net.cores["a"].query(Criteria()) if r.peer_id != c_id]
    assert net.pings > 0 and net.cores["a"].liveness.is_online(net.cores["b"].peer_id)
    # a heartbeat c sent before it died, delivered only now (a gossip pull from a relay), is
    # newer than anything a heard from c but says nothing about c being alive now
    late = pack({"v": 1, "t": "hb", "at": int((net.now - 18) * 1000), "seq": 1})
    assert net.cores["a"].on_device_gossip(c_id, late, net.now) == []
    assert not net.cores["a"].liveness.is_online(c_id)
    # c restarts but its gossip does not reach us: a ping of the connected, offline c revives it
    net.down.discard("c")
    net.mute.add("c")
    [ping] = net.cores["a"].ping_offline([c_id], net.now)
    assert isinstance(ping, Ping) and net.cores["a"].ping_offline([c_id], net.now + 7) == []
    net.run("a", [ping])
    assert net.cores["a"].liveness.is_online(c_id)
    net.mute.discard("c")
    net.mute.discard("b")
    net.tick(5.0)                                    # c heartbeats again
    assert any(isinstance(e, DeviceOnline) and e.peer_id == c_id for e in net.events["a"])
    net.run("b", net.cores["b"].goodbye(net.now))   # graceful
    b_id = net.cores["b"].peer_id
    assert any(isinstance(e, DeviceOffline) and e.peer_id == b_id and e.reason == "goodbye"
               for e in net.events["a"])
    # an old heartbeat of b, replayed by gossip after its goodbye, does not revive it
    a = net.cores["a"]
    old_hb = pack({"v": 1, "t": "hb", "at": int((net.now - 10) * 1000), "seq": 1})
    assert a.on_device_gossip(b_id, old_hb, net.now) == []
    assert not a.liveness.is_online(b_id)


def test_missed_announcement_is_fetched_via_heartbeat() -> None:
    net = Net(["a", "b"], CFG)
    net.start()
    a = net.cores["a"]
    acts = a.update_capabilities(caps(cores=16), net.now + 1)
    net.run("a", [x for x in acts if not isinstance(x, Publish)])   # gossip lost
    assert net.cores["b"].view.get(a.peer_id).caps.cores == 4
    net.tick(5.0)                                                    # heartbeat names the seq
    assert net.cores["b"].view.get(a.peer_id).caps.cores == 16


def test_record_is_announced_again_to_peers_that_connect_later() -> None:
    """The first announcement goes out before any peer is connected, and on a loaded machine
    every pull of the record can time out (seen at load 30-45: eight connected daemons, each
    knowing only its own record while heartbeats flowed). Peers that connected since the last
    announcement get it again on gossip once they stayed a heartbeat interval; once per
    interval, and again for a peer that reconnects."""
    net = Net(["a", "b", "c"], CFG)
    a, b, c = (net.cores[n] for n in "abc")
    for n, core in net.cores.items():        # announcements lost, nothing in the DHT to pull
        core.start(caps(), net.now)
    net.tick(5.0)                             # heartbeats flow; pulls find nothing
    assert all(len(core.view) == 1 for core in net.cores.values())
    peers = [b.peer_id, c.peer_id]
    assert a.announce_due(peers, net.now) == []                  # just connected: mesh forming
    assert a.announce_due(peers, net.now + 4.9) == []
    [ann] = a.announce_due(peers, net.now + 5.0)
    assert isinstance(ann, Publish) and unpack(ann.data)["t"] == "record"
    net.run("a", [ann])
    assert b.view.get(a.peer_id) == a.own and c.view.get(a.peer_id) == a.own
    assert a.announce_due(peers, net.now + 30.0) == []           # nobody new: nothing
    assert a.announce_due([b.peer_id], net.now + 31.0) == []     # c went away ...
    assert a.announce_due(peers, net.now + 32.0) == []           # ... and came back (restarted?)
    assert a.announce_due(peers, net.now + 36.0) == []
    [again] = a.announce_due(peers, net.now + 37.0)
    assert unpack(again.data)["t"] == "record" and a.announce_due(peers, net.now + 50.0) == []


def test_republish_before_expiry() -> None:
    net = Net(["a", "b"], CFG)
    net.start()
    seq0 = net.cores["a"].own.seq
    for _ in range(130):
        net.tick(5.0)
    own = net.cores["a"].own
    assert own is not None and own.seq > seq0 and own.expires > net.now
    assert len(net.cores["b"].view) == 2       # nothing expired


def test_bad_gossip_is_refused_with_reason() -> None:
    net = Net(["a", "b"], CFG)
    net.start()
    b = net.cores["b"]
    a_id = net.cores["a"].peer_id
    old = record(key("a"), seq=1).encode()      # older than a's time-based seq: replay
    env = pack({"v": 1, "t": "record", "at": 1, "record": old})
    assert [r.reason for r in b.on_device_gossip(a_id, env, net.now) if isinstance(r, Refused)] \
        == [RejectReason.STALE_SEQ]
    foreign = record(key("z"), seq=10**13).encode()
    env = pack({"v": 1, "t": "record", "at": 2, "record": foreign})
    assert [r.reason for r in b.on_device_gossip(a_id, env, net.now) if isinstance(r, Refused)] \
        == [RejectReason.WRONG_KEY]
    for junk in (b"\xc1", pack({"v": 1, "t": "nope", "at": 3}), pack({"v": 9, "t": "hb", "seq": 1}),
                 pack({"v": 1, "t": "hb", "seq": "x", "at": 4}), pack({"v": 1, "t": "hb", "seq": 1})):
        [r] = b.on_device_gossip(a_id, junk, net.now)
        assert isinstance(r, Refused) and r.reason is RejectReason.MALFORMED


def test_observations_and_reputation() -> None:
    net = Net(["p", "h1", "h2", "bad"], CFG)
    net.start()
    ids = {n: c.peer_id for n, c in net.cores.items()}
    for c in net.cores.values():
        c.pretrusted = [ids["p"]]
    for i in range(5):
        for obs in ("p", "h1", "h2"):
            for subj in ("p", "h1", "h2"):
                if obs != subj:
                    net.run(obs, net.cores[obs].report_outcome(ids[subj], "fl", True, 1.0,
                                                               f"{i}{subj}".encode(), net.now))
            net.run(obs, net.cores[obs].report_outcome(ids["bad"], "fl", False, 1.0,
                                                       f"{i}bad".encode(), net.now))
    for other in ("h1", "h2", "p"):
        net.run("bad", net.cores["bad"].report_outcome(ids[other], "fl", False, 5.0,
                                                       f"smear{other}".encode(), net.now))
    with pytest.raises(LocalProtocolError):
        net.cores["bad"].report_outcome(ids["bad"], "fl", True, 1.0, b"", net.now)
    h1 = net.cores["h1"]
    assert h1.book.accepted == 5 * 3 * 3 + 3   # everyone's observations, ours included
    rc = compute(snapshot(h1.book), h1.pretrusted, 0.15)
    net.run("h1", h1.apply_reputation(rc))
    assert h1.reputation.score(ids["bad"], "fl") == 0.0
    assert h1.reputation.score(ids["h2"], "fl") > 0.5
    assert any(isinstance(e, ReputationUpdated) for e in net.events["h1"])
    assert net.scores["h1"][ids["bad"]] == 0.0 and net.scores["h1"][ids["p"]] > 1.0
    got = h1.query(Criteria(min_reputation=0.5, service="fl"))
    assert ids["bad"] not in {r.peer_id for r in got} and len(got) == 3


def test_spoofed_and_self_observations_counted() -> None:
    net = Net(["a", "b", "c"], CFG)
    net.start()
    a, c = net.cores["a"], net.cores["c"]
    [pub] = a.report_outcome(c.peer_id, "fl", True, 1.0, b"e", net.now)
    assert isinstance(pub, Publish)
    [r] = net.cores["b"].on_observation(c.peer_id, pub.data, net.now)   # relayed as c's own
    assert isinstance(r, Refused) and r.reason is RejectReason.SPOOFED_ORIGIN
    from fognode.protocols.registry.observation import sign_observation
    selfo = sign_observation(key("c"), subject=c.peer_id, service="fl", ok=True, weight=1.0,
                             evidence=b"", ts=int(net.now))
    [r] = net.cores["b"].on_observation(c.peer_id, selfo.encode(), net.now)
    assert isinstance(r, Refused) and r.reason is RejectReason.SELF_OBSERVATION
    assert dataclasses.is_dataclass(r)


def test_failed_dht_put_is_retried() -> None:
    net = Net(["a"], CFG)
    net.start()
    a = net.cores["a"]
    a.dht_put_failed(net.now)
    assert not [x for x in a.tick(net.now + 1) if isinstance(x, DhtPut)]
    acts = a.tick(net.now + 2 * CFG.heartbeat_interval)
    assert [x.key for x in acts if isinstance(x, DhtPut)] == ["/fognode/device/" + a.peer_id]
    assert [x.key for x in acts if isinstance(x, DhtProvide)] == ["/fognode/region/eu-west"]
    assert not [x for x in a.tick(net.now + 4 * CFG.heartbeat_interval) if isinstance(x, DhtPut)]


def test_anti_entropy_sync_pages_and_deltas() -> None:
    cfg = CFG                      # heartbeat 5 s: a sync with each peer every 30 s
    net = Net(["a"] + [f"p{i}" for i in range(5)], cfg)
    net.start()
    a = net.cores["a"]
    late = RegistryCore(key("late"), cfg, make_profile("eu-west", "server", []), pretrusted=[],
                        now=net.now)
    late.start(caps(), net.now)
    [sync, osync] = late.sync_due([a.peer_id], net.now)
    assert isinstance(sync, SyncFrom) and sync.epoch == b"" and sync.after == 0
    assert isinstance(osync, SyncObservationsFrom) and osync.after == 0
    assert late.sync_due([a.peer_id], net.now + 1) == []             # not again before 30 s
    epoch, recs, nxt, more = a.serve_sync(sync.epoch, sync.after, 4)  # a page of 4 of 6
    assert more and len(recs) == 4
    acts = late.on_sync_reply(a.peer_id, epoch, nxt, more, recs, net.now)
    [again] = [x for x in acts if isinstance(x, SyncFrom)]
    assert len([x for x in acts if isinstance(x, Emit)]) == 4
    epoch, recs, nxt2, more = a.serve_sync(again.epoch, again.after, 4)
    assert not more and len(recs) == 2
    late.on_sync_reply(a.peer_id, epoch, nxt2, more, recs, net.now)
    assert len(late.view) == 7
    # only what changed since is sent next time; a forged record in a page is refused
    p0 = net.cores["p0"]
    net.run("p0", p0.update_capabilities(caps(cores=32), net.now + 5))
    [s2, _] = late.sync_due([a.peer_id], net.now + 31)
    epoch, recs, nxt3, more = a.serve_sync(s2.epoch, s2.after, 64)
    assert len(recs) == 1
    raw = unpack(recs[0])
    raw["caps"]["cores"] = 99
    acts = late.on_sync_reply(a.peer_id, epoch, nxt3, more, [pack(raw)] + recs, net.now + 31)
    assert [x.reason for x in acts if isinstance(x, Refused)] == [RejectReason.BAD_SIGNATURE]
    assert late.view.get(p0.peer_id).caps.cores == 32
    # a cursor from another run of the responder starts over
    _, recs, _, _ = a.serve_sync(b"\x00" * 8, 10**6, 64)
    assert len(recs) == 6


def test_observation_sync_catches_up_lost_gossip() -> None:
    net = Net(["a", "b", "c"], CFG)
    net.start()
    a, b, c = net.cores["a"], net.cores["b"], net.cores["c"]
    net.mute.add("a")                                     # a's observations never reach c
    for i in range(5):
        net.run("a", a.report_outcome(b.peer_id, "fl", True, 1.0, f"e{i}".encode(), net.now))
    net.run("b", b.report_outcome(a.peer_id, "fl", True, 1.0, b"x", net.now))
    assert c.book.accepted == 1
    [_, osync] = c.sync_due([a.peer_id], net.now)
    assert isinstance(osync, SyncObservationsFrom)
    epoch, items, nxt, more = a.serve_observation_sync(osync.epoch, osync.after, 4)
    assert len(items) == 4 and more                      # a holds its 5 and b's 1
    acts = c.on_observation_sync_reply(a.peer_id, epoch, nxt, more, items, net.now)
    [again] = [x for x in acts if isinstance(x, SyncObservationsFrom)]
    epoch, items, nxt, more = a.serve_observation_sync(again.epoch, again.after, 4)
    assert len(items) == 2 and not more
    acts = c.on_observation_sync_reply(a.peer_id, epoch, nxt, more, items, net.now)
    assert acts == [] and c.book.accepted == 6             # b's one again: skipped quietly
    assert c.book.rejected[RejectReason.DUPLICATE] == 0
    forged = unpack(items[0])
    forged["ok"] = not forged["ok"]
    [r] = c.on_observation_sync_reply(a.peer_id, epoch, nxt, False, [pack(forged)], net.now)
    assert isinstance(r, Refused) and r.reason is RejectReason.BAD_SIGNATURE
