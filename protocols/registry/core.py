"""The registry state machine (sans-IO): our own record, the view, liveness and observations.

Inputs are method calls with `now` (unix seconds); outputs are lists of actions (`actions.py`)
the trio adapter (`protocol.RegistryRole`) carries out. Nothing here awaits.

Gossip on `fognode/registry/devices/1` carries one envelope per message::

    {"v": 1, "t": "record", "at": <ms>, "record": <signed device record bytes>}
    {"v": 1, "t": "hb", "at": <ms>, "seq": <our record's seq>}   # every heartbeat_interval
    {"v": 1, "t": "bye", "at": <ms>}                              # graceful shutdown

`at` is the sender's clock in milliseconds, increasing per sender: gossip may deliver late,
twice or replayed (pulls after a gap), and a message not newer than the last one from that
origin says nothing about liveness (so an old heartbeat cannot revive a peer that said bye).
A fresh message counts as a sign of life at the time it was *sent*, in our clock: `at` plus
the sender's clock offset, estimated as the smallest (receive time - `at`) seen from it (the
least-delayed message; allowed to drift by 1 ms/s). So a heartbeat that arrives seconds late
through a gossip pull after its sender died does not keep the sender online.

Gossip is signed by its origin (libp2p strict signing), so a heartbeat or goodbye speaks only for
its origin, and a record is accepted on gossip only from the device it describes. A heartbeat
naming a newer sequence than the view holds (a missed announcement) triggers a DHT fetch. Liveness:
heartbeats and records count; a peer whose heartbeats stop for half of `offline_after` is pinged
directly (`Ping`, once per heartbeat interval) so lost gossip does not make it look offline, while
a hung or killed peer, which answers neither, goes offline `offline_after` after its last sign of
life. An open connection alone proves nothing (a stopped process can keep its sockets).
`fognode/registry/observations/1` carries signed observations (`observation.py`).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

from nacl.signing import SigningKey

from fognode.node.errors import LocalProtocolError
from fognode.node.wire import pack
from fognode.protocols.registry.actions import (Action, DhtProvide, DhtPut, Emit, FetchRecord,
                                                Ping, Publish, Refused, SetAppScore, SyncFrom,
                                                SyncObservationsFrom)
from fognode.protocols.registry.config import RegistryConfig
from fognode.protocols.registry.errors import Rejected, RejectReason
from fognode.protocols.registry.events import (DeviceCapabilitiesChanged, DeviceOffline,
                                               DeviceOnline, DeviceRegistered)
from fognode.protocols.registry.gossip_check import (ENVELOPE_VERSION, check_observations,
                                                     decode_device_gossip)
from fognode.protocols.registry.liveness import Liveness, LivenessChange, LivenessTracker
from fognode.protocols.registry.observation import (Observation, ObservationBook, Outcome,
                                                    decode_observation, encode_observations)
from fognode.protocols.registry.pending import OwnReports
from fognode.protocols.registry.peerid import peer_id_from_pubkey
from fognode.protocols.registry.record import (Capabilities, DeviceProfile, DeviceRecord,
                                               HarvestInfo, changed_fields, decode_record,
                                               harvest_differs_materially, sign_record)
from fognode.protocols.registry.reputation import Recompute, ReputationTable
from fognode.protocols.registry.validator import DeviceRecordValidator, device_key, region_key
from fognode.protocols.registry.view import Change, Criteria, LocalView

DEVICES_TOPIC = "fognode/registry/devices/1"
OBSERVATIONS_TOPIC = "fognode/registry/observations/1"
SYNC_HEARTBEATS = 6       # anti-entropy with each connected peer every 6 heartbeat intervals


class RegistryCore:
    def __init__(self, key: SigningKey, config: RegistryConfig, profile: DeviceProfile, *,
                 pretrusted: list[str], now: float,
                 validator_clock: Callable[[], float] | None = None) -> None:
        """`validator_clock` is read when the DHT calls the validator outside our methods
        (default: the last `now` this core was given)."""
        self.key = key
        self.config = config
        self.peer_id = peer_id_from_pubkey(bytes(key.verify_key))
        self.profile = profile
        self.pretrusted = list(pretrusted)
        self._clock_now = now
        self.validator = DeviceRecordValidator(validator_clock or (lambda: self._clock_now),
                                               max_clock_skew=config.max_clock_skew)
        self.view = LocalView()
        self.liveness = LivenessTracker(config.offline_after)
        self.book = ObservationBook(rate_per_minute=config.observation_rate_per_minute,
                                    burst=config.observation_burst,
                                    max_age=config.observation_max_age,
                                    max_clock_skew=config.max_clock_skew)
        self.own_reports = OwnReports(key, self.peer_id, self.book,
                                      reserve=config.observation_burst // 10)
        self.reputation = ReputationTable()
        self.own: DeviceRecord | None = None
        self.onion_cert = b""          # the onion role's key certificate, carried in our record
        self._caps: Capabilities | None = None
        self._harvest: HarvestInfo | None = None    # set by the harvest role, when it runs
        self._harvest_pending = False               # a resource change not yet published
        self._last_publish = self._last_announce = self._last_heartbeat = 0.0
        self._last_sent_at = 0
        self._dht_retry_at: float | None = None
        # anti-entropy: this run's epoch, and per peer (its epoch, our cursor, when last asked)
        self.epoch = int(now * 1e6).to_bytes(8, "big")
        self._sync: dict[str, tuple[bytes, int, float]] = {}
        self._osync: dict[str, tuple[bytes, int]] = {}          # observations: (epoch, cursor)
        self._fetching: dict[str, float] = {}
        self._announced: set[str] = set()     # connected peers our record was announced to
        self._joined: dict[str, float] = {}   # connected peers not announced to yet: since when
        self._pinged: dict[str, float] = {}
        self._last_at: OrderedDict[str, int] = OrderedDict()   # newest `at` per origin
        self._offset: dict[str, tuple[float, float]] = {}      # origin -> (clock offset, when)

    # ---- our own record -------------------------------------------------------------------

    def _next_seq(self, now: float) -> int:
        last = self.own.seq if self.own is not None else 0
        return max(last + 1, int(now * 1000))

    def _publish_own(self, caps: Capabilities, now: float) -> list[Action]:
        self._clock_now = now
        old = self.own
        issued = int(now)
        rec = sign_record(self.key, seq=self._next_seq(now), issued=issued,
                          expires=issued + max(1, int(self.config.record_ttl)), caps=caps,
                          profile=self.profile, harvest=self._harvest, onion=self.onion_cert)
        self.own, self._caps, self._last_publish = rec, caps, now
        self._last_announce = now
        self._harvest_pending = False
        self._dht_retry_at = None
        self.validator.check(device_key(rec.peer_id), rec.encode())  # our own bug if it fails
        change = self.view.offer(rec)
        self.liveness.seen(self.peer_id, now)
        data = rec.encode()
        out: list[Action] = [
            DhtPut(device_key(self.peer_id), data),
            Publish(DEVICES_TOPIC, self._envelope(now, "record", record=data)),
        ]
        if self.profile.region:
            out.append(DhtProvide(region_key(self.profile.region)))
        if old is None or change is Change.NEW:
            out.append(Emit(DeviceRegistered(rec.peer_id, rec.profile.region,
                                             rec.profile.device_type, rec.profile.roles, rec.seq, True)))
        elif change is Change.UPDATED:
            out.append(Emit(DeviceCapabilitiesChanged(rec.peer_id, rec.seq,
                                                      changed_fields(old, rec), True)))
        return out

    def _envelope(self, now: float, kind: str, **fields: Any) -> bytes:
        at = max(int(now * 1000), self._last_sent_at + 1)
        self._last_sent_at = at
        return pack({"v": ENVELOPE_VERSION, "t": kind, "at": at, **fields})

    def _fresh(self, origin: str, at: int) -> bool:
        """True (and remembered) when `at` is newer than anything heard from `origin`."""
        last = self._last_at.get(origin)
        if last is not None and at <= last:
            return False
        self._last_at[origin] = at
        self._last_at.move_to_end(origin)
        while len(self._last_at) > self.view.max_devices:
            self._last_at.popitem(last=False)
        return True

    def _sent_at(self, origin: str, at_ms: int, now: float) -> float:
        """When a message stamped `at_ms` by `origin` was sent, in our clock."""
        sample = now - at_ms / 1000.0
        prev = self._offset.get(origin)
        offset = sample if prev is None else min(sample, prev[0] + 0.001 * max(0.0, now - prev[1]))
        self._offset[origin] = (offset, now)
        if len(self._offset) > self.view.max_devices:
            self._offset.pop(next(iter(self._offset)))
        return min(now, at_ms / 1000.0 + offset)

    def announce_due(self, connected: list[str], now: float) -> list[Action]:
        """Announce our record again when peers connected since the last announcement have
        stayed a heartbeat interval (time to join the topic's mesh); at most once per interval.
        A peer that disconnects and comes back is new again (it may have restarted)."""
        settle = max(1.0, self.config.heartbeat_interval)
        conn = set(connected) - {self.peer_id}
        self._announced &= conn
        self._joined = {p: self._joined.get(p, now) for p in conn - self._announced}
        ready = {p for p, t in self._joined.items() if now - t >= settle}
        if self.own is None or not ready or now - self._last_announce < settle:
            return []
        self._announced |= ready
        self._joined = {p: t for p, t in self._joined.items() if p not in ready}
        self._last_announce = now
        return [Publish(DEVICES_TOPIC, self._envelope(now, "record", record=self.own.encode()))]

    def start(self, caps: Capabilities, now: float) -> list[Action]:
        """Publish our first record (DHT, region provider record, gossip)."""
        self._last_heartbeat = now
        return self._publish_own(caps, now)

    def update_capabilities(self, caps: Capabilities, now: float) -> list[Action]:
        """A new probe result: republish when it differs materially (battery state, cores...)."""
        if self._caps is None:
            return self.start(caps, now)
        if not caps.differs_materially(self._caps):
            return []
        return self._publish_own(caps, now)

    def update_profile(self, profile: DeviceProfile, now: float) -> list[Action]:
        """Roles offered, region or prices changed: republish."""
        if profile == self.profile:
            return []
        self.profile = profile
        return self._publish_own(self._caps, now) if self._caps is not None else []

    def update_harvest(self, harvest: HarvestInfo | None, now: float) -> list[Action]:
        """The harvest role's state (None: the role stopped). Republish at once when the
        device becomes available or suspended (or the reason changes); when only its free
        cores or memory moved materially (`harvest_differs_materially`), at most once per
        three heartbeat intervals; else the state rides on the next republish."""
        old, self._harvest = self._harvest, harvest
        if self._caps is None or not harvest_differs_materially(old, harvest):
            return []
        flipped = (old is None) != (harvest is None) or (
            old is not None and harvest is not None
            and (old.available, old.reason) != (harvest.available, harvest.reason))
        if not flipped and now - self._last_publish < 3 * self.config.heartbeat_interval:
            self._harvest_pending = True
            return []
        return self._publish_own(self._caps, now)

    def update_onion_cert(self, cert: bytes, now: float) -> list[Action]:
        """The onion role's (new) onion-key certificate: republish when it changed."""
        if cert == self.onion_cert:
            return []
        self.onion_cert = cert
        return self._publish_own(self._caps, now) if self._caps is not None else []

    def dht_put_failed(self, now: float) -> None:
        """Our record's DHT put failed (a young network, no peers yet): put it again after
        two heartbeats, until one succeeds or the next republish."""
        self._dht_retry_at = now + max(1.0, 2 * self.config.heartbeat_interval)

    def goodbye(self, now: float) -> list[Action]:
        """We are going down gracefully: tell the others (they mark us offline at once)."""
        self.liveness.mark_offline(self.peer_id, now)
        return [Publish(DEVICES_TOPIC, self._envelope(now, "bye")),
                Emit(DeviceOffline(self.peer_id, now, "goodbye"))]

    # ---- from the network -----------------------------------------------------------------

    def _liveness_event(self, ch: LivenessChange | None) -> list[Action]:
        if ch is None:
            return []
        if ch.state is Liveness.ONLINE:
            return [Emit(DeviceOnline(ch.peer_id))]
        return [Emit(DeviceOffline(ch.peer_id, ch.last_seen, ch.reason))]

    def _accept_record(self, rec: DeviceRecord) -> list[Action]:
        old = self.view.get(rec.peer_id)
        change = self.view.offer(rec)
        self._fetching.pop(rec.peer_id, None)
        if change is Change.NEW:
            return [Emit(DeviceRegistered(rec.peer_id, rec.profile.region, rec.profile.device_type,
                                          rec.profile.roles, rec.seq, rec.peer_id == self.peer_id))]
        if change is Change.UPDATED and old is not None:
            return [Emit(DeviceCapabilitiesChanged(rec.peer_id, rec.seq, changed_fields(old, rec),
                                                   rec.peer_id == self.peer_id))]
        return []

    def on_device_gossip(self, origin: str, data: bytes, now: float) -> list[Action]:
        """A message on the devices topic, signed by `origin` (its content was checked by
        gossip_check.py before relay; decoded again here, since the core is also fed directly)."""
        self._clock_now = now
        if origin == self.peer_id:
            return []
        try:
            g = decode_device_gossip(data, origin)
        except Rejected as e:
            return [Refused("gossip", e.reason, origin, str(e))]
        try:
            rec = self.validator.check(device_key(origin), g.record) if g.kind == "record" else None
        except Rejected as e:
            return [Refused("record", e.reason, origin, str(e))]
        fresh = self._fresh(origin, g.at)
        sent = self._sent_at(origin, g.at, now)
        if g.kind == "bye":
            return self._liveness_event(self.liveness.mark_offline(origin, now)) if fresh else []
        out = self._liveness_event(self.liveness.seen(origin, now, at=sent)) if fresh else []
        if rec is not None:
            return out + self._accept_record(rec)
        held = self.view.get(origin)
        if held is None or held.seq < g.seq:
            out += self._want_record(origin, now)
        return out

    def _want_record(self, peer: str, now: float) -> list[Action]:
        last = self._fetching.get(peer)
        # fetch the same peer's record again after two heartbeats at the earliest
        if last is not None and now - last < max(1.0, 2 * self.config.heartbeat_interval):
            return []
        self._fetching[peer] = now
        return [FetchRecord(peer)]

    def on_dht_record(self, peer: str, value: bytes | None, now: float) -> list[Action]:
        """The answer to a FetchRecord (None: not found)."""
        self._clock_now = now
        if value is None:
            return []
        try:
            rec = self.validator.check(device_key(peer), value)
        except Rejected as e:
            return [Refused("record", e.reason, peer, str(e))]
        return self._accept_record(rec)

    def on_peer_connected(self, peer: str, now: float) -> list[Action]:
        """A connected peer: fetch its record if we have none (its liveness comes from
        heartbeats and pings, not from the connection)."""
        if peer not in self.view and peer != self.peer_id:
            return self._want_record(peer, now)
        return []

    def on_pong(self, peer: str, now: float) -> list[Action]:
        """`peer` answered a Ping (does not undo its goodbye)."""
        return self._liveness_event(self.liveness.seen(peer, now, direct=False))

    def mark_offline(self, peer: str, now: float) -> list[Action]:
        """Operator's registry.mark_offline (for our own peer id it is a goodbye)."""
        if peer == self.peer_id:
            return self.goodbye(now)
        return self._liveness_event(self.liveness.mark_offline(peer, now))

    def on_observation(self, origin: str, data: bytes, now: float, *,
                       checked: list[Observation] | None = None) -> list[Action]:
        """An observation or batch gossiped by its observer; `checked`: what its check returned."""
        self._clock_now = now
        if origin == self.peer_id:
            return []
        try:
            obs = checked if checked is not None else check_observations(data, origin)
        except Rejected as e:
            return [Refused("observation", e.reason, origin, str(e))]
        return [Refused("observation", e.reason, origin, str(e)) for _, e in self.book.add_all(obs, now)]

    def report_outcomes(self, outcomes: list[Outcome], now: float) -> tuple[list[Action], list[str]]:
        """Our own observations, sent within our rate limit: signed, recorded, gossiped together
        (batches of observation.MAX_BATCH); those over it wait, merged per subject, service and
        outcome, and go at a later `tick` (pending.py). Raises LocalProtocolError for a
        malformed one (about ourselves, bad service, weight or evidence; nothing recorded).
        Returns the actions and why each refused one was (its evidence already counted)."""
        sent, refused = self.own_reports.report(outcomes, now)
        return [Publish(OBSERVATIONS_TOPIC, m) for m in encode_observations(sent)], refused

    def report_outcome(self, subject: str, service: str, ok: bool, weight: float, evidence: bytes,
                       now: float) -> list[Action]:
        """One own observation (`report_outcomes`); LocalProtocolError also when it is refused."""
        actions, refused = self.report_outcomes([Outcome(subject, service, ok, weight, evidence)], now)
        if refused:
            raise LocalProtocolError(f"report_outcome refused: {refused[0]}")
        return actions

    # ---- anti-entropy sync -------------------------------------------------------------------

    def sync_due(self, connected: list[str], now: float, *, at_most: int = 2) -> list[Action]:
        """Pull new records and observations from connected peers not asked for
        SYNC_HEARTBEATS heartbeat intervals (a few per call, newly connected peers first)."""
        due = []
        for peer in connected:
            if peer == self.peer_id:
                continue
            epoch, after, last = self._sync.get(peer, (b"", 0, float("-inf")))
            if now - last >= SYNC_HEARTBEATS * self.config.heartbeat_interval:
                due.append((last, peer, epoch, after))
        due.sort(key=lambda d: (d[0], d[1]))
        out: list[Action] = []
        for last, peer, epoch, after in due[:at_most]:
            self._sync[peer] = (epoch, after, now)
            o_epoch, o_after = self._osync.get(peer, (b"", 0))
            out += [SyncFrom(peer, epoch, after), SyncObservationsFrom(peer, o_epoch, o_after)]
        for table in (self._sync, self._osync):
            while len(table) > self.view.max_devices:
                table.pop(next(iter(table)))
        return out

    def ping_offline(self, connected: list[str], now: float) -> list[Action]:
        """Ping connected peers we think are offline (silent, no goodbye), every two heartbeat
        intervals or half of offline_after, whichever is longer: a restarted peer whose
        heartbeats do not reach us comes back on a pong."""
        out: list[Action] = []
        conn = set(connected)
        every = max(2 * self.config.heartbeat_interval, self.config.offline_after / 2)
        for peer in self.liveness.silent_offline():
            last = self._pinged.get(peer)
            if peer in conn and (last is None or now - last >= every):
                self._pinged[peer] = now
                out.append(Ping(peer))
        return out

    def serve_sync(self, epoch: bytes, after: int, limit: int) -> tuple[bytes, list[bytes], int, bool]:
        """Answer a sync request: (our epoch, record bytes, next cursor, more to come)."""
        if epoch != self.epoch:
            after = 0           # the asker's cursor is from an earlier run of ours
        recs, nxt, more = self.view.changed_since(after, limit)
        return self.epoch, [r.encode() for r in recs], nxt, more

    def on_sync_reply(self, peer: str, epoch: bytes, nxt: int, more: bool, records: list[bytes],
                      now: float) -> list[Action]:
        """Records relayed by `peer` (each signed by its device); asks for the next page."""
        self._clock_now = now
        out: list[Action] = []
        for raw in records:
            try:
                rec = decode_record(raw, peer=peer)
                if rec.peer_id == self.peer_id:
                    continue
                held = self.view.get(rec.peer_id)
                if held is not None and held.seq >= rec.seq:
                    continue
                rec = self.validator.check(device_key(rec.peer_id), raw)
            except Rejected as e:
                out.append(Refused("record", e.reason, peer, str(e)))
                continue
            out += self._accept_record(rec)
        self._sync[peer] = (epoch, nxt, now)
        if more:
            out.append(SyncFrom(peer, epoch, nxt))
        return out

    def serve_observation_sync(self, epoch: bytes, after: int,
                               limit: int) -> tuple[bytes, list[bytes], int, bool]:
        """Answer an observation sync: (our epoch, signed observations, next cursor, more)."""
        if epoch != self.epoch:
            after = 0
        items, nxt, more = self.book.changed_since(after, limit)
        return self.epoch, items, nxt, more

    def on_observation_sync_reply(self, peer: str, epoch: bytes, nxt: int, more: bool,
                                  items: list[bytes], now: float) -> list[Action]:
        """Observations relayed by `peer` (each signed by its observer, rate-limited per
        observer like gossiped ones; ones we hold already are skipped quietly)."""
        self._clock_now = now
        out: list[Action] = []
        for raw in items:
            try:
                o = decode_observation(raw, peer=peer)
                if o.observer == self.peer_id:
                    continue
                self.book.add(o, now, quiet_duplicate=True)
            except Rejected as e:
                if e.reason is not RejectReason.DUPLICATE:
                    out.append(Refused("observation", e.reason, peer, str(e)))
        self._osync[peer] = (epoch, nxt)
        if more:
            out.append(SyncObservationsFrom(peer, epoch, nxt))
        return out

    # ---- time -----------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Heartbeat, republish before expiry, liveness time-outs, expired records, our
        reports that waited for the rate limit."""
        self._clock_now = now
        sent, errors = self.own_reports.send(now) if self.own_reports.waiting else ([], [])
        out: list[Action] = [Publish(OBSERVATIONS_TOPIC, m) for m in encode_observations(sent)]
        out += [Refused("observation", e.reason, self.peer_id, str(e)) for e in errors]
        if self.own is not None and (now - self._last_publish >= self.config.republish_interval or (
                self._harvest_pending and now - self._last_publish >= 3 * self.config.heartbeat_interval)):
            out += self._publish_own(self._caps or self.own.caps, now)
        elif self.own is not None and self._dht_retry_at is not None and now >= self._dht_retry_at:
            self._dht_retry_at = None
            out.append(DhtPut(device_key(self.peer_id), self.own.encode()))
            if self.profile.region:
                out.append(DhtProvide(region_key(self.profile.region)))
        if self.own is not None and now - self._last_heartbeat >= self.config.heartbeat_interval:
            self._last_heartbeat = now
            self.liveness.seen(self.peer_id, now)
            out.append(Publish(DEVICES_TOPIC, self._envelope(now, "hb", seq=self.own.seq)))
        for ch in self.liveness.tick(now):
            if ch.peer_id != self.peer_id:
                out += self._liveness_event(ch)
        for peer in self.liveness.quiet(now, self.config.offline_after / 2):
            last = self._pinged.get(peer)
            if peer != self.peer_id and (last is None or now - last >= self.config.heartbeat_interval):
                self._pinged[peer] = now
                out.append(Ping(peer))
        for peer in self.view.expire(now):
            self.liveness.forget(peer)
        if len(self._pinged) > 1024:
            horizon = now - 4 * max(self.config.heartbeat_interval, self.config.offline_after)
            self._pinged = {p: t for p, t in self._pinged.items() if t >= horizon}
        return out

    # ---- reputation -----------------------------------------------------------------------

    def apply_reputation(self, rc: Recompute) -> list[Action]:
        events, app = self.reputation.apply(rc)
        out: list[Action] = [Emit(e) for e in events]
        out += [SetAppScore(p, s) for p, s in app.items() if p != self.peer_id]
        return out

    # ---- queries --------------------------------------------------------------------------

    def query(self, c: Criteria) -> list[DeviceRecord]:
        return self.view.query(c, is_online=self.liveness.is_online,
                               reputation=self.reputation.score)

    def describe(self, rec: DeviceRecord) -> dict[str, Any]:
        """A record plus liveness and reputation, JSON-friendly."""
        st = self.liveness.state(rec.peer_id)
        return {**rec.to_json(), "online": st is Liveness.ONLINE,
                "last_seen": self.liveness.last_seen(rec.peer_id),
                "reputation": self.reputation.score(rec.peer_id)}
