"""Remote faults: a peer's fault is a rate-limited WARNING, a metric and a penalty, never a
traceback.

DESIGN.md: a decoder that meets bytes it cannot accept raises `RemoteProtocolError`; the peer
that sent them is charged. Before this module, garbage on `/meshsub/1.2.0` logged an ERROR with
a full traceback per stream and charged nobody, so a hostile peer could fill the log (and hide
real bugs in it) at the cost of one stream per line. Here:

- `LogRateLimiter` (sans-IO, time passed in) admits one line per key (peer, protocol) per
  `interval` seconds and counts what it held back; the next admitted line says how many.
  `RemoteFaults` also logs at most `per_protocol` lines per protocol per interval, whatever
  the peers: a gossip flood signed by 2,000 throw-away keys wrote one WARNING per message
  (each a new peer id), thousands of lines in seconds, on the event loop.
- `RemoteFaults` is the one place a remote fault is reported: it logs through the limiter at
  WARNING, increments `fognode_node_remote_protocol_errors_total{protocol}` and calls the
  penalty callback (node/host.py: the decaying penalty that lowers the peer's GossipSub
  application score, node/peerscore.py). A local bug stays an ERROR with its traceback: that
  is decided by the caller (`is_remote_fault` for exceptions out of py-libp2p's own handlers).
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Callable, Hashable

from google.protobuf.message import DecodeError as ProtobufDecodeError
from libp2p.exceptions import ParseError as Libp2pParseError
from libp2p.io.exceptions import IncompleteReadError, MsgioException
from prometheus_client import CollectorRegistry, Counter

from fognode.node.errors import RemoteProtocolError
from fognode.node.metrics import metric

DEFAULT_INTERVAL = 60.0    # seconds between two lines about the same peer and protocol
DEFAULT_MAX_KEYS = 4096    # (peer, protocol) pairs remembered; the oldest are forgotten
DEFAULT_PER_PROTOCOL = 10  # lines per protocol per interval, all peers together

# What py-libp2p 0.8.1's own handlers (pubsub, Kademlia, identify) raise when the bytes a peer
# sent do not parse: the peer's fault. Everything else out of those handlers is our bug.
_LIBP2P_REMOTE_FAULTS: tuple[type[BaseException], ...] = (
    RemoteProtocolError, ProtobufDecodeError, Libp2pParseError, MsgioException,
    IncompleteReadError, UnicodeDecodeError)


def is_remote_fault(exc: BaseException) -> bool:
    """True when `exc`, raised by a py-libp2p protocol handler on an inbound stream, means
    the peer sent bytes that do not parse (protobuf, varint, length prefix, UTF-8)."""
    return isinstance(exc, _LIBP2P_REMOTE_FAULTS)


class LogRateLimiter:
    """One line per key per `interval` seconds (sans-IO).

    `admit(key, now)` returns None when the line is to be held back, else the number of lines
    held back for that key since the last admitted one. At most `max_keys` keys are kept (the
    least recently admitted are forgotten, so a flood of fresh peer ids costs bounded memory;
    a forgotten key's next line is simply admitted).
    """

    def __init__(self, *, interval: float = DEFAULT_INTERVAL,
                 max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if interval < 0 or max_keys < 1:
            raise ValueError("interval must be >= 0 and max_keys >= 1")
        self.interval = interval
        self.max_keys = max_keys
        self._keys: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()  # last, held back

    def admit(self, key: Hashable, now: float) -> int | None:
        found = self._keys.get(key)
        if found is not None and now - found[0] < self.interval:
            self._keys[key] = (found[0], found[1] + 1)
            return None
        held = found[1] if found is not None else 0
        self._keys[key] = (now, 0)
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return held


class Libp2pErrorLimiter(logging.Filter):
    """py-libp2p's protocol handlers log what a peer sent wrong at ERROR, one line per message
    ("Error processing identify/push from <peer>: ...", "Received an invalid-signed-record"),
    and catch it themselves, so we cannot charge the peer. On the loggers of those handlers
    (LIBP2P_PEER_INPUT_LOGGERS) this filter shows such a line as a WARNING, at most once per
    call site per `interval`, with the count of lines held back. Records with a traceback pass
    unchanged (a bug inside py-libp2p)."""

    def __init__(self, *, interval: float = DEFAULT_INTERVAL) -> None:
        super().__init__()
        self.limiter = LogRateLimiter(interval=interval, max_keys=256)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.ERROR or record.exc_info:
            return True
        held = self.limiter.admit((record.name, str(record.msg)), time.monotonic())
        if held is None:
            return False
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        if held:
            record.msg = (f"{record.msg} ({held} similar lines in the last "
                          f"{self.limiter.interval:.0f} s not logged)")
        return True


LIBP2P_PEER_INPUT_LOGGERS = ("libp2p.identity.identify_push.identify_push",
                             "libp2p.identity.identify.identify", "libp2p.identity.update",
                             "libp2p.pubsub.pubsub", "libp2p.pubsub.gossipsub",
                             "libp2p.kad_dht.kad_dht")


def limit_libp2p_errors() -> None:
    """Install one Libp2pErrorLimiter on each of LIBP2P_PEER_INPUT_LOGGERS (idempotent)."""
    for name in LIBP2P_PEER_INPUT_LOGGERS:
        lg = logging.getLogger(name)
        if not any(isinstance(f, Libp2pErrorLimiter) for f in lg.filters):
            lg.addFilter(Libp2pErrorLimiter())


Penalize = Callable[[str], None]


class RemoteFaults:
    """Reports a peer's protocol violations: rate-limited WARNING, metric, penalty.

    `report(peer, protocol, message)` never raises and never logs a traceback. `penalize`
    receives the peer id once per reported fault (also for lines the limiter holds back).
    """

    def __init__(self, registry: CollectorRegistry, penalize: Penalize, *,
                 log: logging.Logger, interval: float = DEFAULT_INTERVAL,
                 per_protocol: int = DEFAULT_PER_PROTOCOL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.penalize = penalize
        self.clock = clock
        self.limiter = LogRateLimiter(interval=interval)
        self.per_protocol = per_protocol
        self._window: dict[str, tuple[float, int, int]] = {}   # protocol -> start, logged, held
        self.counter = metric(registry, Counter, "fognode_node_remote_protocol_errors_total",
                              "Protocol violations by peers (each one lowers the peer's score), "
                              "per protocol or topic", ["protocol"])

    def report(self, peer: str, protocol: str, message: str) -> None:
        prefix = f"peer {peer}: "          # RemoteProtocolError's own prefix: said once
        if message.startswith(prefix):
            message = message[len(prefix):]
        self.counter.labels(protocol or "unknown").inc()
        if peer:
            self.penalize(peer)
        now = self.clock()
        held = self.limiter.admit((peer, protocol), now)
        if held is None:
            return
        start, logged, others = self._window.get(protocol, (now, 0, 0))
        if now - start >= self.limiter.interval:
            start, logged, others = now, 0, others
        if logged >= self.per_protocol:
            self._window[protocol] = (start, logged, others + 1)
            return
        self._window[protocol] = (start, logged + 1, 0)
        more = (f" ({held} more from this peer on {protocol or 'this protocol'} in the last "
                f"{self.limiter.interval:.0f} s not logged)") if held else ""
        if others:
            more += f" ({others} lines about other peers on this protocol not logged)"
        self.log.warning("peer %s broke %s: %s; penalised%s", peer or "(unknown)",
                         protocol or "a protocol", message, more)
