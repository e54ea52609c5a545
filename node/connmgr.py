"""Connection manager: keep the peer count between low/high watermarks, back off failing peers.

`DialBackoff` and `ConnectionPolicy` are sans-IO (time is an argument, no trio, no libp2p):
- a peer (or an address without a peer id) that failed `failures_before_backoff` dials in a row
  is not dialled again for `backoff` seconds; every further failure doubles the wait, capped at
  `backoff_max`. One success clears it (circuit breaker closes), and so does a connection the
  peer opens to us (node/host.py: it proves the peer reachable).
- a connected peer that stopped answering pings is trimmed and *held*: the same wait, once per
  episode (`hold`), doubling per further hold.
- while the breaker is open, background dials (the connection manager's: `allowed`) wait it
  out, but a dial on demand (a role needs that peer: `check(probe=True)`, node/dialer.py) goes
  through once per `probe_interval` (5 s): after a network split heals, neither side's holds
  keep a node from the validators it needs for more than a few seconds (session 32: a 30 s
  hold, doubled on every 0.5 s tick while the dead connection closed, kept a cut-off node from
  a validator for 44 s after the heal).
- `plan()` returns `Dial` actions when below the low watermark (best-scored candidates first,
  only those the breaker allows) and `Trim` actions when above the high watermark (lowest
  score first, never a peer connected less than `grace` seconds ago, never a protected one).

`ConnectionManager` is the thin trio adapter: it ticks the policy every `interval` seconds,
asks the DHT for more candidates when there are not enough, and runs the dials concurrently,
each under the dial timeout.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Mapping

import trio

from fognode.node.errors import FognodeError

log = logging.getLogger("fognode.connmgr")


class DialError(FognodeError):
    """A dial failed: the address did not answer, refused, timed out or failed the handshake."""


class DialBackoffError(DialError):
    """The peer failed too many dials in a row; the circuit breaker refuses until `retry_at`."""

    def __init__(self, target: str, failures: int, retry_in: float) -> None:
        self.target = target
        self.failures = failures
        self.retry_in = retry_in
        super().__init__(f"{target}: {failures} failed dials in a row; backing off, next dial "
                         f"allowed in {retry_in:.1f} s")


@dataclass
class _Breaker:
    failures: int = 0
    until: float = 0.0
    holds: int = 0               # holds since the breaker was made (not cleared by a dial)
    last_hold: float = 0.0
    probed_at: float = float("-inf")


@dataclass
class DialBackoff:
    """Per-target circuit breaker (target = peer id, or the address when no id is known).

    `allowed` is the connection manager's question (may a background dial go to the target
    now?); `check(probe=True)` is the one a dial on demand asks (a role needs the peer: a
    validator for an order, a stream): while the breaker is open, one such dial per
    `probe_interval` seconds goes through (the breaker is half-open for it; the first one
    `probe_interval` after it opened), so a peer back after a network split is reached within
    seconds by whoever needs it instead of after the rest of its back-off, and a dead or
    hostile one is still dialled at most once per `probe_interval` (go-libp2p's base dial
    back-off is 5 s), and only on demand."""

    failures_before_backoff: int = 5
    backoff: float = 30.0
    backoff_max: float = 600.0
    probe_interval: float = 5.0
    _state: dict[str, _Breaker] = field(default_factory=dict)

    def allowed(self, target: str, now: float) -> bool:
        b = self._state.get(target)
        return b is None or now >= b.until

    def check(self, target: str, now: float, *, probe: bool = False) -> None:
        """Raise DialBackoffError when `target` may not be dialled at `now`. `probe`: a dial
        on demand, let through once per `probe_interval` while the breaker is open (counted:
        the next one waits the interval again, whatever its outcome)."""
        b = self._state.get(target)
        if b is None or now >= b.until:
            return
        if probe and now - b.probed_at >= self.probe_interval:
            b.probed_at = now
            return
        raise DialBackoffError(target, b.failures, b.until - now)

    def remaining(self, target: str, now: float) -> float:
        """Seconds until a background dial of `target` is allowed (0 if it is now)."""
        b = self._state.get(target)
        return 0.0 if b is None else max(0.0, b.until - now)

    def failures(self, target: str) -> int:
        b = self._state.get(target)
        return 0 if b is None else b.failures

    def record_failure(self, target: str, now: float) -> None:
        b = self._state.setdefault(target, _Breaker())
        b.failures += 1
        extra = b.failures - self.failures_before_backoff
        if extra >= 0:
            if now >= b.until:      # the breaker opens: the first probe after the interval
                b.probed_at = now
            delay = min(self.backoff * (2.0 ** min(extra, 32)), self.backoff_max)
            b.until = max(b.until, now + delay)

    def hold(self, target: str, now: float) -> bool:
        """Keep `target` from background dials for the backoff period (its connection is being
        closed because it stopped answering). Returns False, changing nothing, while a hold or
        back-off of the target runs already: one unresponsive episode is one hold, however
        often its trim is asked for while the connection closes (until session 32 every
        connection-manager tick doubled it, to `backoff_max` within seconds). Each new hold
        doubles the last one up to `backoff_max`, also across a successful dial in between (a
        peer that accepts connections and never answers is not re-dialled in a tight loop);
        a dial that succeeds ends the hold, and so does a connection the peer opens to us."""
        b = self._state.setdefault(target, _Breaker())
        if now < b.until:
            return False
        b.holds += 1
        b.last_hold = b.probed_at = now
        b.failures = max(b.failures + 1, self.failures_before_backoff)
        extra = max(b.failures - self.failures_before_backoff, b.holds - 1)
        b.until = now + min(self.backoff * (2.0 ** min(extra, 32)), self.backoff_max)
        return True

    def record_success(self, target: str) -> None:
        b = self._state.get(target)
        if b is None:
            return
        if not b.holds:
            del self._state[target]
            return
        b.failures, b.until, b.probed_at = 0, 0.0, float("-inf")

    def forget_older_than(self, now: float, age: float) -> None:
        """Drop breakers whose wait, or last hold, ended more than `age` seconds ago (bounds
        memory; a peer not held for `age` starts again from the first hold)."""
        for t in [t for t, b in self._state.items()
                  if (b.until or b.holds) and now - max(b.until, b.last_hold) > age]:
            del self._state[t]


@dataclass(frozen=True)
class Dial:
    peer_id: str


@dataclass(frozen=True)
class Trim:
    peer_id: str


@dataclass(frozen=True)
class Discover:
    """Not enough dialable candidates: ask the DHT for more."""


ConnAction = Dial | Trim | Discover


@dataclass
class ConnectionPolicy:
    low: int
    high: int
    grace: float = 10.0   # seconds a new connection is safe from trimming

    def plan(self, now: float, *, connected: Mapping[str, float], candidates: Iterable[str],
             scores: Mapping[str, float], backoff: DialBackoff,
             protected: frozenset[str] = frozenset(), in_flight: int = 0,
             unresponsive: Iterable[str] = ()) -> list[ConnAction]:
        """`connected` maps peer id -> connected-since time. Returns the actions to carry out.

        A connected peer that stopped answering pings (`unresponsive`, node/latency.py) is
        trimmed whatever the counts, protected peers included: its connection is dead weight
        (a partition or a silent hang keeps TCP "established" for minutes while gossip and
        streams to it stall), and closing it lets the low watermark dial it, or another, afresh
        once it answers again (through the dial backoff)."""
        actions: list[ConnAction] = []
        dead = [p for p in dict.fromkeys(unresponsive) if p in connected]
        actions.extend(Trim(p) for p in dead)
        if dead:
            connected = {p: t for p, t in connected.items() if p not in set(dead)}
        n = len(connected) + in_flight
        if n < self.low:
            want = self.low - n
            pool = [p for p in dict.fromkeys(candidates)
                    if p not in connected and backoff.allowed(p, now)]
            pool.sort(key=lambda p: -scores.get(p, 0.0))
            actions.extend(Dial(p) for p in pool[:want])
            if len(pool) < want:
                actions.append(Discover())
        elif len(connected) > self.high:
            excess = len(connected) - self.high
            trimmable = [p for p, since in connected.items()
                         if p not in protected and now - since >= self.grace]
            trimmable.sort(key=lambda p: (scores.get(p, 0.0), connected[p]))
            actions.extend(Trim(p) for p in trimmable[:excess])
        return actions


DialFn = Callable[[str], Awaitable[None]]          # dial a known peer id (raises on failure)
TrimFn = Callable[[str], Awaitable[None]]
DiscoverFn = Callable[[], Awaitable[None]]


class ConnectionManager:
    """Trio adapter around ConnectionPolicy. The host supplies how to list, dial, trim, discover."""

    def __init__(self, policy: ConnectionPolicy, backoff: DialBackoff, *,
                 connected: Callable[[], Mapping[str, float]],
                 candidates: Callable[[], Iterable[str]],
                 scores: Callable[[], Mapping[str, float]],
                 protected: Callable[[], frozenset[str]],
                 dial: DialFn, trim: TrimFn, discover: DiscoverFn,
                 interval: float = 5.0, clock: Callable[[], float] = trio.current_time,
                 unresponsive: Callable[[], Iterable[str]] = lambda: ()) -> None:
        self.policy = policy
        self.backoff = backoff
        self._connected = connected
        self._candidates = candidates
        self._scores = scores
        self._protected = protected
        self._dial = dial
        self._trim = trim
        self._discover = discover
        self._unresponsive = unresponsive
        self.interval = interval
        self._clock = clock
        self._in_flight: set[str] = set()
        self._trimming: set[str] = set()
        self._wake = trio.Event()
        self._discovering = False
        self._last_discover = -1e9

    def wake(self) -> None:
        """Run a tick now (e.g. after a disconnect) instead of at the next interval."""
        self._wake.set()

    async def run(self) -> None:
        """Tick forever; cancel to stop. Never raises on a failed dial or discovery."""
        async with trio.open_nursery() as nursery:
            while True:
                self.tick(nursery)
                with trio.move_on_after(self.interval):
                    await self._wake.wait()
                self._wake = trio.Event()

    def tick(self, nursery: trio.Nursery) -> None:
        now = self._clock()
        self.backoff.forget_older_than(now, 3600.0)
        unresponsive = set(self._unresponsive())
        actions = self.policy.plan(now, connected=self._connected(),
                                   candidates=self._candidates(), scores=self._scores(),
                                   backoff=self.backoff, protected=self._protected(),
                                   in_flight=len(self._in_flight), unresponsive=unresponsive)
        for a in actions:
            if isinstance(a, Dial) and a.peer_id not in self._in_flight:
                self._in_flight.add(a.peer_id)
                nursery.start_soon(self._dial_one, a.peer_id)
            elif isinstance(a, Trim) and a.peer_id not in self._trimming:
                # a connection to a peer that stopped answering may take long to close (its
                # muxer's goodbye waits on the dead link): one trim at a time per peer
                self._trimming.add(a.peer_id)
                why = f"over the high watermark of {self.policy.high} peers"
                if a.peer_id in unresponsive:
                    # a peer that keeps accepting connections but never answers is re-dialled
                    # in the background only after the hold, not every few seconds
                    self.backoff.hold(a.peer_id, now)
                    b = self.backoff
                    why = (f"it stopped answering pings; no background dial to it for "
                           f"{b.remaining(a.peer_id, now):.0f} s, a dial on demand at most "
                           f"every {b.probe_interval:g} s")
                nursery.start_soon(self._trim_one, a.peer_id, why)
            elif (isinstance(a, Discover) and not self._discovering
                  and now - self._last_discover >= self.interval):
                self._discovering = True
                self._last_discover = now
                nursery.start_soon(self._discover_once)

    async def _dial_one(self, peer_id: str) -> None:
        try:
            await self._dial(peer_id)     # the host's dial records success/failure in backoff
        except DialError as e:
            log.debug("connmgr: dial %s failed: %s", peer_id, e)
        finally:
            self._in_flight.discard(peer_id)

    async def _trim_one(self, peer_id: str, why: str) -> None:
        log.info("connmgr: trimming %s (%s)", peer_id, why)
        try:
            await self._trim(peer_id)
        finally:
            self._trimming.discard(peer_id)

    async def _discover_once(self) -> None:
        try:
            await self._discover()
        except Exception as e:  # a DHT lookup failing only means no new candidates this round
            log.debug("connmgr: DHT discovery failed: %s: %s", type(e).__name__, e)
        finally:
            self._discovering = False
        self.wake()
